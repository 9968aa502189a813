"""Export a trained AutoSNN child network (or a hand-crafted baseline) to NIR, the Neuromorphic
Intermediate Representation read by simulators (Norse, snnTorch, spikingjelly, ...) and neuromorphic
toolchains. Needs the `nir` package (pip install nir), imported lazily. Readers, their time steps and
what differs: docs/nir.md.

    python3 runs.py export runs/X --nir net.nir                     # any reader that fires at v > v_th, dt = 1
    python3 runs.py export runs/X --nir net.nir --reader snntorch   # the dt and threshold snnTorch needs
    >>> from export.nir import to_nir, write_nir
    >>> from export.nir_runner import run_nir
    >>> graph = to_nir(net, reader="spikingjelly")   # nir.NIRGraph; net: SpikingNetwork child or HandcraftedSNN
    >>> write_nir("runs/X", "net.nir")       # run folder (model.pt) or a network -> file, written atomically
    >>> scores, spikes = run_nir(graph, images, T=4)   # the project's own small runner of a graph

What each part of the network becomes (node names are the network's module names):
  conv + eval BN   nir.Conv2d with bias, BN folded in: with s = gamma / sqrt(var + eps),
                   W' = W * s (per output channel),  b' = beta - mean * s.
  PLIF / LIF       nir.LIF, tau = dt / k with k = sigmoid(w) (PLIF) or 1 / tau0 (LIF) (float64, so a
                   reader that computes dt / tau in double precision gets k back), r = 1, v_leak = 0,
                   v_reset = 0. The network's update v += (x - v) * k is exactly the Euler step of NIR's
                   tau dv/dt = (v_leak - v) + r I at step dt.
  IF               nir.IF, r = 1 / dt (v += dt * r * I = I).
  threshold        this project spikes where v >= v_th (float32 v); NIR readers mostly where v > v_threshold.
                   v_threshold is written as the float32 just below v_th, nextafter(float32(v_th), -inf):
                   no float32 lies between the two, so v > it exactly when v >= v_th, and such a reader
                   gives this project's spikes even for a membrane exactly on v_th (binary leaks make
                   that common). For a reader that spikes at v >= v_threshold (spikingjelly) it is v_th.
  max-pool 2x2     nir.SumPool2d(2, 2) -> nir.LIF with tau = 2 dt, r = 1, v_threshold = 0.25 (node
                   '<name>' is the LIF, '<name>.sum' the pool). On binary spikes max = "at least one
                   spike": the window sum S is an integer, and from v = 0 the LIF reaches v = S / 2, so
                   it fires exactly when S >= 1 and returns to 0 (reset, or S = 0): memoryless, with
                   0.25 far from every value v takes. tau = 2 dt, not dt: spikingjelly 2.0.0 needs
                   tau > dt. Not nir.Threshold: Norse's and snnTorch's readers and most chips map
                   neuron nodes only.
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
resp. 1/(kh*kw)), for readers and chips without pooling nodes.
The readout: class score = sum over the T steps of node 'output'. The graph's metadata says so, with
the architecture, T, input shape and normalisation, dt, the reader the file is for, the spike
condition and what can differ (BN folding rounds currents).
"""
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from autosnn import MODEL_VERSION, POPULATION, SpikingNetwork, Stem, load_model
from files import AutoSNNError, atomic_write
from layers import SCB, SRB, AvgPoolNeuron, ConvBN, FactorizedReduce, GlobalPoolNeuron, MaxPool, Skip
from neurons import Neuron

EXPORT_VERSION = 2     # of this exporter's graph layout and metadata


@dataclass(frozen=True)
class Reader:
    """What one NIR reader assumes (read in its source and measured: docs/nir.md).
    dt: the time step it simulates at (its fixed value, or the one its loader is given in `load`).
    fires_at_threshold: it spikes where v >= v_threshold (as this project); False: where v > v_threshold.
    load: the call that loads a file `graph` right (tools/golden_nir.py evaluates it).
    runs_if: whether it runs nir.IF nodes as integrate-and-fire neurons."""
    version: str
    dt: float
    fires_at_threshold: bool
    load: str
    runs_if: bool = True


