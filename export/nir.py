"""Export a trained AutoSNN child network (or a hand-crafted baseline) to NIR, the Neuromorphic
Intermediate Representation read by simulators (Norse, snnTorch, spikingjelly, Lava-DL, Sinabs,
Rockpool) and neuromorphic toolchains. Needs the `nir` package (pip install nir), imported lazily.

    python3 runs.py export runs/X --nir net.nir                       # the retrained network
    >>> from export.nir import to_nir, write_nir, run_nir
    >>> graph = to_nir(net, dt=1.0)          # nir.NIRGraph; net: SpikingNetwork child or HandcraftedSNN
    >>> write_nir("runs/X", "net.nir")       # run folder (model.pt) or a network -> file, written atomically
    >>> scores, spikes = run_nir(graph, images, T=4)   # this module's own small runner of a graph

What each part of the network becomes (node names are the network's module names):
  conv + eval BN   nir.Conv2d with bias, BN folded in: with s = gamma / sqrt(var + eps),
                   W' = W * s (per output channel),  b' = beta - mean * s.
  PLIF / LIF       nir.LIF, tau = dt / k with k = sigmoid(w) (PLIF) or 1 / tau0 (LIF), r = 1,
                   v_leak = 0, v_threshold = v_th, v_reset = 0. The network's update v += (x - v) * k
                   is exactly the Euler step of NIR's tau dv/dt = (v_leak - v) + r I at step dt.
  IF               nir.IF, r = 1 / dt (v += dt * r * I = I; r = 1 at the default dt = 1).
  max-pool 2x2     nir.SumPool2d(2, 2) -> nir.LIF with tau = dt, v_threshold = 0.5 (node '<name>' is
                   the LIF, '<name>.sum' the pool). On binary spikes max = "at least one spike": the
                   window sum is an integer, and an LIF whose leak is 1 (tau = dt: v = I each step,
                   its reset returns it to 0) fires exactly when it is >= 1. Threshold 0.5 lies
                   between 0 and 1, so v > v_th (NIR) and v >= v_th (ours) agree. Not nir.Threshold:
                   Norse's and snnTorch's readers and most chips map only neuron nodes.
  avg-pool         nir.AvgPool2d (then the block's neuron); spiking GAP: AvgPool2d over the whole map.
  SRB shortcut     a second edge into the block's last neuron (NIR sums a node's inputs): from the
                   block input (identity) or from its folded 1x1 conv (stride-2 / wider shortcut).
  skip_connect     identity: no node. Otherwise its 1x1 conv or factorized reduce, BN folded, and
                   neuron; the factorized reduce (two stride-2 1x1 convs, the second on the input
                   shifted by one pixel, concatenated) is one stride-2 2x2 conv whose kernel is
                   W_a at tap (0, 0) for the first half of the channels and W_b at (1, 1) for the rest.
  classifier       nir.Flatten -> nir.Linear (no bias) -> nir.LIF population (10 per class) ->
                   nir.Affine 'readout' with weights 1/10 (the group mean) -> nir.Output [K].
  stem             nir.Input [C, H, W]: a static image is fed at every step (the network's direct
                   encoding); event data one frame per step.
pooling="conv" writes every pooling window as a nir.Conv2d instead (channel-diagonal weights 1,
resp. 1/(kh*kw)), for readers without pooling nodes (snnTorch 1.0 has no SumPool2d, Norse 1.1 no AvgPool2d).
The readout: class score = sum over the T steps of the Output node. The graph's metadata says so,
with the architecture, T, input shape and normalisation, dt, and the firing rule: this project fires
at v >= v_th, NIR readers at v > v_th (they differ only for a membrane exactly on the threshold).
"""
import io
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from autosnn import MODEL_VERSION, POPULATION, SpikingNetwork, Stem, load_model
from files import AutoSNNError, atomic_write
from layers import SCB, SRB, AvgPoolNeuron, ConvBN, FactorizedReduce, GlobalPoolNeuron, MaxPool, Skip
from neurons import Neuron


