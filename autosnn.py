"""AutoSNN spiking network: neurons, candidate blocks, the super-network/child network, spike counts.

Paper (Na et al., ICML 2022) sections 2-3. Everything runs time-first: activations are
[T, B, C, H, W]. Stateless layers (conv, pooling, linear) fold T into the batch; every neuron
layer runs its own loop over T and keeps no state between calls.

    >>> from search_space import AUTOSNN, parse_arch
    >>> net = SpikingNetwork("AutoSNN_16", num_classes=10, arch=AUTOSNN, T=8)      # child network
    >>> out, stats = net(images)          # images [B,3,32,32] -> out [B,10], class rates summed over T
    >>> loss = rate_loss(out, labels, net.T); stats.spikes   # spikes per image (tensor, no sync)
    >>> supernet = SpikingNetwork("AutoSNN_16", num_classes=10)                     # all candidates
    >>> out, stats = supernet(images, arch=parse_arch("SRB_k5-SRB_k5-skip_connect-SRB_k3-SRB_k5"))
    >>> net.load_state_dict(supernet.path_state_dict(AUTOSNN))                     # one path's weights
    >>> save_model(net, "model.pt"); net = SpikingNetwork.load("model.pt")          # eval mode

Neurons (PLIF, LIF, IF, the surrogate, their loops over T) live in neurons.py, the layers
and candidate blocks (SCB, SRB, skip) in layers.py, spike counting and statistics (Trace, SpikeStats, the energy estimate) in spikes.py; their names
are importable from here too. The blocks are plain modules (`forward(x)`); spikes and synaptic
operations are counted by the network, in one place: spikes.Trace.
Mixed precision: under torch.autocast, convolutions and the classifier may run in bf16, while
BatchNorm, membranes and spikes stay float32 (BN and neurons cast their input up).
"""
import json
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from files import AutoSNNError, atomic_write, python
from layers import (AvgPoolNeuron, Choice, Conv, ConvBN, GlobalPoolNeuron, MaxPool, TimeBatchNorm, make_block,
                    over_time)
from neurons import neuron_factory, one_step_per_call
from search_space import AVG_POOL, MAX_POOL, Arch, get_backbone, parse_arch, resolve_arch
from spikes import Recorder, SpikeStats, Trace


POPULATION = 10   # output neurons per class; their mean rate is the class score ("boost")

# Input shapes the network accepts, and the stem each one gets. (2, 32, 32) is ours:
# a one-conv event stem for the built-in synthetic-dvs data.
STEMS = {(3, 32, 32): "static", (3, 64, 64): "static64", (2, 128, 128): "event128", (2, 32, 32): "event"}


# ----------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------

class Stem(nn.Module):
    """Layers before the 8 backbone positions. Output: [T, B, C, 32, 32] spikes.

    static   (3x32x32):   conv3x3+BN once per image (direct encoding) -> neuron at every step
    static64 (3x64x64):   conv3x3+BN once -> neuron -> max-pool -> conv3x3+BN -> neuron
    event128 (2x128x128): frame t at step t: conv3x3+BN -> neuron -> max-pool -> conv3x3+BN -> neuron -> max-pool
    event    (2xHxW):     frame t at step t: conv3x3+BN -> neuron  (2x32x32: synthetic-dvs; baselines)
    """

    def __init__(self, kind: str, cin: int, C: int, neuron):
        super().__init__()
        self.kind = kind
        self.conv = Conv(cin, C, 3, analog=kind.startswith("static"))
        self.bn = TimeBatchNorm(C)
        self.n1 = neuron()
        if kind in ("static64", "event128"):
            self.pool1, self.cb2, self.n2 = MaxPool(), ConvBN(C, C, 3), neuron()
        if kind == "event128":
            self.pool2 = MaxPool()

    def encode(self, x, T):
        """The input current of the stem neuron: [T, B, C, H, W]. x: [B, 3, H, W] or [B, T, 2, H, W]."""
        if self.kind.startswith("event"):
            return self.bn(self.conv(x.transpose(0, 1)))
        current = self.bn(self.conv(x.unsqueeze(0)))[0]         # once per image: [B, C, H, W]
        if not current.requires_grad:
            return current.expand(T, -1, -1, -1, -1)             # the same current at every step
        # The same, built so that its gradient adds the T steps' gradients from the last step
        # to the first, as autograd does in the original (one tensor fed to T one-step calls):
        # stack adds its slices' gradients in slice order, hence the flip; expand's backward
        # adds them in another order.
        return torch.stack([current] * T).flip(0)

    def forward(self, current):
        s = self.n1(current)
        if self.kind in ("static64", "event128"):
            s = self.n2(self.cb2(self.pool1(s)))
        return self.pool2(s) if self.kind == "event128" else s


