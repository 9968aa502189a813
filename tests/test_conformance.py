"""Conformance with the original AutoSNN code (github nabk89/AutoSNN, commit 53b4818).

Our network and the original's, holding the same weights and fed the same batch, must produce the
same numbers in eval and in training: spikes per layer and class counts exactly, the rate loss,
gradient norms per parameter group and BN running statistics up to float32 rounding. Each case runs
  1. a training pass: forward, rate loss, backward       -> spikes, class counts, loss, grads, BN stats
  2. one Adam step (lr 1e-3), then the same training pass again   -> the same fields
  3. an eval pass (BN on the running statistics the two training passes left) -> spikes, class counts
Weights are drawn from a seeded generator (`build`), not from torch's default init, so any copy of
this file rebuilds them without the original.

Cases (CASES): an AutoSNN_16 child; a path of our super-network (every candidate built, arch=... at
forward), with a 1x1-conv skip_connect; an SNN_3 child, whose stride-2 positions are searched blocks
(factorized-reduce skips, SRB 1x1 shortcuts); a child on the 2x128x128 DVS stem (per-step stem BN).
T = 8, batch 8, CIFAR-shaped or DVS-shaped seeded input.

The GOLDEN numbers below came from the original code, never from this project's network. From the
project root (with the original's files in ../shared/peer/original):

    pip install --no-deps --target ~/.cache/autosnn-peer-site spikingjelly==0.0.0.0.2
    PYTHONPATH=~/.cache/autosnn-peer-site python3 tools/golden_original.py --original ../shared/peer/original

(spikingjelly 0.0.0.0.2, the original's neuron API; torch 2.13.0+cpu, 2 threads; at 1 thread the
original gives the same spikes, class counts and losses, gradient norms within 1.2e-6 and BN sums
within 1.5e-7 relative). That tool copies the weights built here into the original's network by name, runs the
original's forward, one time step at a time as it is written, and prints GOLDEN. The original is
never imported by these tests: only its numbers are stored here.

Tolerances, from the gaps measured between our network and these numbers (torch 2.13 CPU, at 1 and
at 2 threads): spikes and class counts equal; losses equal (up to the 9 printed digits); gradient
norms within 8.7e-6 relative (the backward sums conv gradients over T*B images at once here, over B
per step there); BN sums within 4.9e-7 absolute, 3.3e-6 relative on sums near 0. Bounds: loss rel
1e-6; gradient norms rel 1e-4; BN sums rel 1e-6 or abs 1e-6, whichever is larger. A flipped spike
moves them by far more: with the old channels_last convolutions 172 (2 threads) to 196 (1 thread)
of the 276 compared fields failed.
"""
import math

import pytest
import torch

from autosnn import SpikingNetwork, rate_loss
from layers import TimeBatchNorm


T, BATCH, SEED, LR, GAIN = 8, 8, 17, 1e-3, 6.0

# name -> how to build it. `supernet`: our super-network run on `arch` (arch=... at forward).
CASES = {
    "child_autosnn16": dict(backbone="AutoSNN_16", arch="SRB_k5-SRB_k5-skip_connect-SRB_k3-SRB_k5"),
    "supernet_path": dict(backbone="AutoSNN_16", arch="SCB_k3-skip_connect-skip_connect-SCB_k5-SRB_k3",
                          supernet=True),
    "child_snn3": dict(backbone="SNN_3",
                       arch="SRB_k3-skip_connect-SCB_k3-SRB_k5-SRB_k3-skip_connect-SCB_k5-skip_connect"),
    "child_dvs128": dict(backbone="AutoSNN_16", arch="SCB_k3-SRB_k3-skip_connect-SRB_k5-SCB_k5",
                         input_shape=(2, 128, 128)),
}


def build(case: str):
    """Our network of `case`, weights and batch from one seeded generator: (net, x, labels).
    Conv/linear weights ~ U(-a, a), a = GAIN / sqrt(fan_in): at torch's default scale (GAIN 1) the
    classifier never fires and eval goes silent after the first block, which would leave the class
    counts and the eval pass untested. BN (1, 0) and PLIF w = 0 as initialised.
    x: [B, 3, 32, 32] normal, or [B, T, 2, 128, 128] event counts in {0, 1, 2}; labels: [B]."""
    spec = CASES[case]
    shape = spec.get("input_shape", (3, 32, 32))
    net = SpikingNetwork(spec["backbone"], 10, arch=None if spec.get("supernet") else spec["arch"],
                         T=T, input_shape=shape)
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for _, p in net.named_parameters():
            if p.dim() > 1:
                bound = GAIN / math.sqrt(p[0].numel())
                p.copy_(torch.rand(p.shape, generator=g) * 2 * bound - bound)
    if shape[0] == 2:
        x = torch.randint(0, 3, (BATCH, T, *shape), generator=g).float()
    else:
        x = torch.randn(BATCH, *shape, generator=g)
    return net, x, torch.randint(0, 10, (BATCH,), generator=g)