READERS = {
    # not norse.torch.from_nir: it goes through the deprecated nirtorch.load, which does not run
    # these graphs right (docs/nir.md); Norse's node mapping under nir_to_torch instead. Its dt is an
    # argument (default 1e-3): at dt = 1 it computes every leak, dt * (1 / tau), exactly as this
    # project; at 1e-3 many PLIF leaks come out one float32 step off.
    "norse": Reader("norse 1.1.0, nirtorch 2.6", 1.0, False,
                    "nirtorch.nir_to_torch(graph, {t: functools.partial(norse.torch.utils.import_nir."
                    "_import_norse_module, dt=1.0) for t in (nir.LIF, nir.IF, nir.Conv2d, nir.SumPool2d, "
                    "nir.Affine, nir.Linear, nir.Flatten)})"),
    # snnTorch fixes dt = 1e-4, and maps nir.IF to a leaky neuron (beta 0.9) that needs r = 1
    "snntorch": Reader("snntorch 1.0.0", 1e-4, False, "snntorch.import_nir.import_from_nir(graph)",
                       runs_if=False),
    # import_from_nir's dt defaults to 1e-4; its neurons spike where v - v_threshold >= 0
    "spikingjelly": Reader("spikingjelly 2.0.0", 1e-4, True,
                           "spikingjelly.activation_based.nir_exchange.import_from_nir(graph)"),
}

FIRING_RULE = {
    False: "the network spikes where v >= v_th (float32 membrane); v_threshold is the float32 just below "
           "v_th (numpy.nextafter(float32(v_th), -inf)), so a reader that spikes where v > v_threshold "
           "gives the same spikes, also for a membrane exactly on v_th",
    True: "the network spikes where v >= v_th (float32 membrane); v_threshold = v_th, for a reader that "
          "spikes where v >= v_threshold",
}
DIFFERENCES = ("BN is folded into the conv weights and biases (float64, rounded to float32): a conv's output "
               "moves by up to a few 1e-6, which flips a spike only where a membrane lies that close to the "
               "threshold; readers that compute the leak otherwise (snnTorch scales the membrane by tau/dt, "
               "spikingjelly divides by tau) round differently there too. Measured in Norse 1.1, snnTorch 1.0 "
               "and spikingjelly 2.0.0: at most 108 of 22,312,000 neuron outputs (0.0005%) and no prediction "
               "on 250 images (docs/nir.md)")


def threshold(v_th: float, fires_at_threshold: bool = False) -> np.float32:
    """The v_threshold that makes a reader spike where this project does, at v >= float32(v_th).
    For a reader that spikes at v > v_threshold: the float32 just below v_th (no float32 lies between
    them, so for every float32 v, v > nextafter(v_th, -inf) exactly when v >= v_th)."""
    t = np.float32(v_th)
    return t if fires_at_threshold else np.nextafter(t, np.float32(-np.inf))


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

    def __init__(self, nir, dt: float, pooling: str, reader: str | None):
        self.nir, self.dt, self.pooling, self.reader = nir, float(dt), pooling, reader
        self.at_threshold = reader is not None and READERS[reader].fires_at_threshold
        self.nodes, self.edges = {}, []

    def add(self, name, node, *sources):
        self.nodes[name] = node
        self.edges += [(s, name) for s in sources]
        return name

    def lif(self, shape, tau: float, v_threshold):
        """An nir.LIF [shape] with r = 1, v_leak = v_reset = 0; tau in float64 (module docstring)."""
        f32 = lambda v: np.full(shape, v, dtype=np.float32)
        return self.nir.LIF(tau=np.full(shape, tau, dtype=np.float64), r=f32(1.0), v_leak=f32(0.0),
                            v_threshold=f32(v_threshold), v_reset=f32(0.0))

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
        th = threshold(neuron.v_th, self.at_threshold)
        k = neuron.leak()
        if k is None:
            if self.reader is not None and not READERS[self.reader].runs_if:
                raise AutoSNNError(f"layer {name!r} is an IF neuron, which {READERS[self.reader].version} "
                                   f"does not run (it maps nir.IF to a leaky neuron, beta 0.9, and wants r = 1): "
                                   f"export for norse or spikingjelly")
            full = lambda v: np.full(shape, v, dtype=np.float32)
            node = self.nir.IF(r=full(1.0 / self.dt), v_threshold=full(th), v_reset=full(0.0))
        else:
            # k as the network computes with it: a float32 (PLIF's sigmoid, LIF's 1 / tau0 rounded)
            node = self.lif(shape, self.dt / float(torch.as_tensor(k, dtype=torch.float32).detach()), th)
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
        """Max-pool of binary spikes = sum-pool, then a memoryless LIF (tau = 2 dt, threshold 0.25:
        module docstring)."""
        pool, out = self.window(name + ".sum", src, shape, (2, 2), average=False)
        return self.add(name, self.lif(out, 2 * self.dt, 0.25), pool), out

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


