"""Evaluating architectures with a trained super-network's weights (paper sec. 4: D_val accuracy
and spikes per image of each candidate path), and re-estimating BN statistics of one path.

evaluate_pool runs a whole pool per validation batch and computes every shared prefix (the stem and
each identical leading sequence of blocks) only once; it gives the same numbers as evaluating each
architecture alone through the plain forward (tested). No host sync happens per batch: counts stay
on the device until the one read at the end.
"""
from __future__ import annotations

import torch

from autosnn import SpikingNetwork, predict, sum_over_steps
from layers import TimeBatchNorm
from search_space import parse_arch
from spikes import SpikeStats, Trace


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
                out = sum_over_steps(net.head(h, trace))
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
                descend(depth + 1, net.run_position(depth, h, block, branch), branch, group)

        trace = Trace(counting=net.neuron != "ann", energy=energy)
        descend(0, net.stem(net.stem.encode(x, net.T, trace), trace), trace, list(range(len(archs))))
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
def evaluate_model(net, batches, arch=None, energy: bool = True) -> dict:
    """Accuracy, spikes and energy estimate of one network (a child, a super-network path with
    `arch`, or a hand-crafted baseline) in eval mode, through its plain forward."""
    net.eval()
    correct, stats = 0, None
    for x, y in batches:
        out, s = net(x, arch, energy=energy)
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