def group(name: str) -> str:
    """Parameter group of one of OUR parameter names: position and kind,
    'layers.2:conv', 'stem:bn', 'fc_neuron:plif' (conv/linear weights, BN affine, PLIF w)."""
    parts = name.split(".")
    where = ".".join(parts[:2]) if parts[0] == "layers" else parts[0]
    kind = "plif" if parts[-1] == "w" else "bn" if "bn" in parts else "conv"
    return f"{where}:{kind}"


def run_passes(net, forward, params: dict, bns: dict, x, labels, reset=lambda: None) -> dict:
    """The three passes of the module docstring, for any network `net` (an nn.Module) given as
    forward(x) -> (out [B, K] class rates summed over T, {layer: spikes over the batch and T}),
    params: {our name: parameter}, bns: {our name: BatchNorm2d}; reset() after each pass.
    Returns plain numbers: {'train': {...}, 'train_after_step': {...}, 'eval': {...}}."""
    def pass_(train: bool) -> dict:
        out, spikes = forward(x)
        fired = out.detach() * 10            # [B, K] firing neurons of each class's 10, summed over T
        assert torch.allclose(fired, fired.round(), atol=1e-4)
        row = {"spikes": {k: int(v) for k, v in spikes.items()}, "class_counts": fired.round().int().tolist()}
        if train:
            loss = rate_loss(out, labels, T)
            loss.backward()
            norms = {}
            for n, p in params.items():
                if p.grad is not None:
                    norms[group(n)] = norms.get(group(n), 0.0) + p.grad.double().pow(2).sum().item()
            row["loss"] = loss.item()
            row["grad_norms"] = {k: math.sqrt(v) for k, v in norms.items()}
            row["bn"] = {n: [m.running_mean.double().sum().item(), m.running_var.double().sum().item(),
                             int(m.num_batches_tracked)] for n, m in bns.items()}
        reset()
        return row

    net.train()
    opt = torch.optim.Adam(params.values(), lr=LR)
    result = {"train": pass_(True)}
    opt.step()
    opt.zero_grad()
    result["train_after_step"] = pass_(True)
    net.eval()
    with torch.no_grad():
        result["eval"] = pass_(False)
    return result


def measure_ours(case: str) -> dict:
    """run_passes on our network of `case` (its path's parameters and BN layers only)."""
    net, x, labels = build(case)
    spec = CASES[case]
    arch = spec["arch"] if spec.get("supernet") else None
    keep = net.path_state_dict(spec["arch"])

    def forward(x):
        out, stats = net(x, arch=arch)
        return out, dict(zip(stats.names, stats.counts.tolist()))

    params = {n: p for n, p in net.named_parameters() if n in keep}
    bns = {n: m for n, m in net.named_modules() if isinstance(m, TimeBatchNorm) and f"{n}.running_mean" in keep}
    return run_passes(net, forward, params, bns, x, labels)


TOLERANCE = {"loss": dict(rel=1e-6), "grad_norms": dict(rel=1e-4), "bn": dict(rel=1e-6, abs=1e-6)}


def differences(ours: dict, golden: dict) -> list:
    """Every field where `ours` is off `golden` beyond TOLERANCE (exact for spikes and class counts):
    ['train.spikes: layers.0.SRB_k5.n1 ...', ...]; empty when they conform."""
    bad = []
    for p, want in golden.items():
        got = ours[p]
        for field in ("spikes", "class_counts"):
            if got[field] != want[field]:
                keys = [k for k in want[field] if got[field].get(k) != want[field][k]] \
                    if field == "spikes" else [i for i, (a, b) in enumerate(zip(got[field], want[field])) if a != b]
                bad.append(f"{p}.{field}: {keys if keys else 'different layers'}")
        if "loss" in want and got["loss"] != pytest.approx(want["loss"], **TOLERANCE["loss"]):
            bad.append(f"{p}.loss: {got['loss']!r} vs {want['loss']!r}")
        for field in ("grad_norms", "bn"):
            if field not in want:
                continue
            if set(got[field]) != set(want[field]):
                bad.append(f"{p}.{field}: different keys")
                continue
            for k, w in want[field].items():
                if got[field][k] != pytest.approx(w, **TOLERANCE[field]):
                    bad.append(f"{p}.{field}.{k}: {got[field][k]!r} vs {w!r}")
    return bad