EXPORT_VERSION = 1     # of this exporter's graph layout and metadata


def import_nir():
    """The nir package, or one line saying how to install it."""
    try:
        import nir
    except ImportError:
        raise AutoSNNError("exporting to NIR needs the nir package: pip install nir") from None
    return nir


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, weight=None):
    """Eval-mode BN folded into the preceding conv (float64, then float32):
    s = gamma / sqrt(var + eps);  W' = W * s;  b' = beta - mean * s. Returns (W' [O, I, kh, kw], b' [O])."""
    w = (conv.weight if weight is None else weight).detach().double()
    s = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    b = bn.bias.detach().double() - bn.running_mean.double() * s
    return (w * s[:, None, None, None]).float().numpy(), b.float().numpy()


def factorized_weight(fr: FactorizedReduce) -> torch.Tensor:
    """FactorizedReduce as one 2x2 stride-2 conv: [Cout, Cin, 2, 2], W_a at (0, 0), W_b at (1, 1)."""
    wa, wb = fr.conv_a.weight.detach(), fr.conv_b.weight.detach()
    w = torch.zeros(wa.shape[0] + wb.shape[0], wa.shape[1], 2, 2, dtype=wa.dtype)
    w[: wa.shape[0], :, 0, 0] = wa[:, :, 0, 0]
    w[wa.shape[0]:, :, 1, 1] = wb[:, :, 0, 0]
    return w


