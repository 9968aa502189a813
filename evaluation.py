"""Evaluating architectures with a trained super-network's weights (the search's fitness: D_val accuracy
and spikes per image of each candidate path), re-estimating BN statistics of one path, watching a
fixed set of paths while the super-network trains, and the rank agreement of two rankings
(Kendall's tau-b, Spearman's rho) that says whether the super-network ranks paths as training would.

evaluate_pool runs a whole pool per validation batch and computes every shared prefix (the stem and
each identical leading sequence of blocks) only once; it gives the same numbers as evaluating each
architecture alone through the plain forward (tested). No host sync happens per batch: counts stay
on the device until the one read at the end.
"""
from __future__ import annotations

import math
import random
import statistics

import numpy as np
import torch

from autosnn import SpikingNetwork, predict, sum_over_steps
from layers import TimeBatchNorm
from search_space import Arch, Backbone, parse_arch, sample_arch
from spikes import SpikeStats


@torch.inference_mode()
def evaluate_pool(net: SpikingNetwork, archs: list, batches, energy: bool = True) -> list[dict]:
    """Accuracy and spikes per image of every architecture on the same batches, in eval mode.

    batches: iterable of (x [B, ...], y [B]). Walks the tree of shared prefixes depth-first: the
    stem runs once per batch, and a block runs once for all architectures that agree up to it.
    Returns one dict per arch: acc, spikes, neuron_spikes, per_layer (spikes per image per layer),
    and with `energy` the estimate of SpikeStats.energy() (sops, energy_uj, ann_energy_uj, ...).
    """
    net.eval()
    archs = [parse_arch(a, net.backbone) for a in archs]
    layouts = [net.layout(a) for a in archs]
    correct: list = [0] * len(archs)
    stats: list = [None] * len(archs)
    for x, y in batches:
        net.check_input(x)

        def descend(depth, h, trace, members):
            if depth == len(layouts[0]):
                with net.recorder.active(trace):
                    out = sum_over_steps(net.head(h))
                hit = (predict(out) == y).sum()
                s = SpikeStats.from_trace(trace, x.shape[0], net.T, x.device)
                for i in members:
                    correct[i] = correct[i] + hit
                    stats[i] = s if stats[i] is None else stats[i] + s
                return
            groups: dict = {}
            for i in members:
                groups.setdefault(layouts[i][depth], []).append(i)
            for block, group in groups.items():
                branch = trace.copy() if len(groups) > 1 else trace
                with net.recorder.active(branch):
                    out = net.run_position(depth, h, block)
                descend(depth + 1, out, branch, group)

        trace = net.trace(energy)
        with net.recorder.active(trace):
            h = net.stem(net.stem.encode(x, net.T))
        descend(0, h, trace, list(range(len(archs))))
    return [_result(c, s) for c, s in zip(correct, stats)]


def _result(correct, stats: SpikeStats) -> dict:
    """Plain numbers from device accumulators (read once, at the end of an evaluation)."""
    summary = stats.summary()
    out = {"acc": float(correct) / stats.batch, "spikes": summary["spikes"],
           "neuron_spikes": summary["neuron_spikes"], "per_layer": summary["per_layer"],
           "silent_layers": stats.silent_layers()}
    if stats.syn_names:
        out["energy"] = stats.energy()
    return out


@torch.inference_mode()
def evaluate_model(net, batches, arch=None, energy: bool = True, forward=None) -> dict:
    """Accuracy, spikes and energy estimate of one network (a child, a super-network path with
    `arch`, or a hand-crafted baseline) in eval mode, through its plain forward, or through
    forward(x) -> (out, SpikeStats) when given (a replayed CUDA graph of the same forward)."""
    net.eval()
    forward = forward or (lambda x: net(x, arch, energy=energy))
    correct, stats = 0, None
    for x, y in batches:
        out, s = forward(x)
        correct = correct + (predict(out) == y).sum()
        stats = s if stats is None else stats + s
    return _result(correct, stats)


def recalibrate_bn(net: SpikingNetwork, arch, batches) -> None:
    """Re-estimate BN running statistics of one path as a cumulative average over `batches`
    (train-mode forwards, no gradient): each BN's running mean / variance become the plain average,
    over every batch and every time step it normalised, of that step's batch mean and unbiased
    variance per channel. Modifies `net`: use it on a child copy. batches: iterable of (x [B, ...], _).

    torch's own cumulative mode (momentum=None) reads num_batches_tracked on the host at every BN
    call (a sync per layer per step). Here hooks add each step's statistics on the device and count
    the steps in Python, so nothing is read back. A BN input [T, B, C, H, W] is T steps, each
    normalised on its own (autosnn.TimeBatchNorm); [B, C, ...] is one step."""
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    sums = {m: [0, 0, 0] for m in bns}             # [sum of means, sum of variances, steps]

    def record(m, inputs):
        x = inputs[0].detach().float()
        steps = x.unbind(0) if isinstance(m, TimeBatchNorm) and x.dim() == 5 else [x]
        for z in steps:
            dims = [d for d in range(z.dim()) if d != 1]
            s = sums[m]
            s[0] = s[0] + z.mean(dims)
            s[1] = s[1] + z.var(dims, unbiased=True)
            s[2] += 1

    hooks = [m.register_forward_pre_hook(record) for m in bns]
    net.train()
    try:
        with torch.no_grad():
            for x, _ in batches:
                net(x, arch)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for m, (mean, var, n) in sums.items():
            if n:                      # a BN off the path keeps its statistics
                m.running_mean.copy_(mean / n)
                m.running_var.copy_(var / n)
                m.num_batches_tracked.fill_(n)