# Printed by tools/golden_original.py (see the module docstring); torch 2.13.0+cpu, 2 threads.
GOLDEN = {
    'child_autosnn16': {
        'train': {
            'spikes': {
                'stem.n1': 74607, 'layers.0.SRB_k5.n1': 52009, 'layers.0.SRB_k5.n2': 53678, 'layers.1': 48156,
                'layers.2.SRB_k5.n1': 19336, 'layers.2.SRB_k5.n2': 41793, 'layers.4': 35253,
                'layers.5.SRB_k3.n1': 9949, 'layers.5.SRB_k3.n2': 20898, 'layers.6.SRB_k5.n1': 9020,
                'layers.6.SRB_k5.n2': 12085, 'layers.7': 10825, 'fc_neuron': 602,
            },
            'class_counts': [
                [18, 11, 6, 10, 12, 5, 2, 12, 10, 2], [10, 6, 2, 6, 10, 5, 5, 5, 4, 3],
                [7, 7, 8, 8, 11, 5, 8, 12, 3, 2], [15, 9, 8, 5, 8, 6, 5, 6, 8, 7], [13, 8, 6, 10, 10, 6, 3, 10, 4, 2],
                [5, 8, 9, 8, 13, 7, 4, 10, 3, 4], [14, 6, 6, 8, 12, 3, 3, 11, 3, 2],
                [16, 6, 14, 12, 11, 9, 6, 11, 6, 8],
            ],
            'loss': 0.0949726552,
            'grad_norms': {
                'stem:conv': 0.00213229267, 'stem:bn': 0.00155180519, 'stem:plif': 0.000146061371,
                'layers.0:conv': 0.00865112135, 'layers.0:bn': 0.00235172367, 'layers.0:plif': 0.000892103341,
                'layers.2:conv': 0.0104632226, 'layers.2:bn': 0.0027702497, 'layers.2:plif': 0.000453686297,
                'layers.5:conv': 0.0115526652, 'layers.5:bn': 0.00373286006, 'layers.5:plif': 0.000784177727,
                'layers.6:conv': 0.0267109704, 'layers.6:bn': 0.00543138489, 'layers.6:plif': 0.00280819456,
                'fc:conv': 0.0313037578, 'fc_neuron:plif': 0.00157701969,
            },
            'bn': {
                'stem.bn': [0.0183239605, 33.1248468, 1], 'layers.0.SRB_k5.cb1.bn': [-0.677341593, 13.8637264, 8],
                'layers.0.SRB_k5.cb2.bn': [0.211043242, 12.0189365, 8],
                'layers.2.SRB_k5.cb1.bn': [-0.948594036, 44.8459039, 8],
                'layers.2.SRB_k5.cb2.bn': [0.469545979, 20.9765463, 8],
                'layers.2.SRB_k5.shortcut.bn': [0.497879498, 46.5020418, 8],
                'layers.5.SRB_k3.cb1.bn': [1.89086484, 106.76488, 8],
                'layers.5.SRB_k3.cb2.bn': [0.341818943, 42.0273352, 8],
                'layers.5.SRB_k3.shortcut.bn': [-10.4177008, 116.920058, 8],
                'layers.6.SRB_k5.cb1.bn': [0.594429119, 52.4400543, 8],
                'layers.6.SRB_k5.cb2.bn': [0.581366047, 39.578045, 8],
            },
        },
        'train_after_step': {
            'spikes': {
                'stem.n1': 74638, 'layers.0.SRB_k5.n1': 51857, 'layers.0.SRB_k5.n2': 53600, 'layers.1': 48125,
                'layers.2.SRB_k5.n1': 19330, 'layers.2.SRB_k5.n2': 41904, 'layers.4': 35214,
                'layers.5.SRB_k3.n1': 10083, 'layers.5.SRB_k3.n2': 20957, 'layers.6.SRB_k5.n1': 8913,
                'layers.6.SRB_k5.n2': 12128, 'layers.7': 10890, 'fc_neuron': 569,
            },
            'class_counts': [
                [9, 5, 8, 14, 12, 7, 5, 6, 3, 7], [4, 8, 3, 7, 5, 8, 3, 8, 3, 7], [7, 11, 4, 15, 12, 2, 5, 14, 5, 15],
                [9, 8, 4, 11, 10, 6, 5, 6, 7, 9], [9, 11, 2, 11, 13, 9, 7, 7, 6, 5], [7, 8, 6, 5, 11, 7, 6, 4, 4, 0],
                [4, 12, 4, 9, 8, 3, 5, 5, 2, 5], [10, 9, 5, 5, 14, 6, 8, 12, 4, 4],
            ],
            'loss': 0.0943261757,
            'grad_norms': {
                'stem:conv': 0.00222732061, 'stem:bn': 0.00161676075, 'stem:plif': 0.000483089301,
                'layers.0:conv': 0.00902811087, 'layers.0:bn': 0.00271227682, 'layers.0:plif': 0.00123682093,
                'layers.2:conv': 0.0113548933, 'layers.2:bn': 0.00331279989, 'layers.2:plif': 0.000321895046,
                'layers.5:conv': 0.0122558756, 'layers.5:bn': 0.00365031851, 'layers.5:plif': 0.000865033454,
                'layers.6:conv': 0.0281069373, 'layers.6:bn': 0.00529053532, 'layers.6:plif': 0.000286169776,
                'fc:conv': 0.030483568, 'fc_neuron:plif': 5.05835487e-05,
            },
            'bn': {
                'stem.bn': [0.0347944578, 48.5361643, 2], 'layers.0.SRB_k5.cb1.bn': [-0.965028642, 12.9455277, 16],
                'layers.0.SRB_k5.cb2.bn': [0.301934925, 10.2891832, 16],
                'layers.2.SRB_k5.cb1.bn': [-1.21575511, 50.3298879, 16],
                'layers.2.SRB_k5.cb2.bn': [0.666098797, 16.2359292, 16],
                'layers.2.SRB_k5.shortcut.bn': [0.678437512, 52.8139887, 16],
                'layers.5.SRB_k3.cb1.bn': [2.64040767, 124.702457, 16],
                'layers.5.SRB_k3.cb2.bn': [0.496192442, 32.8177853, 16],
                'layers.5.SRB_k3.shortcut.bn': [-14.9509814, 139.834519, 16],
                'layers.6.SRB_k5.cb1.bn': [0.743107167, 47.6710556, 16],
                'layers.6.SRB_k5.cb2.bn': [0.790108338, 28.9705383, 16],
            },
        },
        'eval': {
            'spikes': {
                'stem.n1': 224192, 'layers.0.SRB_k5.n1': 129220, 'layers.0.SRB_k5.n2': 165703, 'layers.1': 121715,
                'layers.2.SRB_k5.n1': 51295, 'layers.2.SRB_k5.n2': 95525, 'layers.4': 58036,
                'layers.5.SRB_k3.n1': 21886, 'layers.5.SRB_k3.n2': 32145, 'layers.6.SRB_k5.n1': 19522,
                'layers.6.SRB_k5.n2': 21394, 'layers.7': 16321, 'fc_neuron': 805,
            },
            'class_counts': [
                [14, 7, 12, 21, 16, 8, 6, 12, 7, 4], [14, 12, 11, 17, 9, 6, 7, 10, 7, 7],
                [13, 11, 11, 23, 12, 4, 8, 11, 5, 3], [11, 7, 12, 17, 12, 6, 7, 10, 3, 6],
                [7, 5, 11, 13, 15, 8, 8, 16, 4, 7], [12, 9, 12, 23, 12, 8, 8, 20, 4, 6],
                [11, 14, 14, 14, 10, 6, 7, 16, 5, 5], [12, 8, 9, 20, 14, 3, 9, 11, 4, 6],
            ],
        },
    },
    'supernet_path': {
        'train': {
            'spikes': {
                'stem.n1': 74923, 'layers.0.SCB_k3.n1': 52881, 'layers.0.SCB_k3.n2': 40482, 'layers.1': 36406,
                'layers.2.skip_connect.n1': 17852, 'layers.4': 16342, 'layers.5.SCB_k5.n1': 9347,
                'layers.5.SCB_k5.n2': 8690, 'layers.6.SRB_k3.n1': 8503, 'layers.6.SRB_k3.n2': 9988, 'layers.7': 8957,
                'fc_neuron': 377,
            },
            'class_counts': [
                [6, 3, 6, 8, 9, 5, 3, 4, 5, 4], [2, 2, 5, 1, 3, 2, 2, 2, 1, 3], [4, 1, 10, 2, 4, 1, 3, 4, 2, 2],
                [4, 3, 7, 2, 3, 3, 3, 4, 5, 5], [6, 7, 11, 4, 12, 11, 4, 7, 8, 4], [5, 3, 10, 5, 3, 4, 3, 0, 4, 3],
                [9, 1, 12, 8, 4, 4, 6, 12, 3, 9], [3, 4, 10, 3, 5, 3, 6, 3, 2, 8],
            ],
            'loss': 0.0954042897,
            'grad_norms': {
                'stem:conv': 0.00152295267, 'stem:bn': 0.00140582658, 'stem:plif': 8.79486688e-05,
                'layers.0:conv': 0.00396281314, 'layers.0:bn': 0.00196577072, 'layers.0:plif': 0.000206846013,
                'layers.2:conv': 0.00127611795, 'layers.2:bn': 0.00174332968, 'layers.2:plif': 0.000373314193,
                'layers.5:conv': 0.0212849309, 'layers.5:bn': 0.00388765615, 'layers.5:plif': 0.00031824051,
                'layers.6:conv': 0.0134368421, 'layers.6:bn': 0.00522336806, 'layers.6:plif': 0.00133529331,
                'fc:conv': 0.0322352944, 'fc_neuron:plif': 0.00172142161,
            },
            'bn': {
                'stem.bn': [0.0209614048, 33.7632815, 1], 'layers.0.SCB_k3.cb1.bn': [0.230855421, 14.3314105, 8],
                'layers.0.SCB_k3.cb2.bn': [-0.183371863, 12.2075122, 8],
                'layers.2.skip_connect.bn': [-1.59244336, 42.1214697, 8],
                'layers.5.SCB_k5.cb1.bn': [-0.0455791363, 63.8744555, 8],
                'layers.5.SCB_k5.cb2.bn': [0.550501777, 39.9968483, 8],
                'layers.6.SRB_k3.cb1.bn': [-0.0181184103, 40.5282458, 8],
                'layers.6.SRB_k3.cb2.bn': [-0.68729067, 40.4137454, 8],
            },
        },
        'train_after_step': {
            'spikes': {
                'stem.n1': 74889, 'layers.0.SCB_k3.n1': 52962, 'layers.0.SCB_k3.n2': 40572, 'layers.1': 36478,
                'layers.2.skip_connect.n1': 17984, 'layers.4': 16468, 'layers.5.SCB_k5.n1': 9314,
                'layers.5.SCB_k5.n2': 8772, 'layers.6.SRB_k3.n1': 8484, 'layers.6.SRB_k3.n2': 9903, 'layers.7': 8849,
                'fc_neuron': 345,
            },
            'class_counts': [
                [9, 6, 9, 5, 5, 5, 3, 6, 3, 3], [4, 2, 4, 7, 4, 4, 1, 6, 4, 3], [2, 3, 3, 5, 5, 2, 2, 3, 4, 1],
                [4, 0, 3, 4, 4, 2, 0, 4, 5, 5], [9, 4, 7, 8, 10, 9, 5, 4, 10, 3], [4, 0, 5, 3, 4, 3, 1, 3, 4, 1],
                [7, 5, 5, 7, 5, 5, 3, 3, 11, 6], [3, 2, 5, 6, 3, 5, 4, 3, 3, 3],
            ],
            'loss': 0.090927735,
            'grad_norms': {
                'stem:conv': 0.00173104178, 'stem:bn': 0.00145428838, 'stem:plif': 0.000110421694,
                'layers.0:conv': 0.00430857954, 'layers.0:bn': 0.00162684707, 'layers.0:plif': 0.000526737116,
                'layers.2:conv': 0.00138503054, 'layers.2:bn': 0.00187654173, 'layers.2:plif': 7.3142648e-05,
                'layers.5:conv': 0.0227576448, 'layers.5:bn': 0.00404573376, 'layers.5:plif': 0.00178561832,
                'layers.6:conv': 0.0146576, 'layers.6:bn': 0.00541794639, 'layers.6:plif': 0.00318322983,
                'fc:conv': 0.0346095834, 'fc_neuron:plif': 0.00466016866,
            },
            'bn': {
                'stem.bn': [0.0397762358, 49.7498429, 2], 'layers.0.SCB_k3.cb1.bn': [0.328869268, 13.6105589, 16],
                'layers.0.SCB_k3.cb2.bn': [-0.252722057, 10.5871584, 16],
                'layers.2.skip_connect.bn': [-2.27810085, 46.6183598, 16],
                'layers.5.SCB_k5.cb1.bn': [-0.0743191116, 63.7485532, 16],
                'layers.5.SCB_k5.cb2.bn': [0.771530414, 29.5080655, 16],
                'layers.6.SRB_k3.cb1.bn': [-0.00855389703, 30.6528778, 16],
                'layers.6.SRB_k3.cb2.bn': [-0.947034237, 30.2863073, 16],
            },
        },
        'eval': {
            'spikes': {
                'stem.n1': 224166, 'layers.0.SCB_k3.n1': 168445, 'layers.0.SCB_k3.n2': 141958, 'layers.1': 100718,
                'layers.2.skip_connect.n1': 55688, 'layers.4': 34211, 'layers.5.SCB_k5.n1': 23747,
                'layers.5.SCB_k5.n2': 21662, 'layers.6.SRB_k3.n1': 18794, 'layers.6.SRB_k3.n2': 20245,
                'layers.7': 15623, 'fc_neuron': 708,
            },
            'class_counts': [
                [7, 6, 15, 15, 9, 7, 8, 9, 15, 3], [4, 6, 18, 14, 8, 4, 5, 7, 14, 8],
                [6, 1, 11, 15, 8, 4, 8, 6, 13, 3], [5, 2, 14, 15, 12, 6, 12, 9, 16, 5],
                [4, 5, 10, 15, 7, 6, 13, 5, 11, 4], [7, 8, 14, 15, 12, 5, 8, 6, 19, 5],
                [6, 2, 14, 17, 5, 5, 9, 5, 22, 5], [4, 7, 17, 14, 8, 8, 9, 7, 8, 4],
            ],
        },
    },
    'child_snn3': {
        'train': {
            'spikes': {
                'stem.n1': 74962, 'layers.0.SRB_k3.n1': 52522, 'layers.0.SRB_k3.n2': 53551,
                'layers.1.skip_connect.n1': 17840, 'layers.2.SCB_k3.n1': 18184, 'layers.2.SCB_k3.n2': 17227,
                'layers.3.SRB_k5.n1': 18110, 'layers.3.SRB_k5.n2': 20678, 'layers.4.SRB_k3.n1': 9094,
                'layers.4.SRB_k3.n2': 17837, 'layers.6.SCB_k5.n1': 9513, 'layers.6.SCB_k5.n2': 9290,
                'layers.7.skip_connect.n1': 4522, 'fc_neuron': 50,
            },
            'class_counts': [
                [1, 2, 1, 0, 5, 3, 0, 0, 0, 1], [1, 0, 0, 1, 2, 0, 0, 1, 0, 2], [0, 0, 0, 0, 1, 0, 0, 0, 0, 0],
                [0, 1, 3, 0, 0, 0, 2, 1, 0, 0], [0, 1, 3, 1, 2, 1, 0, 0, 0, 3], [0, 0, 1, 1, 1, 0, 0, 0, 1, 1],
                [0, 0, 0, 0, 2, 0, 3, 1, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ],
            'loss': 0.0989687592,
            'grad_norms': {
                'stem:conv': 0.00234137011, 'stem:bn': 0.00201960296, 'stem:plif': 0.000156204565,
                'layers.0:conv': 0.00645405756, 'layers.0:bn': 0.00225704771, 'layers.0:plif': 0.00117130198,
                'layers.1:conv': 0.00155425677, 'layers.1:bn': 0.00146818701, 'layers.1:plif': 0.000211753359,
                'layers.2:conv': 0.0084177762, 'layers.2:bn': 0.00238107419, 'layers.2:plif': 0.000271877578,
                'layers.3:conv': 0.012929076, 'layers.3:bn': 0.00201956466, 'layers.3:plif': 0.00085531887,
                'layers.4:conv': 0.00700387236, 'layers.4:bn': 0.00186651496, 'layers.4:plif': 0.000449082376,
                'layers.6:conv': 0.01812662, 'layers.6:bn': 0.0024080999, 'layers.6:plif': 0.000685682322,
                'layers.7:conv': 0.0025442171, 'layers.7:bn': 0.00255664887, 'layers.7:plif': 0.00293124537,
                'fc:conv': 0.014223118, 'fc_neuron:plif': 0.00298598944,
            },
            'bn': {
                'stem.bn': [0.0122062354, 33.3066473, 1], 'layers.0.SRB_k3.cb1.bn': [0.213907573, 14.3826545, 8],
                'layers.0.SRB_k3.cb2.bn': [-0.17418132, 12.1791998, 8],
                'layers.1.skip_connect.bn': [-0.727709331, 24.3696246, 8],
                'layers.2.SCB_k3.cb1.bn': [-0.130536304, 20.805101, 8],
                'layers.2.SCB_k3.cb2.bn': [-0.348950625, 20.8950929, 8],
                'layers.3.SRB_k5.cb1.bn': [0.536032586, 20.2073553, 8],
                'layers.3.SRB_k5.cb2.bn': [0.291832076, 20.7382777, 8],
                'layers.4.SRB_k3.cb1.bn': [0.209709577, 43.7590963, 8],
                'layers.4.SRB_k3.cb2.bn': [0.559657295, 41.3973243, 8],
                'layers.4.SRB_k3.shortcut.bn': [0.480790517, 44.2438262, 8],
                'layers.6.SCB_k5.cb1.bn': [0.477554063, 51.2314813, 8],
                'layers.6.SCB_k5.cb2.bn': [0.549786011, 40.5357758, 8],
                'layers.7.skip_connect.bn': [-0.520497481, 84.316914, 8],
            },
        },
        'train_after_step': {
            'spikes': {
                'stem.n1': 74866, 'layers.0.SRB_k3.n1': 52595, 'layers.0.SRB_k3.n2': 53581,
                'layers.1.skip_connect.n1': 17834, 'layers.2.SCB_k3.n1': 18051, 'layers.2.SCB_k3.n2': 17162,
                'layers.3.SRB_k5.n1': 18158, 'layers.3.SRB_k5.n2': 20680, 'layers.4.SRB_k3.n1': 9170,
                'layers.4.SRB_k3.n2': 18105, 'layers.6.SCB_k5.n1': 9399, 'layers.6.SCB_k5.n2': 9044,
                'layers.7.skip_connect.n1': 4661, 'fc_neuron': 58,
            },
            'class_counts': [
                [1, 1, 2, 0, 4, 3, 6, 2, 3, 1], [2, 0, 0, 0, 2, 0, 2, 0, 1, 0], [0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
                [1, 0, 1, 1, 2, 0, 1, 0, 1, 0], [3, 0, 0, 1, 1, 1, 0, 1, 0, 0], [0, 0, 0, 1, 0, 1, 0, 1, 0, 0],
                [3, 1, 0, 1, 1, 1, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ],
            'loss': 0.0990156308,
            'grad_norms': {
                'stem:conv': 0.00251800516, 'stem:bn': 0.00309871317, 'stem:plif': 0.000882589025,
                'layers.0:conv': 0.00679576472, 'layers.0:bn': 0.00297872656, 'layers.0:plif': 0.0008475714,
                'layers.1:conv': 0.0015778196, 'layers.1:bn': 0.00178693996, 'layers.1:plif': 0.000625905581,
                'layers.2:conv': 0.00881545894, 'layers.2:bn': 0.00268501442, 'layers.2:plif': 0.000729237555,
                'layers.3:conv': 0.0140609619, 'layers.3:bn': 0.00209570295, 'layers.3:plif': 0.00110309089,
                'layers.4:conv': 0.00756346705, 'layers.4:bn': 0.0019133557, 'layers.4:plif': 0.000238913499,
                'layers.6:conv': 0.0200308332, 'layers.6:bn': 0.0025908105, 'layers.6:plif': 0.000728812367,
                'layers.7:conv': 0.00274869849, 'layers.7:bn': 0.00253914314, 'layers.7:plif': 0.00242348504,
                'fc:conv': 0.015338267, 'fc_neuron:plif': 0.00276408601,
            },
            'bn': {
                'stem.bn': [0.0231694076, 48.8820672, 2], 'layers.0.SRB_k3.cb1.bn': [0.301467261, 13.6736181, 16],
                'layers.0.SRB_k3.cb2.bn': [-0.247370264, 10.5426619, 16],
                'layers.1.skip_connect.bn': [-1.05194773, 21.0896406, 16],
                'layers.2.SCB_k3.cb1.bn': [-0.198046682, 15.96833, 16],
                'layers.2.SCB_k3.cb2.bn': [-0.516564042, 16.0483503, 16],
                'layers.3.SRB_k5.cb1.bn': [0.766165983, 15.0877717, 16],
                'layers.3.SRB_k5.cb2.bn': [0.438846295, 15.9093363, 16],
                'layers.4.SRB_k3.cb1.bn': [0.315305704, 34.9959175, 16],
                'layers.4.SRB_k3.cb2.bn': [0.870819298, 31.8022948, 16],
                'layers.4.SRB_k3.shortcut.bn': [0.669019244, 35.9373951, 16],
                'layers.6.SCB_k5.cb1.bn': [0.789963843, 46.1164171, 16],
                'layers.6.SCB_k5.cb2.bn': [0.702018329, 30.2292996, 16],
                'layers.7.skip_connect.bn': [-0.658035683, 64.799472, 16],
            },
        },
        'eval': {
            'spikes': {
                'stem.n1': 223337, 'layers.0.SRB_k3.n1': 167555, 'layers.0.SRB_k3.n2': 181322,
                'layers.1.skip_connect.n1': 48286, 'layers.2.SCB_k3.n1': 41875, 'layers.2.SCB_k3.n2': 31997,
                'layers.3.SRB_k5.n1': 30470, 'layers.3.SRB_k5.n2': 32091, 'layers.4.SRB_k3.n1': 12660,
                'layers.4.SRB_k3.n2': 22765, 'layers.6.SCB_k5.n1': 11320, 'layers.6.SCB_k5.n2': 8289,
                'layers.7.skip_connect.n1': 3186, 'fc_neuron': 20,
            },
            'class_counts': [
                [1, 1, 0, 0, 1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 1, 0, 1], [0, 0, 0, 0, 0, 1, 0, 0, 0, 0],
                [0, 1, 1, 0, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
                [0, 0, 0, 0, 0, 1, 0, 0, 1, 0], [1, 0, 0, 2, 0, 0, 0, 0, 0, 0],
            ],
        },
    },
    'child_dvs128': {
        'train': {
            'spikes': {
                'stem.n1': 529721, 'stem.pool1': 494227, 'stem.n2': 132268, 'stem.pool2': 124356,
                'layers.0.SCB_k3.n1': 33017, 'layers.0.SCB_k3.n2': 31137, 'layers.1': 29262,
                'layers.2.SRB_k3.n1': 17303, 'layers.2.SRB_k3.n2': 38351, 'layers.4': 33243,
                'layers.5.SRB_k5.n1': 9459, 'layers.5.SRB_k5.n2': 20694, 'layers.6.SCB_k5.n1': 8612,
                'layers.6.SCB_k5.n2': 8449, 'layers.7': 7794, 'fc_neuron': 439,
            },
            'class_counts': [
                [11, 7, 7, 5, 13, 6, 1, 3, 3, 9], [5, 3, 1, 4, 5, 7, 2, 3, 1, 6], [4, 7, 7, 3, 10, 6, 4, 5, 6, 4],
                [5, 7, 4, 7, 8, 3, 2, 3, 8, 5], [11, 9, 5, 7, 6, 5, 6, 3, 5, 8], [4, 3, 4, 4, 6, 8, 4, 6, 7, 6],
                [4, 2, 4, 4, 7, 6, 1, 5, 0, 5], [6, 3, 7, 6, 12, 6, 8, 5, 6, 15],
            ],
            'loss': 0.0946152359,
            'grad_norms': {
                'stem:conv': 0.00193800468, 'stem:bn': 0.00114666483, 'stem:plif': 7.33969911e-05,
                'layers.0:conv': 0.00406250915, 'layers.0:bn': 0.00157591524, 'layers.0:plif': 0.000448164663,
                'layers.2:conv': 0.0052473027, 'layers.2:bn': 0.00246238446, 'layers.2:plif': 0.000330964304,
                'layers.5:conv': 0.0166596017, 'layers.5:bn': 0.00333798998, 'layers.5:plif': 0.000657088324,
                'layers.6:conv': 0.0239236798, 'layers.6:bn': 0.00581559705, 'layers.6:plif': 0.00133270726,
                'fc:conv': 0.0279508079, 'fc_neuron:plif': 0.00207127631,
            },
            'bn': {
                'stem.bn': [-15.7778828, 84.1948328, 8], 'stem.cb2.bn': [0.706374631, 18.0443494, 8],
                'layers.0.SCB_k3.cb1.bn': [-0.432422757, 18.0298702, 8],
                'layers.0.SCB_k3.cb2.bn': [-0.682392372, 10.1272159, 8],
                'layers.2.SRB_k3.cb1.bn': [1.29590653, 34.3941734, 8],
                'layers.2.SRB_k3.cb2.bn': [-0.287657155, 20.5916097, 8],
                'layers.2.SRB_k3.shortcut.bn': [-0.243928337, 36.4064016, 8],
                'layers.5.SRB_k5.cb1.bn': [4.30252076, 94.6263241, 8],
                'layers.5.SRB_k5.cb2.bn': [0.228759194, 39.814477, 8],
                'layers.5.SRB_k5.shortcut.bn': [-0.903480475, 110.098101, 8],
                'layers.6.SCB_k5.cb1.bn': [0.909744868, 52.3049219, 8],
                'layers.6.SCB_k5.cb2.bn': [0.628735256, 39.0994831, 8],
            },
        },
        'train_after_step': {
            'spikes': {
                'stem.n1': 529902, 'stem.pool1': 494389, 'stem.n2': 131795, 'stem.pool2': 123930,
                'layers.0.SCB_k3.n1': 32989, 'layers.0.SCB_k3.n2': 31050, 'layers.1': 29210,
                'layers.2.SRB_k3.n1': 17186, 'layers.2.SRB_k3.n2': 38520, 'layers.4': 33351,
                'layers.5.SRB_k5.n1': 9529, 'layers.5.SRB_k5.n2': 20639, 'layers.6.SCB_k5.n1': 8756,
                'layers.6.SCB_k5.n2': 8557, 'layers.7': 7922, 'fc_neuron': 397,
            },
            'class_counts': [
                [5, 2, 2, 4, 10, 9, 3, 5, 6, 6], [10, 7, 3, 4, 6, 7, 1, 3, 0, 6], [5, 5, 3, 6, 6, 8, 6, 10, 4, 4],
                [8, 2, 2, 7, 7, 6, 2, 5, 10, 6], [5, 7, 7, 6, 4, 8, 4, 6, 4, 6], [9, 4, 5, 3, 3, 7, 5, 3, 1, 5],
                [6, 3, 3, 4, 6, 5, 1, 10, 2, 4], [3, 2, 3, 4, 5, 9, 4, 3, 3, 4],
            ],
            'loss': 0.0887753963,
            'grad_norms': {
                'stem:conv': 0.00194396785, 'stem:bn': 0.00124272254, 'stem:plif': 0.000423794378,
                'layers.0:conv': 0.00416111451, 'layers.0:bn': 0.00163627092, 'layers.0:plif': 0.000709967867,
                'layers.2:conv': 0.00535510859, 'layers.2:bn': 0.00267137595, 'layers.2:plif': 7.10521932e-05,
                'layers.5:conv': 0.0170719031, 'layers.5:bn': 0.00350621726, 'layers.5:plif': 0.000325208887,
                'layers.6:conv': 0.0252653572, 'layers.6:bn': 0.00655165844, 'layers.6:plif': 0.00574809671,
                'fc:conv': 0.0293035133, 'fc_neuron:plif': 0.00476222066,
            },
            'bn': {
                'stem.bn': [-22.559754, 113.551301, 16], 'stem.cb2.bn': [1.01276103, 18.9248917, 16],
                'layers.0.SCB_k3.cb1.bn': [-0.615068348, 18.8737588, 16],
                'layers.0.SCB_k3.cb2.bn': [-0.976427791, 7.59746897, 16],
                'layers.2.SRB_k3.cb1.bn': [1.84161435, 35.421746, 16],
                'layers.2.SRB_k3.cb2.bn': [-0.406089622, 15.6210904, 16],
                'layers.2.SRB_k3.shortcut.bn': [-0.33974715, 38.3074514, 16],
                'layers.5.SRB_k5.cb1.bn': [5.98054164, 107.90506, 16],
                'layers.5.SRB_k5.cb2.bn': [0.382655818, 29.4442327, 16],
                'layers.5.SRB_k5.shortcut.bn': [-1.31271623, 130.014217, 16],
                'layers.6.SCB_k5.cb1.bn': [1.34688789, 47.2818673, 16],
                'layers.6.SCB_k5.cb2.bn': [0.923001151, 28.5714021, 16],
            },
        },
        'eval': {
            'spikes': {
                'stem.n1': 658481, 'stem.pool1': 595411, 'stem.n2': 250357, 'stem.pool2': 210477,
                'layers.0.SCB_k3.n1': 87841, 'layers.0.SCB_k3.n2': 51755, 'layers.1': 45101,
                'layers.2.SRB_k3.n1': 42450, 'layers.2.SRB_k3.n2': 53174, 'layers.4': 39963,
                'layers.5.SRB_k5.n1': 15086, 'layers.5.SRB_k5.n2': 25367, 'layers.6.SCB_k5.n1': 10235,
                'layers.6.SCB_k5.n2': 7463, 'layers.7': 6686, 'fc_neuron': 346,
            },
            'class_counts': [
                [3, 2, 1, 5, 4, 8, 4, 6, 3, 6], [2, 4, 5, 2, 6, 4, 2, 5, 4, 4], [5, 5, 4, 4, 4, 6, 4, 6, 4, 4],
                [6, 9, 4, 4, 10, 13, 3, 7, 6, 2], [1, 2, 2, 4, 5, 4, 2, 6, 2, 2], [3, 9, 2, 5, 8, 3, 6, 2, 3, 6],
                [4, 5, 3, 6, 5, 2, 1, 4, 5, 3], [5, 7, 3, 4, 7, 3, 3, 4, 3, 2],
            ],
        },
    },
}


@pytest.mark.parametrize("case", CASES)
def test_matches_the_original(case):
    assert differences(measure_ours(case), GOLDEN[case]) == []