class _Graph:
    """Collects NIR nodes and edges while walking a network; `shape` is the [C, H, W] / [F] at the
    current node."""

    def __init__(self, nir, dt: float, pooling: str):
        self.nir, self.dt, self.pooling = nir, float(dt), pooling
        self.nodes, self.edges = {}, []

    def add(self, name, node, *sources):
        self.nodes[name] = node
        self.edges += [(s, name) for s in sources]
        return name

    def conv(self, name, src, shape, conv, bn, weight=None, stride=None, padding=None):
        """Folded conv + BN. Returns (node name, output shape)."""
        w, b = fold_bn(conv, bn, weight)
        stride = conv.stride if stride is None else stride
        padding = conv.padding if padding is None else padding
        node = self.nir.Conv2d(input_shape=tuple(shape[1:]), weight=w, stride=tuple(stride),
                               padding=tuple(padding), dilation=(1, 1), groups=1, bias=b)
        return self.add(name, node, src), tuple(int(d) for d in node.output_type["output"])

    def neuron(self, name, sources, shape, neuron: Neuron):
        if neuron.kind == "ann":
            raise AutoSNNError(f"layer {name!r} is a ReLU (the ANN ablation, neuron='ann'): NIR describes "
                               f"spiking networks; export a network trained with neuron plif, lif or if")
        full = lambda v: np.full(shape, v, dtype=np.float32)
        k = neuron.leak()
        if k is None:
            node = self.nir.IF(r=full(1.0 / self.dt), v_threshold=full(neuron.v_th), v_reset=full(0.0))
        else:
            tau = self.dt / float(torch.as_tensor(k).detach())
            node = self.nir.LIF(tau=full(tau), r=full(1.0), v_leak=full(0.0), v_threshold=full(neuron.v_th),
                                v_reset=full(0.0))
        return self.add(name, node, *sources)

    def window(self, name, src, shape, k, average):
        """A k x k (stride k) pooling window over [C, H, W]: sum or mean. Returns (name, shape)."""
        kh, kw = k
        out = (shape[0], shape[1] // kh, shape[2] // kw)
        if self.pooling == "conv":
            # channel-diagonal, groups=1: nir 1.0.8's shape inference ignores groups (a depthwise
            # conv fails its type check); the zero weights add exact zeros
            w = np.zeros((shape[0], shape[0], kh, kw), np.float32)
            w[np.arange(shape[0]), np.arange(shape[0])] = 1.0 / (kh * kw) if average else 1.0
            node = self.nir.Conv2d(input_shape=tuple(shape[1:]), weight=w, stride=(kh, kw), padding=(0, 0),
                                   dilation=(1, 1), groups=1, bias=np.zeros(shape[0], np.float32))
        else:
            kind = self.nir.AvgPool2d if average else self.nir.SumPool2d
            node = kind(kernel_size=np.array(k), stride=np.array(k), padding=np.array([0, 0]))
        return self.add(name, node, src), out

    def maxpool(self, name, src, shape):
        """Max-pool of binary spikes = sum-pool, then a memoryless threshold at 0.5 (module docstring)."""
        pool, out = self.window(name + ".sum", src, shape, (2, 2), average=False)
        full = lambda v: np.full(out, v, dtype=np.float32)
        node = self.nir.LIF(tau=full(self.dt), r=full(1.0), v_leak=full(0.0), v_threshold=full(0.5),
                            v_reset=full(0.0))
        return self.add(name, node, pool), out

    def block(self, name, src, shape, m):
        """One body layer of a child network or baseline. Returns (output node name, output shape)."""
        if isinstance(m, MaxPool):
            return self.maxpool(name, src, shape)
        if isinstance(m, AvgPoolNeuron):
            pool, shape = self.window(name + ".pool", src, shape, (2, 2), average=True)
            return self.neuron(name + ".n1", [pool], shape, m.n1), shape
        if isinstance(m, GlobalPoolNeuron):
            pool, shape = self.window(name + ".pool", src, shape, tuple(shape[1:]), average=True)
            return self.neuron(name + ".n1", [pool], shape, m.n1), shape
        if isinstance(m, Skip):
            if m.identity:
                return src, shape
            if isinstance(m.conv, FactorizedReduce):
                c, out = self.conv(name + ".conv", src, shape, m.conv.conv_a, m.bn, factorized_weight(m.conv),
                                   stride=(2, 2), padding=(0, 0))
            else:
                c, out = self.conv(name + ".conv", src, shape, m.conv, m.bn)
            return self.neuron(name + ".n1", [c], out, m.n1), out
        if isinstance(m, (SCB, SRB)) or type(m).__name__ == "ConvBNNeuron":
            if type(m).__name__ == "ConvBNNeuron":          # baselines.py: conv 3x3 + BN + neuron
                c, out = self.conv(name + ".cb", src, shape, m.cb.conv, m.cb.bn)
                return self.neuron(name + ".n1", [c], out, m.n1), out
            c, out = self.conv(name + ".cb1", src, shape, m.cb1.conv, m.cb1.bn)
            s = self.neuron(name + ".n1", [c], out, m.n1)
            c2, out = self.conv(name + ".cb2", s, out, m.cb2.conv, m.cb2.bn)
            sources = [c2]
            if isinstance(m, SRB):
                if isinstance(m.shortcut, ConvBN):
                    sc, _ = self.conv(name + ".shortcut", src, shape, m.shortcut.conv, m.shortcut.bn)
                    sources.append(sc)
                else:
                    sources.append(src)          # identity: the input spikes join the input current
            return self.neuron(name + ".n2", sources, out, m.n2), out
        raise AutoSNNError(f"layer {name!r} ({type(m).__name__}) has no NIR equivalent in this exporter")

    def stem(self, src, shape, stem: Stem):
        c, shape = self.conv("stem.conv", src, shape, stem.conv, stem.bn)
        x = self.neuron("stem.n1", [c], shape, stem.n1)
        if stem.kind in ("static64", "event128"):
            x, shape = self.maxpool("stem.pool1", x, shape)
            c, shape = self.conv("stem.cb2", x, shape, stem.cb2.conv, stem.cb2.bn)
            x = self.neuron("stem.n2", [c], shape, stem.n2)
        if stem.kind == "event128":
            x, shape = self.maxpool("stem.pool2", x, shape)
        return x, shape

    def classifier(self, src, shape, fcs, neurons, num_classes):
        """Flatten -> (Linear -> neuron)+ -> Affine group mean -> Output."""
        x = self.add("flatten", self.nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1),
                     src)
        for (fname, fc), (nname, n) in zip(fcs, neurons):
            x = self.add(fname, self.nir.Linear(weight=fc.weight.detach().float().numpy().copy()), x)
            x = self.neuron(nname, [x], (fc.out_features,), n)
        mean = np.kron(np.eye(num_classes, dtype=np.float32), np.full((1, POPULATION), 0.1, np.float32))
        x = self.add("readout", self.nir.Affine(weight=mean, bias=np.zeros(num_classes, np.float32)), x)
        return self.add("output", self.nir.Output(output_type={"output": np.array([num_classes])}), x)