def to_nir(net: nn.Module, dt: float | None = None, normalisation=None, pooling: str = "sum",
           reader: str | None = None):
    """The network as a nir.NIRGraph (module docstring: what each layer becomes).

    net: a child SpikingNetwork (autosnn.py) or a HandcraftedSNN (baselines.py); its BN running
    statistics are used (eval semantics), whatever its mode. reader: None (any reader that spikes at
    v > v_threshold and takes the metadata's dt) or a key of READERS: the file gets that reader's dt
    and threshold. dt: the time step the graph's time constants are expressed in (tau = dt / k);
    default the reader's, else 1. normalisation: (mean, std) per input channel that the images must
    be normalised with before they are fed, recorded in the metadata (None: none, e.g. raw event
    counts). pooling: 'sum' (nir.SumPool2d / nir.AvgPool2d) or 'conv' (Conv2d windows).
    Raises AutoSNNError, naming the layer, for what NIR or the reader cannot run (the ANN ablation;
    IF neurons in snnTorch)."""
    if reader is not None and reader not in READERS:
        raise AutoSNNError(f"unknown reader {reader!r}; choose one of: {', '.join(READERS)}")
    if dt is None:
        dt = READERS[reader].dt if reader is not None else 1.0
    elif reader is not None and dt != READERS[reader].dt:
        raise AutoSNNError(f"{READERS[reader].version} simulates at dt = {READERS[reader].dt:g}, not {dt:g}: "
                           f"leave dt out with reader {reader!r}")
    if not (math.isfinite(dt) and dt > 0):
        raise AutoSNNError(f"dt must be a finite number > 0 (got {dt})")
    if pooling not in ("sum", "conv"):
        raise AutoSNNError(f"pooling must be 'sum' or 'conv' (got {pooling!r})")
    if getattr(net, "neuron", None) == "ann":
        raise AutoSNNError("layer 'stem.n1' is a ReLU (the ANN ablation, neuron='ann'): NIR describes spiking "
                           "networks; export a network trained with neuron plif, lif or if")
    nir = import_nir()
    g = _Graph(nir, dt, pooling, reader)
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
        "reader": ("any NIR reader that spikes at v > v_threshold, at the dt above" if reader is None else
                   f"{READERS[reader].version}: {READERS[reader].load}"),
        "neuron_discretisation": "Euler at dt: v += dt / tau * (v_leak - v + r * I), then spike and reset to v_reset",
        "spike_condition": "v >= v_threshold" if g.at_threshold else "v > v_threshold",
        "firing_rule": FIRING_RULE[g.at_threshold],
        "differences": DIFFERENCES,
        "readout": f"class score = sum over the T steps of node 'output' (mean rate of the {POPULATION} "
                   "neurons per class); the prediction is the argmax",
        "maxpool": "SumPool2d(2x2) then LIF with tau = 2 dt, r = 1, v_threshold = 0.25: v = window sum / 2, "
                   "so it spikes where the window holds a spike (max of binary spikes) and stays memoryless",
    }
    return nir.NIRGraph(nodes=g.nodes, edges=g.edges, metadata=metadata)


