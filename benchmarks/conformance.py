"""Conformance with the original AutoSNN code (github nabk89/AutoSNN, commit 53b4818): what is measured.

The same code measures both networks: tools/golden_original.py runs it on the original's network
(holding the weights `build` draws here) and writes the numbers to tests/data/conformance.json;
tests/test_conformance.py runs it on ours and compares (`differences`). The original itself is never
imported here.

A case (stored in the data file beside its golden numbers) is a dict:
    backbone, arch        e.g. "AutoSNN_16", "SRB_k5-SRB_k5-skip_connect-SRB_k3-SRB_k5"
    supernet              true: our super-network (every candidate built) run on `arch`
    input_shape, v_th     [3, 32, 32] (CIFAR-shaped) or [2, 128, 128] (DVS-shaped); the threshold
    seed, gain            the weights' and batches' generator, the weights' scale (see `build`)
    calibrate             0, or N: BN statistics re-estimated from N batches before the eval pass
The passes (`run_passes`), T = 8, batch 8:
  1. train: forward, rate loss, backward   -> spikes per layer, class counts, loss, every path
     parameter's gradient (float64 norm and a digest of its float32 bits), BN running statistics
  2. one Adam step (lr 1e-3), then the same training pass again     -> the same fields
  3. with calibrate = N: every path BN's running statistics reset and re-estimated as the cumulative
     average over N seeded batches run in training mode without gradients (momentum None)
  4. eval: BN on the running statistics left -> spikes, class counts, loss (and, calibrated, BN)
"""
import hashlib
import math
import platform
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn

from autosnn import SpikingNetwork, rate_loss

T, BATCH, LR = 8, 8, 1e-3
DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "conformance.json"

# Bounds for `differences` on any machine, from the gaps measured between the two codes before
# they agreed bit for bit (and between thread counts): loss rel 1e-6; gradient norms rel 1e-4;
# BN sums rel 1e-6 or abs 1e-6, whichever is larger. Spikes and class counts are always exact.
TOLERANCE = {"loss": dict(rel=1e-6), "grads": dict(rel=1e-4, abs=1e-9), "bn": dict(rel=1e-6, abs=1e-6)}


def digest(t: torch.Tensor) -> str:
    """The first 16 hex digits of the SHA-256 of t's float32 bits: equal exactly when t is bit-identical."""
    return hashlib.sha256(t.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def machine() -> dict:
    """What bit-identical results depend on besides the thread count: torch, the CPU's vector
    instructions (which pick oneDNN's kernels), the CPU model."""
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability(), "cpu_model": model}