def to_nir(net: nn.Module, dt: float = 1.0, normalisation=None, pooling: str = "sum"):
    """The network as a nir.NIRGraph (module docstring: what each layer becomes).

    net: a child SpikingNetwork (autosnn.py) or a HandcraftedSNN (baselines.py); its BN running
    statistics are used (eval semantics), whatever its mode. dt: the time step the graph's time
    constants are expressed in (tau = dt / k). normalisation: (mean, std) per input channel that the
    images must be normalised with before they are fed, recorded in the metadata (None: none, e.g.
    raw event counts). pooling: 'sum' (nir.SumPool2d / nir.AvgPool2d) or 'conv' (Conv2d windows).
    Raises AutoSNNError, naming the layer, for what NIR cannot represent (the ANN ablation)."""
    if not dt > 0:
        raise AutoSNNError(f"dt must be > 0 (got {dt})")
    if pooling not in ("sum", "conv"):
        raise AutoSNNError(f"pooling must be 'sum' or 'conv' (got {pooling!r})")
    if getattr(net, "neuron", None) == "ann":
        raise AutoSNNError("layer 'stem.n1' is a ReLU (the ANN ablation, neuron='ann'): NIR describes spiking "
                           "networks; export a network trained with neuron plif, lif or if")
    nir = import_nir()
    g = _Graph(nir, dt, pooling)
    shape = tuple(net.input_shape)
    x = g.add("input", nir.Input(input_type={"input": np.array(shape)}))
    x, shape = g.stem(x, shape, net.stem)
    if isinstance(net, SpikingNetwork):
        if net.arch is None:
            raise AutoSNNError("this is the super-network (every candidate at once): export a child network, "
                               "e.g. SpikingNetwork.load(run_folder) or supernet.child(arch)")
        for i, (block, layer) in enumerate(zip(net.layout(net.arch), net.layers)):
            name = f"layers.{i}" if block is None else f"layers.{i}.{block}"
            x, shape = g.block(name, x, shape, layer if block is None else layer[block])
        if net.gap is not None:
            x, shape = g.block("gap", x, shape, net.gap)
        fcs, neurons = [("fc", net.fc)], [("fc_neuron", net.fc_neuron)]
        arch = str(net.arch)
    elif type(net).__name__ == "HandcraftedSNN":
        for i, layer in enumerate(net.layers):
            x, shape = g.block(f"layers.{i}", x, shape, layer)
        fcs = [(f"fcs.{i}", fc) for i, fc in enumerate(net.fcs)]
        neurons = [(f"fc_neurons.{i}", n) for i, n in enumerate(net.fc_neurons)]
        arch = net.name
    else:
        raise AutoSNNError(f"cannot export a {type(net).__name__}: give an AutoSNN child network or a baseline")
    g.classifier(x, shape, fcs, neurons, net.num_classes)
    norm = "none (raw input)" if normalisation is None else json.dumps(
        {"mean": [float(v) for v in normalisation[0]], "std": [float(v) for v in normalisation[1]]})
    metadata = {
        "producer": "AutoSNN reference implementation, export/nir.py",
        "export_version": EXPORT_VERSION, "model_format_version": MODEL_VERSION,
        "architecture": arch, "spec": json.dumps(net.spec()), "T": int(net.T),
        "input_shape": json.dumps(list(net.input_shape)),
        "input": ("events: frame t of [T, 2, H, W] at step t" if net.stem.kind.startswith("event")
                  else "static image: the same normalised image at every one of the T steps"),
        "normalisation": "x = (pixel / 255 - mean) / std per channel: " + norm if normalisation else norm,
        "dt": float(dt),
        "neuron_discretisation": "Euler at dt: v += dt / tau * (v_leak - v + r * I), then spike and reset to v_reset",
        "firing_rule": "this project fires at v >= v_threshold; NIR readers at v > v_threshold",
        "readout": f"class score = sum over the T steps of node 'output' (mean rate of the {POPULATION} "
                   "neurons per class); the prediction is the argmax",
        "maxpool": "SumPool2d(2x2) then LIF with tau = dt, v_threshold = 0.5: max of binary spikes",
    }
    return nir.NIRGraph(nodes=g.nodes, edges=g.edges, metadata=metadata)