def write_nir(net_or_run_dir, path, *, dt: float | None = None, pooling: str = "sum", reader: str | None = None,
              target: str | None = None, log=print):
    """Export a network, or a run folder's retrained network (model.pt; its dataset's normalisation
    from config.json), to the NIR file `path`, written atomically (never half a file). dt, pooling,
    reader: as to_nir. target: a chip whose toolchain's rules the graph must pass first (TARGETS)."""
    nir = import_nir()
    path = Path(path)
    if path.is_dir():
        raise AutoSNNError(f"cannot write {path}: it is a folder; give a file name such as {path / 'net.nir'}")
    if not path.parent.is_dir():
        raise AutoSNNError(f"cannot write {path}: folder {path.parent} does not exist")
    normalisation = None
    if isinstance(net_or_run_dir, nn.Module):
        net = net_or_run_dir
    else:
        run_dir = Path(net_or_run_dir)
        net = load_model(run_dir)
        normalisation = run_normalisation(run_dir)
    graph = to_nir(net, dt=dt, normalisation=normalisation, pooling=pooling, reader=reader)
    if target is not None:
        check_target(graph, target)
    buf = io.BytesIO()
    nir.write(buf, graph)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    kinds = sorted({type(n).__name__ for n in graph.nodes.values()})
    log(f"wrote {path}: {len(graph.nodes)} NIR nodes ({', '.join(kinds)}), {len(graph.edges)} edges, "
        f"dt={graph.metadata['dt']:g}, T={net.T}, for {READERS[reader].version if reader else 'any NIR reader'}"
        f" (spikes at {graph.metadata['spike_condition']}); class scores = sum over T of node 'output'")
    return graph


# A chip's toolchain maps a graph only in the shapes it knows. DynapCNN (as sinabs 3.1.3 maps a
# network onto it: sinabs/backend/dynapcnn/connectivity_specs.py): integrate-and-fire neurons only,
# a neuron layer fed by exactly one weight layer (conv or linear), pooling only after a neuron layer.
TARGETS = ("dynapcnn",)


def check_target(graph, target: str) -> None:
    """Refuse, in one line naming the layers, a graph that `target` cannot run (what TARGETS' comment
    says). The readout (Affine 'readout' -> Output) is left to the host: it is not checked."""
    nir = import_nir()
    if target not in TARGETS:
        raise AutoSNNError(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}")
    sources = {n: [a for a, b in graph.edges if b == n] for n in graph.nodes}
    weight = (nir.Conv2d, nir.Linear, nir.Affine)
    leaky, joins, pooled = [], [], []
    for name, node in graph.nodes.items():
        if not isinstance(node, (nir.LIF, nir.IF)):
            continue
        if len(sources[name]) > 1:
            joins.append(name)
        elif not isinstance(graph.nodes[sources[name][0]], weight):
            pooled.append(name)                      # the max-pool's neuron, or avg-pool + neuron
        elif isinstance(node, nir.LIF):
            leaky.append(name)
    problems = [f"{what} ({_few(names)}): {why}" for what, why, names in (
        ("leaky neurons", "its neurons integrate and fire without a leak (train with --neuron if)", leaky),
        ("residual joins", "a neuron layer takes one conv's output, not a sum of two (no SRB blocks)", joins),
        ("neurons after a pooling layer", "it pools after a neuron layer only (max-pool, avg-pool and "
         "global-pool blocks have no form there)", pooled)) if names]
    if problems:
        raise AutoSNNError(f"{target} cannot run this network: " + "; ".join(problems))


def _few(names: list) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def run_normalisation(run_dir: Path):
    """(mean, std) of the run's dataset from its config.json, or None (event data, unknown dataset)."""
    cfg_path = Path(run_dir) / "config.json"
    try:
        dataset = json.loads(cfg_path.read_text())["run"]["dataset"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    from data import NORMALISATION
    return NORMALISATION.get(dataset)
