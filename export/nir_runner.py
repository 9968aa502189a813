"""A small independent runner of a NIR graph (NIR's equations, none of this project's modules),
and a node-for-node comparison of two graphs: to check an exported file without a simulator.

    >>> from export.nir_runner import run_nir, graphs_equal
    >>> scores, spikes = run_nir(nir.read("net.nir"), images, T=4)   # scores [B, K], spikes {node: [T, B, ...]}
    >>> graphs_equal(graph, nir.read("net.nir"))                     # [] when equal
"""
import numpy as np
import torch
import torch.nn.functional as F

from export.nir import import_nir
from files import AutoSNNError


def _order(graph) -> list:
    """Node names in an order where every node comes after its sources (the graph is acyclic)."""
    sources = {n: [a for a, b in graph.edges if b == n] for n in graph.nodes}
    done, order = set(), []
    while len(order) < len(graph.nodes):
        ready = [n for n in graph.nodes if n not in done and all(s in done for s in sources[n])]
        if not ready:
            raise AutoSNNError("the NIR graph has a cycle: run_nir runs feed-forward graphs only")
        order += ready
        done.update(ready)
    return order


def run_nir(graph, x: torch.Tensor, T: int):
    """Run a feed-forward NIR graph one step at a time, float32, from NIR's equations alone.

    x: [B, C, H, W] (fed at every step) or [B, T, C, H, W] (frame t at step t).
    Neurons: Euler at the graph's metadata dt, v += dt / tau * (v_leak - v + r * I) (LIF),
    v += dt * r * I (IF); spike where v > v_threshold (v >= v_threshold where the metadata's
    spike_condition says so: a file written for spikingjelly); then v = v_reset where it spiked.
    A node's input is the sum of its sources' outputs.
    Returns (scores [B, K] = the output node summed over T, {neuron node: spikes [T, B, ...]})."""
    nir = import_nir()
    dt = float(graph.metadata.get("dt", 1.0))
    at_threshold = _plain(graph.metadata.get("spike_condition", "")) == "v >= v_threshold"
    order = _order(graph)
    sources = {n: [a for a, b in graph.edges if b == n] for n in graph.nodes}
    t32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)
    state, spikes, total = {}, {}, 0
    for t in range(T):
        out = {}
        for name in order:
            node = graph.nodes[name]
            if isinstance(node, nir.Input):
                out[name] = (x[:, t] if x.dim() == 5 else x).float()
                continue
            inp = out[sources[name][0]]
            for s in sources[name][1:]:
                inp = inp + out[s]
            if isinstance(node, nir.Conv2d):
                y = F.conv2d(inp, t32(node.weight), t32(node.bias), tuple(node.stride), tuple(node.padding),
                             tuple(node.dilation), int(node.groups))
            elif isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):
                k, s, p = (tuple(int(v) for v in a) for a in (node.kernel_size, node.stride, node.padding))
                y = F.avg_pool2d(inp, k, s, p, divisor_override=1 if isinstance(node, nir.SumPool2d) else None)
            elif isinstance(node, nir.Flatten):
                end = node.end_dim if node.end_dim < 0 else node.end_dim + 1
                y = inp.flatten(node.start_dim + 1, end)
            elif isinstance(node, (nir.Linear, nir.Affine)):
                y = inp @ t32(node.weight).T
                if isinstance(node, nir.Affine):
                    y = y + t32(node.bias)
            elif isinstance(node, (nir.LIF, nir.IF)):
                v = state.get(name, torch.zeros_like(inp))
                if isinstance(node, nir.LIF):
                    v = v + dt / t32(node.tau) * (t32(node.v_leak) - v + t32(node.r) * inp)
                else:
                    v = v + dt * t32(node.r) * inp
                th = t32(node.v_threshold)
                y = (v >= th if at_threshold else v > th).float()
                state[name] = torch.where(y.bool(), t32(node.v_reset), v)
                spikes.setdefault(name, []).append(y)
            elif isinstance(node, nir.Output):
                y = inp
                total = total + y
            else:
                raise AutoSNNError(f"run_nir cannot run node {name!r} of type {type(node).__name__}")
            out[name] = y
    return total, {k: torch.stack(v) for k, v in spikes.items()}


def graphs_equal(a, b) -> list:
    """Differences between two NIR graphs, node for node ([] when equal): same node names and types,
    same parameters (arrays compared exactly), same edges, same graph metadata."""
    diffs = []
    if set(a.nodes) != set(b.nodes):
        diffs.append(f"node names differ: {sorted(set(a.nodes) ^ set(b.nodes))}")
    for name in sorted(set(a.nodes) & set(b.nodes)):
        da, db = a.nodes[name].to_dict(), b.nodes[name].to_dict()
        if da.keys() != db.keys():
            diffs.append(f"{name}: fields {sorted(da)} vs {sorted(db)}")
            continue
        for k in da:
            va, vb = _plain(da[k]), _plain(db[k])
            if not _same(va, vb):
                diffs.append(f"{name}.{k}: {va!r:.60} vs {vb!r:.60}")
    if sorted(map(tuple, a.edges)) != sorted(map(tuple, b.edges)):
        diffs.append("edges differ")
    ma = {k: _plain(v) for k, v in (a.metadata or {}).items()}
    mb = {k: _plain(v) for k, v in (b.metadata or {}).items()}
    if ma.keys() != mb.keys() or not all(_same(ma[k], mb[k]) for k in ma):
        diffs.append(f"metadata differs: {sorted(ma)} vs {sorted(mb)}")
    return diffs


def _plain(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        return v.item()
    return v


def _same(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (np.ndarray, list, tuple)) or isinstance(b, (np.ndarray, list, tuple)):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and a.dtype.kind == b.dtype.kind and np.array_equal(a, b)
    return a == b