def check_input(x: torch.Tensor, T: int, input_shape: tuple, event: bool, what: str = "this network") -> None:
    """Raise AutoSNNError unless x is [B, *input_shape] (static) or [B, T, *input_shape] (event)."""
    want = (T, *input_shape) if event else tuple(input_shape)
    if x.dim() != len(want) + 1 or tuple(x.shape[1:]) != want:
        raise AutoSNNError(f"input of shape {tuple(x.shape)} does not fit {what}: expected "
                           f"[B, {', '.join(map(str, want))}]")


@contextmanager
def _recomputing(module: nn.Module):
    """While a checkpointed block runs its forward again: the same batch statistics, and afterwards
    its BN running statistics as they were (they were updated in the first forward)."""
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [[b.clone() for b in m.buffers()] for m in bns]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, saved in zip(bns, before):
                for b, s in zip(m.buffers(), saved):
                    b.copy_(s)


class SpikingNetwork(nn.Module):
    """AutoSNN network: the super-network when `arch` is None, else the child network of `arch`.

    backbone: a name from search_space (e.g. 'AutoSNN_16', 'SNN_3') or a Backbone.
    input_shape: (3,32,32), (3,64,64), (2,128,128), (2,32,32), or (T,2,H,W) for event data.
    neuron: 'plif' (default), 'lif', 'if', or 'ann' (ReLU, T=1, K plain logits: the ablation).
    checkpoint: recompute each block's activations in backward instead of keeping them (training
    memory for large T, at ~1/3 more compute); same results.
    forward(x, arch=None) -> (out [B, K], SpikeStats); x: [B, 3, H, W] static or [B, T, 2, H, W] events.
    out[b, k] = sum over T of the mean spike of the k-th group of 10 classifier neurons (in [0, T]).
    """

    def __init__(self, backbone="AutoSNN_16", num_classes=10, arch=None, T=8, input_shape=(3, 32, 32),
                 neuron="plif", tau0=2.0, v_th=1.0, alpha=2.0, checkpoint=False):
        super().__init__()
        self.checkpoint = checkpoint       # activation checkpointing per block: less memory for large T
        self.backbone = get_backbone(backbone) if isinstance(backbone, str) else backbone
        input_shape = tuple(input_shape)
        if len(input_shape) == 4:         # (T, 2, H, W) as an event dataset reports it
            if input_shape[0] != T:
                raise AutoSNNError(f"event input has {input_shape[0]} frames but the network runs T={T} steps")
            input_shape = input_shape[1:]
        if input_shape not in STEMS:
            raise AutoSNNError(f"unsupported input shape {input_shape}; supported: "
                               f"{', '.join(str(s) for s in STEMS)}")
        if not (isinstance(T, int) and T >= 1):
            raise AutoSNNError(f"T must be an integer >= 1 (got {T!r})")
        if neuron == "ann" and T != 1:
            raise AutoSNNError(f"the ANN ablation runs one step: use T=1 (got T={T})")
        if num_classes < 1:
            raise AutoSNNError(f"num_classes must be >= 1 (got {num_classes})")
        try:
            make_neuron = neuron_factory(neuron, tau0, v_th, alpha)
        except ValueError as e:
            raise AutoSNNError(str(e)) from None
        self.T, self.num_classes, self.input_shape, self.neuron = T, num_classes, input_shape, neuron
        self.neuron_options = {"tau0": tau0, "v_th": v_th, "alpha": alpha}
        self.arch = None if arch is None else parse_arch(arch, self.backbone)

        bb, C = self.backbone, self.backbone.C
        self.stem = Stem(STEMS[input_shape], input_shape[0], C, make_neuron)
        layers, cin, choices = [], C, iter(self.arch or [])
        for pos in bb.positions:
            if pos.kind == MAX_POOL:
                layers.append(MaxPool())
            elif pos.kind == AVG_POOL:
                layers.append(AvgPoolNeuron(make_neuron))
            else:
                names = [next(choices)] if self.arch else bb.candidates
                layers.append(Choice({n: make_block(n, cin, pos.channels, pos.stride, make_neuron)
                                      for n in names}))
            cin = pos.channels
        self.layers = nn.ModuleList(layers)
        self.gap = GlobalPoolNeuron(make_neuron) if bb.gap else None
        side = 1 if bb.gap else 4
        population = 1 if neuron == "ann" else POPULATION
        self.fc = nn.Linear(cin * side * side, num_classes * population, bias=False)
        self.fc_neuron = None if neuron == "ann" else make_neuron()
        self.recorder = Recorder(self)      # the counting hooks, once: spikes.Trace is the rule

    def _path(self, arch) -> Arch:
        if arch is None:
            if self.arch is None:
                raise AutoSNNError("the super-network runs one path per forward: pass arch=...")
            return self.arch
        arch = parse_arch(arch, self.backbone)
        if self.arch is not None and arch != self.arch:
            raise AutoSNNError(f"this child network is {self.arch}, not {arch}")
        return arch

    def check_input(self, x: torch.Tensor) -> None:
        check_input(x, self.T, self.input_shape, self.stem.kind.startswith("event"))

    def layout(self, arch: Arch) -> list:
        """The block name at every backbone position, None at fixed pools: ['SRB_k5', None, ...]."""
        blocks = iter(arch)
        return [next(blocks) if p.kind == "search" else None for p in self.backbone.positions]

    def run_position(self, i: int, x: torch.Tensor, block) -> torch.Tensor:
        """Backbone position i with the given block (None at a fixed pool). x: [T, B, C, H, W]."""
        layer = self.layers[i] if block is None else self.layers[i][block]
        if self.checkpoint and self.training and torch.is_grad_enabled() and x.requires_grad:
            # keep only the block's input; recompute its inside during backward (after the forward's
            # counting ended, so nothing is counted twice), without a second update of its BN
            # running statistics; nothing inside a block is random, so no RNG state to restore
            return torch.utils.checkpoint.checkpoint(
                layer, x, use_reentrant=False, preserve_rng_state=False,
                context_fn=lambda: (nullcontext(), _recomputing(layer)))
        return layer(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """(Spiking GAP,) classifier and population average. x: [T, B, C, H, W] -> rates [T, B, K]."""
        if self.gap is not None:
            x = self.gap(x)
        y = over_time(self.fc, x.flatten(2), self.fc.weight)          # [T, B, K * population]
        if self.fc_neuron is None:
            return y
        return population_rates(self.fc_neuron(y), self.num_classes)

    def body(self, current: torch.Tensor, arch: Arch) -> torch.Tensor:
        """Everything after the analog stem input. current: [T, B, C, H, W] -> class rates [T, B, K]."""
        x = self.stem(current)
        for i, block in enumerate(self.layout(arch)):
            x = self.run_position(i, x, block)
        return self.head(x)

    def trace(self, energy: bool = False) -> Trace:
        """An empty Trace for one forward of this network (the ANN ablation counts nothing)."""
        return Trace(counting=self.neuron != "ann", energy=energy, fanouts=self.recorder.fanouts)

    def forward(self, x: torch.Tensor, arch=None, energy: bool = False):
        """x: [B, 3, H, W] or [B, T, 2, H, W] -> (out [B, K] class rates summed over T, SpikeStats).
        energy=True also counts synaptic operations (SpikeStats.energy())."""
        arch = self._path(arch)
        self.check_input(x)
        trace = self.trace(energy)
        with self.recorder.active(trace):
            out = sum_over_steps(self.body(self.stem.encode(x, self.T), arch))
        return out, SpikeStats.from_trace(trace, x.shape[0], self.T, x.device)

    def forward_stepwise(self, x: torch.Tensor, arch=None, energy: bool = False):
        """The same forward run one time step at a time, neurons carrying their membrane between
        calls: the original code's form, kept as the reference for equivalence tests and speed."""
        arch = self._path(arch)
        self.check_input(x)
        trace = self.trace(energy)
        with self.recorder.active(trace), one_step_per_call(self):
            current = self.stem.encode(x, self.T)
            out = sum(self.body(c.unsqueeze(0), arch)[0] for c in current.unbind(0))
        return out, SpikeStats.from_trace(trace, x.shape[0], self.T, x.device)

    def path_state_dict(self, arch) -> dict:
        """The super-network's weights of one path, named as in the child network of `arch`."""
        arch = parse_arch(arch, self.backbone)
        drop = tuple(f"layers.{i}.{c}." for i, chosen in zip(self.backbone.searched, arch)
                     for c in self.backbone.candidates if c != chosen)
        return {k: v for k, v in self.state_dict().items() if not k.startswith(drop)}

    def child(self, arch) -> "SpikingNetwork":
        """A child network of `arch` holding this super-network's path weights (same device)."""
        net = build_from_spec({**self.spec(), "arch": str(parse_arch(arch, self.backbone))})
        net.checkpoint = self.checkpoint
        net.load_state_dict(self.path_state_dict(arch))
        return net.to(self.fc.weight.device)

    def path_parameters(self, arch):
        """Trainable parameters on one path (all of them for a child)."""
        keep = self.path_state_dict(arch)
        return [p for n, p in self.named_parameters() if n in keep]

    def spec(self) -> dict:
        """Everything needed to rebuild this network (JSON-able): see build_from_spec."""
        return {"kind": "autosnn", "backbone": self.backbone.name, "candidates": list(self.backbone.candidates),
                "num_classes": self.num_classes, "arch": None if self.arch is None else str(self.arch),
                "T": self.T, "input_shape": list(self.input_shape), "neuron": self.neuron, **self.neuron_options}

    @classmethod
    def load(cls, path, supernet: bool = False, map_location="cpu") -> nn.Module:
        """A saved network, in eval mode. path: a model file (save_model) or a run folder, where
        model.pt holds the retrained network and supernet_model.pt (supernet=True) the super-network.
            net = SpikingNetwork.load("runs/X"); out, stats = net(images)"""
        return load_model(path, supernet, map_location)


def population_rates(s: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The classifier's output: spikes s [T, B, K * POPULATION] -> class rates [T, B, K], the mean
    over each class's group of POPULATION neurons (the "boost" average)."""
    return s.unflatten(2, (num_classes, POPULATION)).mean(3)


def sum_over_steps(rates: torch.Tensor) -> torch.Tensor:
    """Class rates [T, B, K] -> out [B, K], added in step order, rates[0] + rates[1] + ..., as the
    original adds every step to its counter; rates.sum(0) adds them in another order, and its last
    bit can differ (then the loss and its gradients do too)."""
    out = rates[0]
    for r in rates[1:]:
        out = out + r
    return out


def rate_loss(out: torch.Tensor, labels: torch.Tensor, T: int) -> torch.Tensor:
    """MSE between the output rate out/T ([B, K]) and the one-hot labels ([B])."""
    return F.mse_loss(out / T, F.one_hot(labels, out.shape[1]).to(out.dtype))


def predict(out: torch.Tensor) -> torch.Tensor:
    """Predicted class per image, [B, K] -> [B]; ties go to the lowest class index (argmax's rule)."""
    return out.argmax(dim=1)


def count_parameters(module: nn.Module, taus: bool = True) -> int:
    """Trainable parameters. taus=False leaves out the PLIF scalars w (one per neuron layer), as the
    original's parameter counts (thop: conv, BN and linear weights only) do."""
    return sum(p.numel() for n, p in module.named_parameters() if p.requires_grad and (taus or not n.endswith(".w")))


# ----------------------------------------------------------------------------------------------
# Saved networks
# ----------------------------------------------------------------------------------------------

MODEL_FORMAT, MODEL_VERSION = "autosnn-model", 1


def build_from_spec(spec: dict) -> "SpikingNetwork":
    """A fresh AutoSNN network from net.spec() ({"kind": "autosnn", ...})."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind == "baseline":
        raise AutoSNNError(f"{spec.get('name', 'this network')} is a hand-crafted baseline: "
                           "load it with baselines.load_model")
    if kind != "autosnn":
        raise AutoSNNError(f"unknown network kind {kind!r} in a saved spec (expected 'autosnn')")
    backbone = get_backbone(spec.pop("backbone"), tuple(spec.pop("candidates")))
    return SpikingNetwork(backbone, **spec)


def save_model(net: nn.Module, path, run_id: str | None = None) -> None:
    """Write `net` as a weights-only file: {"format", "version", "spec", "state_dict", "run_id"}, loadable
    with torch.load(path, weights_only=True) and by SpikingNetwork.load(path) (baselines.load_model
    for a hand-crafted baseline). run_id: the run folder's (its config.json), None for a file of its own."""
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    doc = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "spec": net.spec(), "state_dict": state,
           "run_id": run_id}
    atomic_write(path, lambda f: torch.save(doc, f))


def read_model_file(path, supernet: bool = False, map_location="cpu") -> tuple:
    """(file path, {"spec", "state_dict", ...}) of a model file written by save_model, checked.
    path: the file, or a run folder (model.pt, or supernet_model.pt with supernet=True); from a run
    folder the file must be that run's network (check_run_model)."""
    path, folder = Path(path), None
    if path.is_dir():
        folder, path = path, path / ("supernet_model.pt" if supernet else "model.pt")
    if not path.is_file():
        raise AutoSNNError(f"{path}: no such model file (a run folder holds model.pt after retraining, "
                           "supernet_model.pt after super-network training)")
    try:
        doc = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:                           # any unreadable or foreign file
        raise AutoSNNError(f"{path}: not a readable model file ({type(e).__name__})") from None
    if not (isinstance(doc, dict) and doc.get("format") == MODEL_FORMAT):
        raise AutoSNNError(f"{path}: not an AutoSNN model file (write one with autosnn.save_model)")
    if doc.get("version") != MODEL_VERSION or not isinstance(doc.get("spec"), dict):
        raise AutoSNNError(f"{path}: made by an older version of this code; rerun")
    if folder is not None and (folder / "config.json").is_file():
        check_run_model(folder, path, doc)
    return path, doc


def check_run_model(folder: Path, path: Path, doc: dict) -> None:
    """The model file `path` (doc: its content) of the run folder `folder` is that run's network: the
    run id of config.json, its backbone and T, and the architecture best_arch.txt (else the
    configuration's --arch) names. One line naming both files otherwise."""
    cfg_path, spec = folder / "config.json", doc["spec"]
    try:
        cfg = json.loads(cfg_path.read_text())
        run = cfg["run"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise AutoSNNError(f"{cfg_path} is damaged or not a run configuration ({type(e).__name__}); "
                           f"{python()} train.py --resume {folder} rebuilds it from the checkpoints") from None
    if "run_id" not in cfg:
        raise AutoSNNError(f"{cfg_path} was made by an older version of this project (it records no run id); rerun")
    if doc.get("run_id") != cfg["run_id"]:
        raise AutoSNNError(f"{path} is not the network of the run in {folder}: it comes from run "
                           f"{doc.get('run_id')}, {cfg_path} from run {cfg['run_id']}; load the file by its own "
                           f"path, or retrain")
    want = {"T": run.get("T")}
    if spec.get("kind") == "autosnn":
        want["backbone"] = run.get("backbone")
        if spec.get("arch") is not None:
            want["arch"], cfg_path = run_arch(folder, cfg)
    for key, value in want.items():
        if value is not None and spec.get(key) != value:
            raise AutoSNNError(f"{path} holds a network of {key} {spec.get(key)}, while {cfg_path} says {value}: "
                               f"the files of {folder} disagree; retrain, or load the file by its own path")


def run_arch(folder: Path, cfg: dict) -> tuple:
    """(the architecture string a run folder retrains, the file that says so): best_arch.txt (written by
    the search), else config.json's --arch; (None, None) when neither names one."""
    best = Path(folder) / "best_arch.txt"
    if best.is_file():
        try:
            return str(parse_arch(best.read_bytes().decode("utf-8").strip())), best
        except (UnicodeDecodeError, AutoSNNError, OSError) as e:
            why = "not text" if isinstance(e, UnicodeDecodeError) else str(e)[:120]
            raise AutoSNNError(f"{best}: {why}; the file is damaged: delete it ({python()} train.py --resume {folder} "
                               f"writes it again; runs.py export takes the search's choice)") from None
    arch = (cfg.get("retrain") or {}).get("arch")
    if not arch:
        return None, None
    return str(resolve_arch(arch, (cfg.get("run") or {}).get("backbone"))), Path(folder) / "config.json"


def load_weights(net: nn.Module, state: dict, path) -> nn.Module:
    """net.load_state_dict(state), with one line naming `path` when the weights do not fit the spec or
    are not finite (a diverged network, or a damaged file)."""
    if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise AutoSNNError(f"{path}: the weights are not a state dict of tensors; the file is damaged")
    bad = next((k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())), None)
    if bad is not None:
        raise AutoSNNError(f"{path}: the weights are not finite (first: {bad}); the network diverged or the "
                           f"file is damaged")
    try:
        net.load_state_dict(state)
    except (RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()
        raise AutoSNNError(f"{path}: the weights do not fit the network the file describes "
                           f"({first[-1].strip()[:160] if first else type(e).__name__})") from None
    return net


def load_model(path, supernet: bool = False, map_location="cpu") -> "SpikingNetwork":
    """See SpikingNetwork.load."""
    path, doc = read_model_file(path, supernet, map_location)
    spec = doc["spec"]
    if spec.get("kind") == "autosnn" and (spec.get("arch") is None) != supernet:
        raise AutoSNNError(f"{path} holds " + ("the super-network: load it with SpikingNetwork.load(path, "
                                               "supernet=True)" if not supernet else
                                               "a child network, not the super-network: load it without "
                                               "supernet=True"))
    try:
        net = build_from_spec(spec)
    except TypeError as e:                           # a spec with unknown or missing fields
        raise AutoSNNError(f"{path}: the network spec does not fit this code ({e}); rerun") from None
    except AutoSNNError as e:
        raise AutoSNNError(f"{path}: {e}") from None
    return load_weights(net, doc["state_dict"], path).to(map_location).eval()