@contextmanager
def threads(n: int):
    """torch's intra-op thread count set to n inside: a conv's weight gradient is split among threads,
    so its rounding depends on their number."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build(spec: dict):
    """Our network of a case, its weights and batches from one seeded generator:
    (net, x, labels, calibration batches). Conv/linear weights ~ U(-a, a), a = gain / sqrt(fan_in):
    at torch's default scale (gain 1) the classifier hardly fires at V_th = 1, which would leave the
    class counts and the eval pass untested. BN (1, 0) and PLIF w = 0 as initialised.
    x: [B, 3, 32, 32] normal, or [B, T, 2, 128, 128] event counts in {0, 1, 2}; labels: [B]."""
    shape = tuple(spec["input_shape"])
    net = SpikingNetwork(spec["backbone"], 10, arch=None if spec["supernet"] else spec["arch"], T=T,
                         input_shape=shape, v_th=spec["v_th"])
    g = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():
        for _, p in net.named_parameters():
            if p.dim() > 1:
                bound = spec["gain"] / math.sqrt(p[0].numel())
                p.copy_(torch.rand(p.shape, generator=g) * 2 * bound - bound)

    def batch():
        if shape[0] == 2:
            return torch.randint(0, 3, (BATCH, T, *shape), generator=g).float()
        return torch.randn(BATCH, *shape, generator=g)

    x = batch()
    labels = torch.randint(0, 10, (BATCH,), generator=g)
    return net, x, labels, [batch() for _ in range(spec["calibrate"])]


def run_passes(net: nn.Module, forward, params: dict, bns: dict, x, labels, calibration=(),
               reset=lambda: None) -> dict:
    """The passes of the module docstring, for any network `net` given as
    forward(x) -> (out [B, K] class rates summed over T, {layer: spikes over the batch and T}),
    params: {our name: parameter}, bns: {our name: BatchNorm2d}; reset() after each forward.
    Returns plain numbers: {'train': {...}, 'train_after_step': {...}, 'eval': {...}}."""
    def bn_stats():
        return {n: [m.running_mean.double().sum().item(), m.running_var.double().sum().item(),
                    int(m.num_batches_tracked), digest(torch.cat([m.running_mean, m.running_var]))]
                for n, m in bns.items()}

    def pass_(train: bool) -> dict:
        out, spikes = forward(x)
        fired = out.detach() * 10            # [B, K] firing neurons of each class's 10, summed over T
        assert torch.allclose(fired, fired.round(), atol=1e-4)
        loss = rate_loss(out, labels, T)
        row = {"spikes": {k: int(v) for k, v in spikes.items()}, "class_counts": fired.round().int().tolist(),
               "loss": loss.item()}
        if train:
            loss.backward()
            row["grads"] = {n: [p.grad.double().norm().item(), digest(p.grad)]
                            for n, p in params.items() if p.grad is not None}
            row["bn"] = bn_stats()
        reset()
        return row

    net.train()
    opt = torch.optim.Adam(params.values(), lr=LR)
    result = {"train": pass_(True)}
    opt.step()
    opt.zero_grad()
    result["train_after_step"] = pass_(True)
    if calibration:
        momentum = {n: m.momentum for n, m in bns.items()}
        for m in bns.values():
            m.reset_running_stats()
            m.momentum = None                # cumulative average over every step of every batch
        with torch.no_grad():
            for xc in calibration:
                forward(xc)
                reset()
        for n, m in bns.items():
            m.momentum = momentum[n]
    net.eval()
    with torch.no_grad():
        result["eval"] = pass_(False)
    if calibration:
        result["eval"]["bn"] = bn_stats()
    return result


def measure_ours(spec: dict, prepare=None) -> dict:
    """run_passes on our network of a case (its path's parameters and BN layers only). prepare(net), when
    given, changes the network first (fast.steps.use_step_layers: the fast per-step forms)."""
    net, x, labels, calibration = build(spec)
    if prepare is not None:
        prepare(net)
    arch = spec["arch"] if spec["supernet"] else None
    keep = net.path_state_dict(spec["arch"])

    def forward(x):
        out, stats = net(x, arch=arch)
        return out, dict(zip(stats.names, stats.counts.tolist()))

    params = {n: p for n, p in net.named_parameters() if n in keep}
    bns = {n: m for n, m in net.named_modules()
           if isinstance(m, nn.BatchNorm2d) and f"{n}.running_mean" in keep}
    return run_passes(net, forward, params, bns, x, labels, calibration)


def differences(ours: dict, golden: dict, exact: bool = False) -> list:
    """Every field where `ours` is off `golden`: ['train.spikes: [layers.0.SRB_k5.n1]', ...], empty
    when they conform. Spikes and class counts exactly; the rest within TOLERANCE, or, with
    exact=True, bit for bit (losses equal, gradients and BN statistics of equal digests)."""
    def off(a, b, field):
        if exact:
            return a != b
        tol = TOLERANCE[field]
        return abs(a - b) > max(tol["rel"] * abs(b), tol.get("abs", 0.0))

    bad = []
    for p, want in golden.items():
        got = ours[p]
        if got["spikes"] != want["spikes"]:
            layers = [k for k in want["spikes"] if got["spikes"].get(k) != want["spikes"][k]]
            bad.append(f"{p}.spikes: {layers}")
        if got["class_counts"] != want["class_counts"]:
            images = [i for i, (a, b) in enumerate(zip(got["class_counts"], want["class_counts"])) if a != b]
            bad.append(f"{p}.class_counts: images {images}")
        if off(got["loss"], want["loss"], "loss"):
            bad.append(f"{p}.loss: {got['loss']!r} vs {want['loss']!r}")
        for field in ("grads", "bn"):
            if field not in want:
                continue
            if set(got.get(field, ())) != set(want[field]):
                bad.append(f"{p}.{field}: other names")
                continue
            values = 2 if field == "bn" else 1     # bn: [mean sum, var sum, updates, digest]; grads: [norm, digest]
            for k, w in want[field].items():
                g = got[field][k]
                if exact and g[-1] != w[-1]:
                    bad.append(f"{p}.{field}.{k}: not bit-identical ({g[:-1]} vs {w[:-1]})")
                elif not exact and any(off(a, b, field) for a, b in zip(g[:values], w[:values])):
                    bad.append(f"{p}.{field}.{k}: {g[:-1]} vs {w[:-1]}")
                if field == "bn" and g[2] != w[2]:
                    bad.append(f"{p}.bn.{k}: {g[2]} updates vs {w[2]}")
    return bad