def evaluate_archs(supernet: SpikingNetwork, archs: list, val_batches, recalib_batches=None) -> list[dict]:
    """Evaluate a pool with the super-network's weights, one flat record per architecture (acc,
    spikes, neuron_spikes, and the energy estimate's sops, energy_uj, ann_energy_uj).
    val_batches / recalib_batches: callables returning a fresh iterable of batches. With
    recalib_batches, each architecture becomes a child network (its path's weights) whose BN
    statistics are re-estimated first; otherwise the pool shares prefixes (evaluate_pool)."""
    if recalib_batches is None:
        results = evaluate_pool(supernet, archs, val_batches())
    else:
        results = []
        for a in archs:
            child = supernet.child(a)
            recalibrate_bn(child, a, recalib_batches())
            results += evaluate_pool(child, [a], val_batches())
    flat = []
    for r in results:
        row = {k: r[k] for k in ("acc", "spikes", "neuron_spikes")}
        if "energy" in r:
            row.update({k: r["energy"][k] for k in ("sops", "energy_uj", "ann_energy_uj")})
        flat.append(row)
    return flat


# ---------------------------------------------------------------------------------------------
# Watching the super-network learn; rank agreement
# ---------------------------------------------------------------------------------------------

def distinct_archs(backbone: Backbone, k: int, rng: random.Random) -> list[Arch]:
    """k different architectures drawn uniformly (fewer only if the space holds fewer)."""
    out, seen = [], set()
    while len(out) < min(k, backbone.size):
        a = sample_arch(backbone, rng)
        if str(a) not in seen:
            seen.add(str(a))
            out.append(a)
    return out


def watch(supernet: SpikingNetwork, archs: list, val_batches, recalib_batches, previous: list | None) -> dict:
    """Evaluate the fixed paths `archs` on D_val as the search would (each a child copy, its BN
    statistics re-estimated when recalib_batches is given) and summarise: val_acc and val_spikes
    (mean over the paths), their standard deviations, the per-path lists, and val_tau, Kendall's
    tau-b between these accuracies and `previous` (the last evaluation's per-path accuracies; None
    when there is none or either side is tied throughout, e.g. every path at chance). The
    super-network, its BN statistics and every random generator training draws from (Python's,
    torch's) are left as they were: a run with and without watching trains the same weights."""
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):          # building child copies draws initial weights
        rows = evaluate_archs(supernet, archs, val_batches, recalib_batches)
    random.setstate(state)
    acc, spikes = [r["acc"] for r in rows], [r["spikes"] for r in rows]
    tau = float("nan") if previous is None else kendall_tau(previous, acc)
    return {"val_acc": statistics.fmean(acc), "val_acc_sd": statistics.pstdev(acc),
            "val_spikes": statistics.fmean(spikes), "val_spikes_sd": statistics.pstdev(spikes),
            "val_tau": None if math.isnan(tau) else tau, "val_path_acc": acc, "val_path_spikes": spikes}


def mean_ranks(v) -> np.ndarray:
    """Ranks 1..n of the values v, ties given the mean of the ranks they span."""
    v = np.asarray(v, float)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    sv = v[order]
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def kendall_tau(x, y) -> float:
    """Kendall's tau-b of paired values: (concordant - discordant) / sqrt((n0 - n1) (n0 - n2)),
    n0 = n(n-1)/2 pairs, n1 / n2 the pairs tied in x / in y. In [-1, 1]; nan when either side is
    constant (no ranking to compare) or fewer than 2 pairs. O(n^2): meant for tens of values."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"kendall_tau needs two equally long lists, got shapes {x.shape} and {y.shape}")
    i, j = np.triu_indices(len(x), 1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    n0, n1, n2 = len(i), int((sx == 0).sum()), int((sy == 0).sum())
    denom = np.sqrt(float(n0 - n1) * float(n0 - n2))
    return float((sx * sy).sum() / denom) if denom > 0 else float("nan")


def spearman_rho(x, y) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (ties: mean ranks). nan when a side is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"spearman_rho needs two equally long lists, got shapes {x.shape} and {y.shape}")
    rx, ry = mean_ranks(x) - (len(x) + 1) / 2, mean_ranks(y) - (len(y) + 1) / 2
    denom = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")