def write_nir(net_or_run_dir, path, *, dt: float = 1.0, pooling: str = "sum", log=print):
    """Export a network, or a run folder's retrained network (model.pt; its dataset's normalisation
    from config.json), to the NIR file `path`, written atomically (never half a file)."""
    nir = import_nir()
    path = Path(path)
    if not path.parent.is_dir():
        raise AutoSNNError(f"cannot write {path}: folder {path.parent} does not exist")
    normalisation = None
    if isinstance(net_or_run_dir, nn.Module):
        net = net_or_run_dir
    else:
        run_dir = Path(net_or_run_dir)
        net = load_model(run_dir)
        normalisation = run_normalisation(run_dir)
    graph = to_nir(net, dt=dt, normalisation=normalisation, pooling=pooling)
    buf = io.BytesIO()
    nir.write(buf, graph)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    kinds = sorted({type(n).__name__ for n in graph.nodes.values()})
    log(f"wrote {path}: {len(graph.nodes)} NIR nodes ({', '.join(kinds)}), {len(graph.edges)} edges, "
        f"dt={dt}, T={net.T}; class scores = sum over T of node 'output'")
    return graph


def run_normalisation(run_dir: Path):
    """(mean, std) of the run's dataset from its config.json, or None (event data, unknown dataset)."""
    cfg_path = Path(run_dir) / "config.json"
    try:
        dataset = json.loads(cfg_path.read_text())["run"]["dataset"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    from data import NORMALISATION
    return NORMALISATION.get(dataset)


# ----------------------------------------------------------------------------------------------
# A small independent runner of a NIR graph (NIR's semantics, not this project's modules)
# ----------------------------------------------------------------------------------------------

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


def run_nir(graph, x: torch.Tensor, T: int, fire_at_threshold: bool = False):
    """Run a feed-forward NIR graph one step at a time, float32, from NIR's equations alone.

    x: [B, C, H, W] (fed at every step) or [B, T, C, H, W] (frame t at step t).
    Neurons: Euler at the graph's metadata dt, v += dt / tau * (v_leak - v + r * I) (LIF),
    v += dt * r * I (IF); spike where v > v_threshold (v >= with fire_at_threshold, this project's
    rule); then v = v_reset where it spiked. A node's input is the sum of its sources' outputs.
    Returns (scores [B, K] = the output node summed over T, {neuron node: spikes [T, B, ...]})."""
    nir = import_nir()
    dt = float(graph.metadata.get("dt", 1.0))
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
                y = (v >= th if fire_at_threshold else v > th).float()
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
