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

Neuron (sec. 3.1), with x[t] the input current, v[-1] = 0, V_th = 1:
    PLIF  v[t] = v'[t-1] + (x[t] - v'[t-1]) * sigmoid(w)     one learnable w per layer, w0 = -ln(tau0 - 1)
    LIF   v[t] = v'[t-1] + (x[t] - v'[t-1]) / tau            fixed tau
    IF    v[t] = v'[t-1] + x[t]
    s[t]  = H(v[t] - V_th)   (H(0) = 1);   v'[t] = v[t] * (1 - s[t])   (hard reset, s detached)
    ds/dv = alpha/2 / (1 + (pi/2 * alpha * (v - V_th))^2)   (ATan surrogate, alpha = 2)

The neurons and blocks are plain modules (`forward(x)`); spikes and synaptic operations are
counted by the network, in one place: `Trace` (see its docstring for what is counted).
Mixed precision: under torch.autocast, convolutions and the classifier may run in bf16, while
BatchNorm, membranes and spikes stay float32 (BN and neurons cast their input up).
"""
import functools
import math
import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from files import AutoSNNError, atomic_write
from search_space import AVG_POOL, MAX_POOL, Arch, check_candidate, get_backbone, parse_arch

NEURONS = ("plif", "lif", "if", "ann")
POPULATION = 10   # output neurons per class; their mean rate is the class score ("boost", sec. 3.3)

# Input shapes the network accepts, and the stem each one gets (sec. 2.1). (2, 32, 32) is ours:
# a one-conv event stem for the built-in synthetic-dvs data.
STEMS = {(3, 32, 32): "static", (3, 64, 64): "static64", (2, 128, 128): "event128", (2, 32, 32): "event"}


def _float32_at_least(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 (from autocast) -> float32; float32 and float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# ----------------------------------------------------------------------------------------------
# Spiking neurons
# ----------------------------------------------------------------------------------------------

def atan_surrogate(x: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """ATan surrogate derivative of the Heaviside step: alpha/2 / (1 + (pi/2 * alpha * x)^2)."""
    return (alpha / 2) / (1 + (math.pi / 2 * alpha * x) ** 2)


class SpikeFn(torch.autograd.Function):
    """Heaviside step with H(0) = 1 forward, ATan surrogate gradient backward. x: any shape."""

    @staticmethod
    def forward(ctx, x, alpha):
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * atan_surrogate(x, ctx.alpha), None


def neuron_step(x, v, k, v_th, alpha):
    """One time step of the neuron: charge, fire, hard reset. x, v: [B, ...] -> (spikes s, membrane v').
    k: the leak (0-dim tensor or float), or None for IF. The update is written once, here."""
    v = v + x if k is None else v + (x - v) * k      # this order, not lerp: the original's rounding
    s = SpikeFn.apply(v - v_th, alpha)
    return s, v * (1 - s.detach())


def neuron_loop(x, k, v_th, alpha):
    """neuron_step for t = 0 .. T-1 from v = 0. x: [T, B, ...] input current -> spikes [T, B, ...]."""
    v = torch.zeros_like(x[0])
    spikes = []
    for x_t in x:
        s, v = neuron_step(x_t, v, k, v_th, alpha)
        spikes.append(s)
    return torch.stack(spikes)


@functools.lru_cache(maxsize=None)
def compiled_loop(v_th, alpha):
    """neuron_loop under torch.compile, one compiled function per (v_th, alpha) shared by every layer:
    after the first recompilation its shapes are dynamic, so a whole network compiles in a few graphs."""
    def loop(x, k):
        return neuron_loop(x, k, v_th, alpha)
    return torch.compile(loop)


class Neuron(nn.Module):
    """A layer of spiking neurons (PLIF default), or ReLU for the ANN ablation. x: [T, B, ...] -> same.

    PLIF has one learnable scalar w per layer: 1/tau = sigmoid(w), w0 = -ln(tau0 - 1) (tau0 = 2 -> w0 = 0).
    """

    def __init__(self, kind="plif", tau0=2.0, v_th=1.0, alpha=2.0):
        super().__init__()
        if kind not in NEURONS:
            raise ValueError(f"unknown neuron {kind!r}; valid: {', '.join(NEURONS)}")
        if kind in ("plif", "lif") and not tau0 > 1:
            raise ValueError(f"tau0 must be > 1 (got {tau0}): the leak 1/tau must lie in (0, 1)")
        self.kind, self.tau0, self.v_th, self.alpha = kind, float(tau0), float(v_th), float(alpha)
        if kind == "plif":
            self.w = nn.Parameter(torch.tensor(-math.log(tau0 - 1)))

    def leak(self):
        """k in v += (x - v) * k: sigmoid(w) for PLIF, 1/tau0 for LIF, None for IF."""
        if self.kind == "plif":
            return torch.sigmoid(self.w)
        return 1.0 / self.tau0 if self.kind == "lif" else None

    compiled = False     # set by compile_network: run the shared compiled loop

    def step(self, x, v):
        """One time step: charge, fire, hard reset. x, v: [B, ...] -> (spikes s, membrane after reset v')."""
        return neuron_step(x, v, self.leak(), self.v_th, self.alpha)

    def forward(self, x):
        if self.kind == "ann":
            return F.relu(x)
        x = _float32_at_least(x)                        # the membrane integrates in float32 under autocast
        if not torch.is_grad_enabled():
            return self._no_grad_forward(x)
        if self.compiled:
            return compiled_loop(self.v_th, self.alpha)(x, self.leak())
        # Keep only x (and k) for backward and run the loop again there: the loop's intermediates
        # (x - v, v - V_th, 1 - s at every step) would otherwise triple the neuron's memory.
        return torch.utils.checkpoint.checkpoint(neuron_loop, x, self.leak(), self.v_th, self.alpha,
                                                 use_reentrant=False, preserve_rng_state=False)

    def _no_grad_forward(self, x):
        """The same arithmetic as `step`, in place, for evaluation (no graph to build)."""
        k = self.leak()
        spikes = torch.empty_like(x)
        v = torch.zeros_like(x[0])
        for t in range(x.shape[0]):
            if k is None:
                v += x[t]
            else:
                v += (x[t] - v) * k
            torch.ge(v, self.v_th, out=spikes[t])       # v >= v_th exactly when v - v_th >= 0
            v.masked_fill_(spikes[t].bool(), 0.0)
        return spikes

    def extra_repr(self):
        return f"{self.kind}, tau0={self.tau0}, v_th={self.v_th}"


def neuron_factory(kind="plif", tau0=2.0, v_th=1.0, alpha=2.0):
    """A function that makes a fresh neuron layer with these options (validated now)."""
    Neuron(kind, tau0, v_th, alpha)
    return functools.partial(Neuron, kind, tau0, v_th, alpha)


# ----------------------------------------------------------------------------------------------
# Layers and candidate blocks: plain modules, forward(x) with x: [T, B, C, H, W]
# ----------------------------------------------------------------------------------------------

def fold(layer, x):
    """Apply a per-image layer to [T, B, ...] by merging T into the batch: [T*B, ...] -> [T, B, ...]."""
    return layer(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class Conv(nn.Conv2d):
    """nn.Conv2d (no bias, 'same' padding) on [T, B, C, H, W], time folded into the batch.

    Plain NCHW, as the original: channels_last makes oneDNN pick other kernels whose rounding flips
    spikes of membranes that sit at the threshold (training stopped matching the original)."""

    def __init__(self, cin, cout, k, stride=1, analog=False):
        super().__init__(cin, cout, k, stride, k // 2, bias=False)
        self.analog = analog      # its input is an image, not spikes (energy: MACs, not accumulates)

    def forward(self, x):
        return fold(super().forward, x)


class TimeBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d over x: [T, B, C, H, W] with separate batch statistics at every time step.

    Literally one BatchNorm2d call on each x[t] in turn, as the original (which runs the net one step
    at a time) does: in training each step is normalised with its own B-sample statistics and the
    running statistics are updated T times in sequence. Eval uses the running statistics, in one
    call for all steps. Runs in float32 under autocast (its buffers stay float32).
    """

    nchw = False      # set by compile_network: normalise NCHW-contiguous steps (see there)

    def forward(self, x):
        x = _float32_at_least(x)
        if not self.training:
            return fold(super().forward, x)
        if self.nchw:
            x = x.contiguous()
        return torch.stack([super(TimeBatchNorm, self).forward(x_t) for x_t in x])


class ConvBN(nn.Module):
    """Conv k x k then per-step BN. x: [T, B, Cin, H, W] -> [T, B, Cout, H/s, W/s]."""

    def __init__(self, cin, cout, k, stride=1):
        super().__init__()
        self.conv = Conv(cin, cout, k, stride)
        self.bn = TimeBatchNorm(cout)

    def forward(self, x):
        x = self.conv(x)
        return self.bn(x)


class SCB(nn.Module):
    """Spiking convolution block: conv-BN-neuron-conv-BN-neuron (sec. 2.2). neuron: () -> Neuron."""

    def __init__(self, cin, cout, k, stride, neuron):
        super().__init__()
        self.cb1, self.n1 = ConvBN(cin, cout, k, stride), neuron()
        self.cb2, self.n2 = ConvBN(cout, cout, k), neuron()

    def forward(self, x):
        x = self.cb1(x)
        x = self.n1(x)
        x = self.cb2(x)
        return self.n2(x)


class SRB(nn.Module):
    """Spiking residual block: as SCB, with the shortcut added to the second BN output, before the
    second neuron (the residual joins the input current, not the spikes). Shortcut: identity, or
    1x1 conv + BN when the shape changes."""

    def __init__(self, cin, cout, k, stride, neuron):
        super().__init__()
        self.cb1, self.n1 = ConvBN(cin, cout, k, stride), neuron()
        self.cb2, self.n2 = ConvBN(cout, cout, k), neuron()
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else ConvBN(cin, cout, 1, stride)

    def forward(self, x):
        residual = self.shortcut(x)
        x = self.cb1(x)
        x = self.n1(x)
        x = self.cb2(x)
        return self.n2(x + residual)


class FactorizedReduce(nn.Module):
    """Stride-2 1x1 convs on x and on x shifted by one pixel, concatenated: [.., Cin, H, W] -> [.., Cout, H/2, W/2]."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv_a = Conv(cin, cout // 2, 1, 2)
        self.conv_b = Conv(cin, cout - cout // 2, 1, 2)

    def forward(self, x):
        return torch.cat([self.conv_a(x), self.conv_b(x[..., 1:, 1:])], dim=2)


class Skip(nn.Module):
    """skip_connect: identity (0 spikes) when the shape is kept; otherwise 1x1 conv (stride 1) or
    factorized reduce (stride 2), then BN and a neuron."""

    def __init__(self, cin, cout, stride, neuron):
        super().__init__()
        self.identity = stride == 1 and cin == cout
        if not self.identity:
            self.conv = Conv(cin, cout, 1) if stride == 1 else FactorizedReduce(cin, cout)
            self.bn, self.n1 = TimeBatchNorm(cout), neuron()

    def forward(self, x):
        if self.identity:
            return x
        x = self.conv(x)
        x = self.bn(x)
        return self.n1(x)


def make_block(name: str, cin: int, cout: int, stride: int, neuron) -> nn.Module:
    """Build a candidate by name: 'skip_connect', 'SCB_k<k>' or 'SRB_k<k>' (any odd k)."""
    check_candidate(name)
    if name == "skip_connect":
        return Skip(cin, cout, stride, neuron)
    family, k = name.split("_k")
    return {"SCB": SCB, "SRB": SRB}[family](cin, cout, int(k), stride, neuron)


class MaxPool(nn.Module):
    """2x2 max-pool, stride 2, no neuron. (Its binary output is counted again, as the original does.)"""

    def forward(self, x):
        return fold(lambda z: F.max_pool2d(z, 2), x)


class AvgPoolNeuron(nn.Module):
    """2x2 avg-pool, stride 2, then a neuron (SNN_4's down-sampling)."""

    def __init__(self, neuron):
        super().__init__()
        self.n1 = neuron()

    def forward(self, x):
        x = fold(lambda z: F.avg_pool2d(z, 2), x)
        return self.n1(x)


class GlobalPoolNeuron(nn.Module):
    """Spiking global average pool: [T, B, C, H, W] -> [T, B, C, 1, 1] (SNN_2, a baseline)."""

    def __init__(self, neuron):
        super().__init__()
        self.n1 = neuron()

    def forward(self, x):
        x = x.mean(dim=(3, 4), keepdim=True)
        return self.n1(x)


class Choice(nn.ModuleDict):
    """A searched position: every candidate in the super-network, only the chosen one in a child."""


# ----------------------------------------------------------------------------------------------
# Spike bookkeeping: what is counted, in one place
# ----------------------------------------------------------------------------------------------

class Trace:
    """What one forward counted. The network watches its layers with `recording(trace, module, name)`
    (forward hooks, removed after the call), and `count` below is the whole rule (sec. 3.4):

      - every spiking neuron layer: its output spikes (kind 'neuron');
      - every max-pool: its (binary) output counted again (kind 'pool'), as the original does;
      - with `energy`, every conv / linear layer: synaptic operations and dense MACs (see `synapse`).

    Identity skips count nothing; the ANN ablation (counting=False) counts nothing. Counts are
    detached float64 tensors on the device: no host sync, no autograd. Modules hold no state.
    """

    def __init__(self, counting: bool = True, energy: bool = False):
        self.counting = counting
        self.energy = energy and counting
        self.counts = {}      # layer name -> spikes over batch and T (float64)
        self.kinds = {}       # 'neuron' or 'pool'
        self.sizes = {}       # units per image per step
        self.sops = {}        # weight layer -> synaptic operations over batch and T (float64)
        self.macs = {}        # weight layer -> dense MACs per image per step
        self.analog = {}      # True: analog input, MACs once per image (static stem)

    def copy(self):
        """An independent continuation (used to branch a shared prefix of several paths)."""
        t = Trace(counting=self.counting, energy=self.energy)
        for k in ("counts", "kinds", "sizes", "sops", "macs", "analog"):
            setattr(t, k, dict(getattr(self, k)))
        return t

    @torch.no_grad()
    def count(self, name: str, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        """The counting rule: called after `module` (named `name`) mapped x to y."""
        if not self.counting:
            return
        if isinstance(module, Neuron):
            self.record(name, y, "neuron")
        elif isinstance(module, MaxPool):
            self.record(name, y, "pool")
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and self.energy:
            self.synapse(name, module, x, y)

    def record(self, name: str, spikes: torch.Tensor, kind: str) -> None:
        """spikes: [T, B, ...] binary. Exact for any batch: float32 sums per image and step stay
        below 2^24, and their total is taken in float64."""
        count = spikes.detach().flatten(2).sum(2).sum(dtype=torch.float64)
        self.counts[name] = self.counts[name] + count if name in self.counts else count
        self.kinds[name], self.sizes[name] = kind, spikes[0, 0].numel()

    def synapse(self, name: str, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        """A weight layer's work. x: its input [T, B, C, H, W] / [T, B, F] (spikes or event counts), y: output.

        Synaptic operations = sum over input positions of (input value) x (outputs it reaches): for a
        conv, out_channels x the true fan-out of that pixel (fewer at padded edges or with stride).
        Dense MACs (what an ANN or the analog first layer pays) = outputs x inputs per output.
        Sums run in float32 over at most 2^24 rows of binary spikes (exact), then float64 on [H, W]:
        no activation-sized float64 copy. (Event counts at the DVS stem: exact while a pixel's
        count over the batch stays below 2^24.)"""
        x = x.detach()
        analog = getattr(module, "analog", False)
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            macs = y.shape[-3] * y.shape[-2] * y.shape[-1] * k
            rows = x.flatten(0, -3)                                     # [T*B*C, H, W]
            spatial = sum(part.sum(0, dtype=torch.float32).double() for part in rows.split(2**24))
            fan = fanout(module, tuple(x.shape[-2:]), x.device)
            sops = (spatial * fan).sum() * (module.out_channels // module.groups)
        else:                                                            # Linear on [T, B, F]
            macs = module.in_features * module.out_features
            sops = x.sum(-1, dtype=torch.float32).sum(dtype=torch.float64) * module.out_features
        if analog:
            sops = torch.zeros((), dtype=torch.float64, device=x.device)
        self.sops[name] = self.sops[name] + sops if name in self.sops else sops
        self.macs[name], self.analog[name] = macs, analog


@contextmanager
def recording(trace, module: nn.Module, name: str):
    """While the block runs: count what `module`'s layers emit into `trace` (a no-op for None).
    name: the module's name in the network, the prefix of its layers' names ('layers.0.SRB_k5')."""
    if trace is None:
        yield
        return
    handles = [m.register_forward_hook(functools.partial(_hook, trace, n))
               for n, m in module.named_modules(prefix=name)
               if isinstance(m, (Neuron, MaxPool, nn.Conv2d, nn.Linear))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _hook(trace, name, module, inputs, output):
    trace.count(name, module, inputs[0], output)


_FANOUT = {}


def fanout(conv: nn.Conv2d, size: tuple, device) -> torch.Tensor:
    """[H, W] float64: how many output pixels of `conv` each input pixel reaches (padding and stride
    included), computed as a transposed convolution of ones. Cached per geometry, as ordinary
    tensors even when first asked for under inference_mode (a later training forward uses them)."""
    key = (conv.kernel_size, conv.stride, conv.padding, conv.dilation, size, str(device))
    if key not in _FANOUT:
        with torch.inference_mode(False), torch.no_grad():
            H, W = size
            out = F.conv2d(torch.zeros(1, 1, H, W), torch.zeros(1, 1, *conv.kernel_size), None,
                           conv.stride, conv.padding, conv.dilation).shape[-2:]
            ones = torch.ones(1, 1, *out, dtype=torch.float64)
            fan = F.conv_transpose2d(ones, torch.ones(1, 1, *conv.kernel_size, dtype=torch.float64), None,
                                     conv.stride, conv.padding, dilation=conv.dilation)
            fan = F.pad(fan, (0, W - fan.shape[-1], 0, H - fan.shape[-2]))      # rows/cols no output uses
            _FANOUT[key] = fan[0, 0].to(device)
    return _FANOUT[key]


# 45 nm energy per operation, the figures commonly cited from Horowitz (ISSCC 2014), in pJ
E_AC, E_MAC = 0.9, 4.6


@dataclass
class SpikeStats:
    """Spike counts (and synaptic operations) of one forward, or several added with +.
    Tensors stay on the device until summary() / energy(); they carry no autograd history.

    counts: [L] float64 total spikes per layer over the batch and all T steps, in layer order.
    sops: [W] float64 synaptic operations per weight layer over the batch and all T steps.
    """
    names: list
    kinds: list
    sizes: list
    counts: torch.Tensor
    batch: int
    T: int
    syn_names: list
    macs: list
    analog: list
    sops: torch.Tensor

    @classmethod
    def from_trace(cls, trace: Trace, batch: int, T: int, device) -> "SpikeStats":
        def stack(d, names):
            return (torch.stack([d[n] for n in names]) if names
                    else torch.zeros(0, dtype=torch.float64, device=device))
        names, syn = list(trace.counts), list(trace.sops)
        return cls(names, [trace.kinds[n] for n in names], [trace.sizes[n] for n in names],
                   stack(trace.counts, names), batch, T, syn, [trace.macs[n] for n in syn],
                   [trace.analog[n] for n in syn], stack(trace.sops, syn))
    def __add__(self, other: "SpikeStats") -> "SpikeStats":
        if self.names != other.names or self.syn_names != other.syn_names:
            raise ValueError("cannot add spike statistics of different paths")
        return SpikeStats(self.names, self.kinds, self.sizes, self.counts + other.counts,
                          self.batch + other.batch, self.T, self.syn_names, self.macs, self.analog,
                          self.sops + other.sops)

    @property
    def spikes(self) -> torch.Tensor:
        """Spikes per image summed over T, the paper's count: every neuron, plus max-pool outputs again."""
        return self.counts.sum() / self.batch

    @property
    def neuron_spikes(self) -> torch.Tensor:
        """Spikes per image summed over T, neuron outputs only (no max-pool re-count)."""
        mask = torch.tensor([k == "neuron" for k in self.kinds], device=self.counts.device)
        return self.counts[mask].sum() / self.batch

    def per_layer(self) -> dict:
        """Layer name -> spikes per image summed over T (0-dim tensors)."""
        return dict(zip(self.names, self.counts / self.batch))

    def firing_rates(self) -> dict:
        """Layer name -> mean spikes per unit per time step, in [0, 1]."""
        sizes = torch.tensor(self.sizes, dtype=torch.float64, device=self.counts.device)
        return dict(zip(self.names, self.counts / (self.batch * self.T * sizes)))

    def silent_layers(self) -> list:
        """Names of the layers that emitted no spike at all (one host sync). A silent layer silences
        everything after it: e.g. PLIF after an average pool of spikes at v_th = 1 (see README)."""
        return [n for n, c in zip(self.names, self.counts.tolist()) if c == 0]

    def summary(self) -> dict:
        """Plain Python numbers for logs and JSON (one host sync)."""
        c = self.counts.cpu().tolist()
        return {"spikes": sum(c) / self.batch,
                "neuron_spikes": sum(x for x, k in zip(c, self.kinds) if k == "neuron") / self.batch,
                "per_layer": {n: x / self.batch for n, x in zip(self.names, c)},
                "firing_rate": {n: x / (self.batch * self.T * s) for n, x, s in zip(self.names, c, self.sizes)}}

    def energy(self, e_ac: float = E_AC, e_mac: float = E_MAC) -> dict:
        """An ESTIMATE of inference energy per image (not a measurement): synaptic accumulates at
        e_ac pJ each plus the analog first layer's MACs at e_mac pJ, beside the same network run as
        an ANN (every weight layer's dense MACs once, at e_mac). Needs a forward with energy=True."""
        if not self.syn_names:
            raise ValueError("no synaptic operations recorded: run the forward with energy=True")
        sops = [s / self.batch for s in self.sops.cpu().tolist()]
        first = sum(m for m, a in zip(self.macs, self.analog) if a)
        total = sum(sops)
        per_layer = {n: {"sops": s, "ann_macs": m} for n, s, m in zip(self.syn_names, sops, self.macs)}
        return {"estimate": f"{e_ac} pJ per accumulate, {e_mac} pJ per multiply-accumulate (45 nm)",
                "sops": total, "first_layer_macs": first, "energy_uj": (e_ac * total + e_mac * first) * 1e-6,
                "ann_macs": sum(self.macs), "ann_energy_uj": e_mac * sum(self.macs) * 1e-6,
                "per_layer": per_layer}



# ----------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------

class Stem(nn.Module):
    """Layers before the 8 backbone positions (sec. 2.1, 3.2). Output: [T, B, C, 32, 32] spikes.

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

    def encode(self, x, T, trace=None):
        """The input current of the stem neuron: [T, B, C, H, W]. x: [B, 3, H, W] or [B, T, 2, H, W]."""
        with recording(trace, self, "stem"):
            if self.kind.startswith("event"):
                return self.bn(self.conv(x.transpose(0, 1)))
            current = self.bn(self.conv(x.unsqueeze(0)))            # once per image: [1, B, C, H, W]
            return current.expand(T, -1, -1, -1, -1)                 # the same current at every step

    def forward(self, current, trace=None):
        with recording(trace, self, "stem"):
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


@contextmanager
def one_step_per_call(net: nn.Module):
    """The original code's form, kept as a reference: while active, every neuron layer of `net`
    keeps its membrane between calls and treats each call as one time step (x: [1, B, ...])."""
    neurons = [m for m in net.modules() if isinstance(m, Neuron) and m.kind != "ann"]
    before = [m.__dict__.get("forward") for m in neurons]      # a compiled forward, if any

    def stepper(neuron):
        membrane = []

        def forward(x):
            v = membrane.pop() if membrane else torch.zeros_like(x[0])
            s, v = neuron.step(_float32_at_least(x[0]), v)
            membrane.append(v)
            return s.unsqueeze(0)
        return forward

    for m in neurons:
        m.forward = stepper(m)
    try:
        yield
    finally:
        for m, f in zip(neurons, before):
            del m.forward
            if f is not None:
                m.forward = f


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

    def run_position(self, i: int, x: torch.Tensor, block, trace=None) -> torch.Tensor:
        """Backbone position i with the given block (None at a fixed pool). x: [T, B, C, H, W]."""
        layer = self.layers[i] if block is None else self.layers[i][block]
        name = f"layers.{i}" if block is None else f"layers.{i}.{block}"
        with recording(trace, layer, name):
            if self.checkpoint and self.training and torch.is_grad_enabled() and x.requires_grad:
                # keep only the block's input; recompute its inside during backward (after the
                # recording ended, so nothing is counted twice), without a second update of its BN
                # running statistics; nothing inside a block is random, so no RNG state to restore
                return torch.utils.checkpoint.checkpoint(
                    layer, x, use_reentrant=False, preserve_rng_state=False,
                    context_fn=lambda: (nullcontext(), _recomputing(layer)))
            return layer(x)

    def head(self, x: torch.Tensor, trace=None) -> torch.Tensor:
        """(Spiking GAP,) classifier and population average. x: [T, B, C, H, W] -> rates [T, B, K]."""
        with ExitStack() as watch:
            for name in ("gap", "fc", "fc_neuron"):
                if getattr(self, name) is not None:
                    watch.enter_context(recording(trace, getattr(self, name), name))
            if self.gap is not None:
                x = self.gap(x)
            y = self.fc(x.flatten(2))                                     # [T, B, K * population]
            if self.fc_neuron is None:
                return y
            s = self.fc_neuron(y)
            return s.unflatten(2, (self.num_classes, POPULATION)).mean(3)     # the "boost" average

    def body(self, current: torch.Tensor, arch: Arch, trace=None) -> torch.Tensor:
        """Everything after the analog stem input. current: [T, B, C, H, W] -> class rates [T, B, K]."""
        x = self.stem(current, trace)
        for i, block in enumerate(self.layout(arch)):
            x = self.run_position(i, x, block, trace)
        return self.head(x, trace)

    def forward(self, x: torch.Tensor, arch=None, energy: bool = False):
        """x: [B, 3, H, W] or [B, T, 2, H, W] -> (out [B, K] class rates summed over T, SpikeStats).
        energy=True also counts synaptic operations (SpikeStats.energy())."""
        arch = self._path(arch)
        self.check_input(x)
        trace = Trace(counting=self.neuron != "ann", energy=energy)
        out = self.body(self.stem.encode(x, self.T, trace), arch, trace).sum(0)
        return out, SpikeStats.from_trace(trace, x.shape[0], self.T, x.device)

    def forward_stepwise(self, x: torch.Tensor, arch=None, energy: bool = False):
        """The same forward run one time step at a time, neurons carrying their membrane between
        calls: the original code's form, kept as the reference for equivalence tests and speed."""
        arch = self._path(arch)
        self.check_input(x)
        trace = Trace(counting=self.neuron != "ann", energy=energy)
        current = self.stem.encode(x, self.T, trace)
        with one_step_per_call(self):
            out = sum(self.body(c.unsqueeze(0), arch, trace)[0] for c in current.unbind(0))
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


def rate_loss(out: torch.Tensor, labels: torch.Tensor, T: int) -> torch.Tensor:
    """MSE between the output rate out/T ([B, K]) and the one-hot labels ([B]) (sec. 3.3)."""
    return F.mse_loss(out / T, F.one_hot(labels, out.shape[1]).to(out.dtype))


def predict(out: torch.Tensor) -> torch.Tensor:
    """Predicted class per image, [B, K] -> [B]; ties go to the lowest class index (argmax's rule)."""
    return out.argmax(dim=1)


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters, PLIF scalars included."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------------
# Saved networks and compilation
# ----------------------------------------------------------------------------------------------

MODEL_FORMAT, MODEL_VERSION = "autosnn-model", 1


def build_from_spec(spec: dict) -> nn.Module:
    """A fresh network from net.spec(): {"kind": "autosnn", ...} or {"kind": "baseline", ...}."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind == "autosnn":
        backbone = get_backbone(spec.pop("backbone"), tuple(spec.pop("candidates")))
        return SpikingNetwork(backbone, **spec)
    if kind == "baseline":
        from baselines import HandcraftedSNN          # baselines.py builds on this module
        return HandcraftedSNN(**spec)
    raise AutoSNNError(f"unknown network kind {kind!r} in a saved spec (expected 'autosnn' or 'baseline')")


def save_model(net: nn.Module, path) -> None:
    """Write `net` as a weights-only file: {"format", "version", "spec", "state_dict"}, loadable
    with torch.load(path, weights_only=True) and by SpikingNetwork.load(path)."""
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    doc = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "spec": net.spec(), "state_dict": state}
    atomic_write(path, lambda f: torch.save(doc, f))


def load_model(path, supernet: bool = False, map_location="cpu") -> nn.Module:
    """See SpikingNetwork.load."""
    path = Path(path)
    if path.is_dir():
        path = path / ("supernet_model.pt" if supernet else "model.pt")
    if not path.is_file():
        raise AutoSNNError(f"{path}: no such model file (a run folder holds model.pt after retraining, "
                           "supernet_model.pt after super-network training)")
    try:
        doc = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:                           # any unreadable or foreign file
        raise AutoSNNError(f"{path}: not a readable model file ({type(e).__name__})") from None
    if not (isinstance(doc, dict) and doc.get("format") == MODEL_FORMAT):
        raise AutoSNNError(f"{path}: not an AutoSNN model file (write one with autosnn.save_model)")
    if doc.get("version") != MODEL_VERSION:
        raise AutoSNNError(f"{path}: model file version {doc.get('version')!r}, this code reads {MODEL_VERSION}")
    net = build_from_spec(doc["spec"])
    net.load_state_dict(doc["state_dict"])
    return net.to(map_location).eval()


def compile_network(net: nn.Module, log=print) -> nn.Module:
    """Run every neuron layer of `net` through the compiled loop (`compiled_loop`) in training, in
    place (state_dict keys unchanged). Evaluation keeps the in-place no-grad loop: it is already one
    pass per step, and inductor's C++ build of the no-grad graph took over ten minutes here.

    The neurons' loops over T are where eager mode pays most (many small element-wise ops); convs
    and BN already run as library kernels. Compiling the neuron loop rather than the whole forward
    keeps the super-network usable (its path changes every batch) and the counting hooks outside
    the compiled code; all layers share one compiled function, so the first batches compile a few
    graphs, not one per layer (the caller sees it in its first-step time). The compiled backward
    keeps what the compiler's partitioner chooses, with no activation checkpoint around it.
    Without a working compiler, logs one line and leaves the network eager."""
    neurons = [m for m in net.modules() if isinstance(m, Neuron) and m.kind != "ann"]
    try:
        t = time.perf_counter()
        torch.compile(lambda a: a * 2 + 1)(torch.zeros(2))      # the compiler toolchain works here
        probe = time.perf_counter() - t
    except Exception as e:                                      # no C++ compiler, no triton, ...
        log(f"torch.compile unavailable ({type(e).__name__}: {str(e).splitlines()[0][:120]}): running eager")
        return net
    for m in neurons:
        m.compiled = True
    # The compiled loop's backward returns NCHW-contiguous gradients; BN's backward on CPU was ~5x
    # slower (most of a training step) when those met its channels_last input, so BN gets NCHW too.
    for m in net.modules():
        if isinstance(m, TimeBatchNorm):
            m.nchw = True
    log(f"compiled {len(neurons)} neuron layers with torch.compile (probe {probe:.1f} s; "
        "the first batches of each shape compile, later ones run compiled)")
    return net
