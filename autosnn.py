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

Neuron (sec. 3.1), with x[t] the input current, v[-1] = 0, V_th = 1:
    PLIF  v[t] = v'[t-1] + (x[t] - v'[t-1]) * sigmoid(w)     one learnable w per layer, w0 = -ln(tau0 - 1)
    LIF   v[t] = v'[t-1] + (x[t] - v'[t-1]) / tau            fixed tau
    IF    v[t] = v'[t-1] + x[t]
    s[t]  = H(v[t] - V_th)   (H(0) = 1);   v'[t] = v[t] * (1 - s[t])   (hard reset, s detached)
    ds/dv = alpha/2 / (1 + (pi/2 * alpha * (v - V_th))^2)   (ATan surrogate, alpha = 2)
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from search_space import AVG_POOL, MAX_POOL, Arch, Backbone, check_candidate, get_backbone, parse_arch

NEURONS = ("plif", "lif", "if", "ann")
POPULATION = 10   # output neurons per class; their mean rate is the class score ("boost", sec. 3.3)

# Input shapes the network accepts, and the stem each one gets (sec. 2.1). (2, 32, 32) is ours:
# a one-conv event stem for the built-in synthetic-dvs data.
STEMS = {(3, 32, 32): "static", (3, 64, 64): "static64", (2, 128, 128): "event128", (2, 32, 32): "event"}


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


@torch.no_grad()
def _charge_fire_reset(x: torch.Tensor, k, v_th: float) -> torch.Tensor:
    """Run the neuron over T without autograd. x: [T, ...] -> membrane before reset h: [T, ...].

    k is the leak factor (tensor or float) or None for IF. Spikes are h >= v_th.
    """
    if isinstance(k, torch.Tensor):
        k = k.detach().to(x.dtype)
    h = torch.empty_like(x)
    v = torch.zeros_like(x[0])
    for t in range(x.shape[0]):
        if k is None:
            torch.add(v, x[t], out=h[t])
        else:
            torch.lerp(v, x[t], k, out=h[t])                     # lerp: v + k * (x - v)
        v = h[t].masked_fill(h[t] >= v_th, 0.0)                  # hard reset to 0
    return h


class MultiStepNeuron(torch.autograd.Function):
    """The whole T-step neuron as one autograd node: forward, then backward through time in one loop.

    Equivalent to running `Neuron.step` T times under autograd (tested), but without a graph of
    ~6 small ops per step, and working one step at a time so each slice stays in cache. Only the
    input is kept for backward; the membrane trace is recomputed there (cheap, and half the memory).
    x: [T, ...] input current; k: leak factor (0-dim tensor or float) or None (IF). Returns spikes [T, ...].
    Backward, with g = dL/dv[t] and c = dL/dv'[t] carried back from step t+1:
        g = dL/ds[t] * surrogate(v[t] - V_th) + c * (1 - s[t]);  dL/dx[t] = g * k;  c <- g * (1 - k)
        dL/dk = sum_t g * (x[t] - v'[t-1])
    """

    @staticmethod
    def forward(ctx, x, k, v_th, alpha):
        h = _charge_fire_reset(x, k, v_th)
        ctx.save_for_backward(x, k if isinstance(k, torch.Tensor) else None)
        ctx.k, ctx.v_th, ctx.alpha = k, v_th, alpha
        return (h >= v_th).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_s):
        x, k_tensor = ctx.saved_tensors
        k = k_tensor if k_tensor is not None else ctx.k
        k_grad = ctx.needs_input_grad[1]
        v_th, c2 = ctx.v_th, (math.pi / 2 * ctx.alpha) ** 2
        h = _charge_fire_reset(x, k, v_th)
        grad_x, carry, grad_k = torch.empty_like(h), None, []
        for t in reversed(range(h.shape[0])):
            d = h[t] - v_th
            # atan_surrogate(d) * dL/ds, written as grad / (1 + c2 d^2) * alpha/2 to save passes
            g = grad_s[t] / torch.addcmul(torch.ones_like(d), d, d, value=c2)
            if ctx.alpha != 2:
                g.mul_(ctx.alpha / 2)
            if carry is not None:
                g.addcmul_(carry, (d < 0).to(d.dtype))      # reset gate 1 - s[t], s detached
            if k is None:
                grad_x[t], carry = g, g
                continue
            torch.mul(g, k, out=grad_x[t])
            carry = g * (1 - k)
            if k_grad:
                v_prev = h[t - 1].masked_fill(h[t - 1] >= v_th, 0.0) if t > 0 else 0.0
                grad_k.append(torch.dot(g.flatten(), (x[t] - v_prev).flatten()))
        return grad_x, torch.stack(grad_k).sum().reshape(k.shape) if grad_k else None, None, None


class Neuron(nn.Module):
    """A layer of spiking neurons (PLIF default), or ReLU for the ANN ablation. x: [T, B, ...] -> same.

    PLIF has one learnable scalar w per layer: 1/tau = sigmoid(w), w0 = -ln(tau0 - 1) (tau0 = 2 -> w0 = 0).
    """

    def __init__(self, kind: str = "plif", tau0: float = 2.0, v_th: float = 1.0, alpha: float = 2.0):
        super().__init__()
        if kind not in NEURONS:
            raise ValueError(f"unknown neuron {kind!r}; valid: {', '.join(NEURONS)}")
        if kind in ("plif", "lif") and not tau0 > 1:
            raise ValueError(f"tau0 must be > 1 (got {tau0}): the leak 1/tau must lie in (0, 1)")
        self.kind, self.tau0, self.v_th, self.alpha = kind, float(tau0), float(v_th), float(alpha)
        self.tag = "neuron"   # layer name in spike statistics; SpikingNetwork sets the full name
        if kind == "plif":
            self.w = nn.Parameter(torch.tensor(-math.log(tau0 - 1)))

    def leak(self):
        """k in v += (x - v) * k: sigmoid(w) for PLIF, 1/tau0 for LIF, None for IF."""
        if self.kind == "plif":
            return torch.sigmoid(self.w)
        return 1.0 / self.tau0 if self.kind == "lif" else None

    def step(self, x: torch.Tensor, v: torch.Tensor):
        """One time step under plain autograd (the original's form). x, v: [B, ...] -> (s, v')."""
        k = self.leak()
        v = v + x if k is None else v + (x - v) * k
        s = SpikeFn.apply(v - self.v_th, self.alpha)
        return s, v * (1 - s.detach())

    def forward(self, x: torch.Tensor, trace: Trace | None = None) -> torch.Tensor:
        if self.kind == "ann":
            return F.relu(x)
        if trace is not None and trace.membranes is not None:      # one step at a time
            v = trace.membranes.get(self)
            steps = []
            for x_t in x.unbind(0):
                s, v = self.step(x_t, torch.zeros_like(x_t) if v is None else v)
                steps.append(s)
            trace.membranes[self] = v
            s = torch.stack(steps)
        else:
            k = self.leak()
            needs_grad = torch.is_grad_enabled() and (
                x.requires_grad or (isinstance(k, torch.Tensor) and k.requires_grad))
            if needs_grad:
                s = MultiStepNeuron.apply(x, k, self.v_th, self.alpha)
            else:
                s = (_charge_fire_reset(x, k, self.v_th) >= self.v_th).to(x.dtype)
        if trace is not None:
            trace.record(self, s, "neuron")
        return s

    def extra_repr(self):
        return f"{self.kind}, tau0={self.tau0}, v_th={self.v_th}"


# ----------------------------------------------------------------------------------------------
# Spike bookkeeping
# ----------------------------------------------------------------------------------------------

class Trace:
    """Per-forward bookkeeping, passed down explicitly: spike counts per layer, synaptic operations
    per weight layer (when `energy`), and, when running one step at a time, the membrane potentials
    carried between steps. Created by the caller of a forward: modules themselves hold no state."""

    def __init__(self, stepwise: bool = False, counting: bool = True, energy: bool = False):
        self.counting = counting                       # False for the ANN ablation: no spikes to count
        self.energy = energy and counting
        self.counts: dict[str, torch.Tensor] = {}      # layer name -> spikes over batch and T (float64)
        self.kinds: dict[str, str] = {}                # 'neuron' or 'pool' (a pool's spikes counted again)
        self.sizes: dict[str, int] = {}                # units per image per step
        self.sops: dict[str, torch.Tensor] = {}        # weight layer -> synaptic operations over batch and T
        self.macs: dict[str, int] = {}                 # weight layer -> dense MACs per image per step
        self.analog: dict[str, bool] = {}              # True: analog input, MACs once per image (static stem)
        self.membranes = {} if stepwise else None

    def copy(self) -> Trace:
        """An independent continuation (used to branch a shared prefix of several paths)."""
        t = Trace(counting=self.counting, energy=self.energy)
        for k in ("counts", "kinds", "sizes", "sops", "macs", "analog"):
            setattr(t, k, dict(getattr(self, k)))
        return t

    def record(self, module: nn.Module, spikes: torch.Tensor, kind: str) -> None:
        """spikes: [T, B, ...] binary. Counted exactly for any batch: float32 sums per image and step
        stay below 2^24, and their total is taken in float64."""
        if not self.counting:
            return
        name = module.tag
        count = spikes.flatten(2).sum(2).sum(dtype=torch.float64)
        self.counts[name] = self.counts[name] + count if name in self.counts else count
        self.kinds[name], self.sizes[name] = kind, spikes[0, 0].numel()

    def synapse(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor, analog: bool = False) -> None:
        """A weight layer's work. x: its input [T, B, C, H, W] / [T, B, F] (spikes or event counts), y: output.

        Synaptic operations = sum over input positions of (input value) x (outputs it reaches): for a
        conv, out_channels x the true fan-out of that pixel (fewer at padded edges or with stride).
        Dense MACs (what an ANN or the analog first layer pays) = outputs x inputs per output."""
        if not self.energy:
            return
        name = module.tag
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            macs = y.shape[-3] * y.shape[-2] * y.shape[-1] * k
            if not analog:
                spatial = x.flatten(0, -3).sum(0, dtype=torch.float64)          # [H, W] input per pixel
                fan = fanout(module, tuple(x.shape[-2:]), x.device)
                sops = (spatial * fan).sum() * (module.out_channels // module.groups)
        else:                                                                # Linear on [T, B, F]
            macs = module.in_features * module.out_features
            sops = x.sum(dtype=torch.float64) * module.out_features
        if analog:
            sops = torch.zeros((), dtype=torch.float64, device=x.device)
        self.sops[name] = self.sops[name] + sops if name in self.sops else sops
        self.macs[name], self.analog[name] = macs, analog


_FANOUT: dict = {}


def fanout(conv: nn.Conv2d, size: tuple, device) -> torch.Tensor:
    """[H, W] float64: how many output pixels of `conv` each input pixel reaches (padding and stride
    included), computed as a transposed convolution of ones. Cached per geometry."""
    key = (conv.kernel_size, conv.stride, conv.padding, conv.dilation, size, str(device))
    if key not in _FANOUT:
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
    Tensors stay on the device until summary() / energy().

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
    def from_trace(cls, trace: Trace, batch: int, T: int, device) -> SpikeStats:
        def stack(d, names):
            return (torch.stack([d[n] for n in names]) if names
                    else torch.zeros(0, dtype=torch.float64, device=device))
        names, syn = list(trace.counts), list(trace.sops)
        return cls(names, [trace.kinds[n] for n in names], [trace.sizes[n] for n in names],
                   stack(trace.counts, names), batch, T, syn, [trace.macs[n] for n in syn],
                   [trace.analog[n] for n in syn], stack(trace.sops, syn))

    def __add__(self, other: SpikeStats) -> SpikeStats:
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
# Layers and candidate blocks
# ----------------------------------------------------------------------------------------------

def fold(layer, x: torch.Tensor) -> torch.Tensor:
    """Apply a per-image layer to [T, B, ...] by merging T into the batch: [T*B, ...] -> [T, B, ...]."""
    return layer(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class Conv(nn.Conv2d):
    """nn.Conv2d (no bias) on [T, B, C, H, W], time folded into the batch; counts synaptic operations."""

    def __init__(self, cin, cout, k, stride=1, padding=None, analog=False):
        super().__init__(cin, cout, k, stride, k // 2 if padding is None else padding, bias=False)
        self.tag, self.analog = "conv", analog      # analog: its input is an image, not spikes

    def forward(self, x: torch.Tensor, trace: Trace | None = None) -> torch.Tensor:
        y = fold(super().forward, x)
        if trace is not None:
            trace.synapse(self, x, y, self.analog)
        return y


class Linear(nn.Linear):
    """nn.Linear (no bias) on [T, B, F]; counts synaptic operations."""

    def __init__(self, fin, fout):
        super().__init__(fin, fout, bias=False)
        self.tag = "fc"

    def forward(self, x: torch.Tensor, trace: Trace | None = None) -> torch.Tensor:
        y = super().forward(x)
        if trace is not None:
            trace.synapse(self, x, y)
        return y


class TimeBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d over x: [T, B, C, H, W] with separate batch statistics at every time step.

    Equivalent to calling one BatchNorm2d on x[0], x[1], ... in turn (the original runs the net one
    step at a time): in training each step is normalised with its own B-sample statistics and the
    running statistics are updated T times in sequence. Eval uses the running statistics for all steps.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, C, H, W = x.shape
        if not self.training:
            return F.batch_norm(x.flatten(0, 1), self.running_mean, self.running_var,
                                self.weight, self.bias, False, 0.0, self.eps).view_as(x)
        # One call: channel c of step t becomes channel t*C + c of a [B, T*C, H, W] batch. With
        # momentum 1 the two buffers receive each step's batch mean and unbiased variance.
        step_mean, step_var = x.new_zeros(T * C), x.new_ones(T * C)
        y = F.batch_norm(x.transpose(0, 1).reshape(B, T * C, H, W), step_mean, step_var,
                         self.weight.repeat(T), self.bias.repeat(T), True, 1.0, self.eps)
        if not self.track_running_stats:           # (off while a checkpointed block is recomputed)
            return y.view(B, T, C, H, W).transpose(0, 1).contiguous()
        with torch.no_grad():                      # the T running-statistics updates, in order
            for mean, var in zip(step_mean.view(T, C), step_var.view(T, C)):
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked
                self.running_mean.lerp_(mean, m)
                self.running_var.lerp_(var, m)
        return y.view(B, T, C, H, W).transpose(0, 1).contiguous()


class ConvBN(nn.Module):
    """Conv k x k (no bias, 'same' padding) then per-step BN. x: [T, B, Cin, H, W] -> [T, B, Cout, H/s, W/s]."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1):
        super().__init__()
        self.conv = Conv(cin, cout, k, stride)
        self.bn = TimeBatchNorm(cout)

    def forward(self, x, trace=None):
        return self.bn(self.conv(x, trace))


class SCB(nn.Module):
    """Spiking convolution block: conv-BN-neuron-conv-BN-neuron (sec. 2.2)."""

    def __init__(self, cin, cout, k, stride, neuron):
        super().__init__()
        self.cb1, self.n1 = ConvBN(cin, cout, k, stride), neuron()
        self.cb2, self.n2 = ConvBN(cout, cout, k), neuron()

    def forward(self, x, trace):
        return self.n2(self.cb2(self.n1(self.cb1(x, trace), trace), trace), trace)


class SRB(nn.Module):
    """Spiking residual block: as SCB, with the shortcut added to the second BN output, before the
    second neuron (the residual joins the input current, not the spikes). Shortcut: identity, or
    1x1 conv + BN when the shape changes."""

    def __init__(self, cin, cout, k, stride, neuron):
        super().__init__()
        self.cb1, self.n1 = ConvBN(cin, cout, k, stride), neuron()
        self.cb2, self.n2 = ConvBN(cout, cout, k), neuron()
        if not (stride == 1 and cin == cout):
            self.shortcut = ConvBN(cin, cout, 1, stride)

    def forward(self, x, trace):
        residual = self.shortcut(x, trace) if hasattr(self, "shortcut") else x
        return self.n2(self.cb2(self.n1(self.cb1(x, trace), trace), trace) + residual, trace)


class FactorizedReduce(nn.Module):
    """Stride-2 1x1 convs on x and on x shifted by one pixel, concatenated: [.., Cin, H, W] -> [.., Cout, H/2, W/2]."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv_a = Conv(cin, cout // 2, 1, 2)
        self.conv_b = Conv(cin, cout - cout // 2, 1, 2)

    def forward(self, x, trace=None):
        return torch.cat([self.conv_a(x, trace), self.conv_b(x[..., 1:, 1:], trace)], dim=2)


class Skip(nn.Module):
    """skip_connect: identity (0 spikes) when the shape is kept; otherwise 1x1 conv (stride 1) or
    factorized reduce (stride 2), then BN and a neuron."""

    def __init__(self, cin, cout, stride, neuron):
        super().__init__()
        self.identity = stride == 1 and cin == cout
        if not self.identity:
            self.conv = Conv(cin, cout, 1) if stride == 1 else FactorizedReduce(cin, cout)
            self.bn, self.n1 = TimeBatchNorm(cout), neuron()

    def forward(self, x, trace):
        return x if self.identity else self.n1(self.bn(self.conv(x, trace)), trace)


def make_block(name: str, cin: int, cout: int, stride: int, neuron) -> nn.Module:
    """Build a candidate by name: 'skip_connect', 'SCB_k<k>' or 'SRB_k<k>' (any odd k)."""
    check_candidate(name)
    if name == "skip_connect":
        return Skip(cin, cout, stride, neuron)
    family, k = name.split("_k")
    return {"SCB": SCB, "SRB": SRB}[family](cin, cout, int(k), stride, neuron)


class MaxPool(nn.Module):
    """2x2 max-pool, stride 2, no neuron. Its (binary) output is counted again, as the original does."""

    tag = "maxpool"

    def forward(self, x, trace):
        y = fold(lambda z: F.max_pool2d(z, 2), x)
        if trace is not None:
            trace.record(self, y, "pool")
        return y


class AvgPoolNeuron(nn.Module):
    """2x2 avg-pool, stride 2, then a neuron (SNN_4's down-sampling)."""

    def __init__(self, neuron):
        super().__init__()
        self.n1 = neuron()

    def forward(self, x, trace):
        return self.n1(fold(lambda z: F.avg_pool2d(z, 2), x), trace)


class Choice(nn.ModuleDict):
    """A searched position: every candidate in the super-network, only the chosen one in a child."""


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
        self.bn = TimeBatchNorm(C) if kind.startswith("event") else nn.BatchNorm2d(C)
        self.n1 = neuron()
        if kind in ("static64", "event128"):
            self.pool1, self.cb2, self.n2 = MaxPool(), ConvBN(C, C, 3), neuron()
        if kind == "event128":
            self.pool2 = MaxPool()

    def encode(self, x: torch.Tensor, T: int, trace: Trace | None = None) -> torch.Tensor:
        """The input current of the stem neuron: [T, B, C, H, W]. x: [B, 3, H, W] or [B, T, 2, H, W]."""
        if self.kind.startswith("event"):
            return self.bn(self.conv(x.transpose(0, 1), trace))
        current = self.bn(self.conv(x.unsqueeze(0), trace)[0])     # once per image
        return current.expand(T, -1, -1, -1, -1)                   # the same current at every step

    def forward(self, current: torch.Tensor, trace: Trace) -> torch.Tensor:
        s = self.n1(current, trace)
        if self.kind in ("static64", "event128"):
            s = self.n2(self.cb2(self.pool1(s, trace), trace), trace)
        return self.pool2(s, trace) if self.kind == "event128" else s


@contextmanager
def _recomputing(module: nn.Module):
    """While a checkpointed block runs its forward again: batch statistics as before, but no
    running-statistics update (that happened in the first forward)."""
    bns = [m for m in module.modules() if isinstance(m, TimeBatchNorm)]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


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

    def __init__(self, backbone: str | Backbone = "AutoSNN_16", num_classes: int = 10,
                 arch: Arch | str | None = None, T: int = 8, input_shape=(3, 32, 32),
                 neuron: str = "plif", tau0: float = 2.0, v_th: float = 1.0, alpha: float = 2.0,
                 checkpoint: bool = False):
        super().__init__()
        self.checkpoint = checkpoint       # activation checkpointing per block: less memory for large T
        self.backbone = get_backbone(backbone) if isinstance(backbone, str) else backbone
        input_shape = tuple(input_shape)
        if len(input_shape) == 4:         # (T, 2, H, W) as an event dataset reports it
            if input_shape[0] != T:
                raise ValueError(f"event input has {input_shape[0]} frames but the network runs T={T} steps")
            input_shape = input_shape[1:]
        if input_shape not in STEMS:
            raise ValueError(f"unsupported input shape {input_shape}; supported: "
                             f"{', '.join(str(s) for s in STEMS)}")
        if not (isinstance(T, int) and T >= 1):
            raise ValueError(f"T must be an integer >= 1 (got {T!r})")
        if neuron == "ann" and T != 1:
            raise ValueError(f"the ANN ablation runs one step: use T=1 (got T={T})")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (got {num_classes})")
        Neuron(neuron, tau0, v_th, alpha)      # validate the options once, with a clear error
        self.T, self.num_classes, self.input_shape, self.neuron = T, num_classes, input_shape, neuron
        self.neuron_options = {"tau0": tau0, "v_th": v_th, "alpha": alpha}
        self.arch = None if arch is None else parse_arch(arch, self.backbone)

        def make_neuron():
            return Neuron(neuron, tau0, v_th, alpha)

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
        self.gap = make_neuron() if bb.gap else None
        side = 1 if bb.gap else 4
        population = 1 if neuron == "ann" else POPULATION
        self.fc = Linear(cin * side * side, num_classes * population)
        self.fc_neuron = None if neuron == "ann" else make_neuron()
        for name, m in self.named_modules():     # layer names for the spike statistics
            if isinstance(m, (Neuron, MaxPool, Conv, Linear)):
                m.tag = name

    def _path(self, arch) -> Arch:
        if arch is None:
            if self.arch is None:
                raise ValueError("the super-network runs one path per forward: pass arch=...")
            return self.arch
        arch = parse_arch(arch, self.backbone)
        if self.arch is not None and arch != self.arch:
            raise ValueError(f"this child network is {self.arch}, not {arch}")
        return arch

    def check_input(self, x: torch.Tensor) -> None:
        c, h, w = self.input_shape
        want = (self.T, c, h, w) if self.stem.kind.startswith("event") else (c, h, w)
        if x.dim() != len(want) + 1 or tuple(x.shape[1:]) != want:
            raise ValueError(f"input of shape {tuple(x.shape)} does not fit this network: expected "
                             f"[B, {', '.join(map(str, want))}]")

    def layout(self, arch: Arch) -> list:
        """The block name at every backbone position, None at fixed pools: ['SRB_k5', None, ...]."""
        blocks = iter(arch)
        return [next(blocks) if p.kind == "search" else None for p in self.backbone.positions]

    def run_position(self, i: int, x: torch.Tensor, block: str | None, trace: Trace) -> torch.Tensor:
        """Backbone position i with the given block (None at a fixed pool). x: [T, B, C, H, W]."""
        layer = self.layers[i] if block is None else self.layers[i][block]
        if self.checkpoint and self.training and torch.is_grad_enabled() and x.requires_grad:
            # keep only the block's input; recompute its inside during backward, without a
            # second update of its BN running statistics
            return torch.utils.checkpoint.checkpoint(layer, x, trace, use_reentrant=False,
                                                     context_fn=lambda: (nullcontext(), _recomputing(layer)))
        return layer(x, trace)

    def head(self, x: torch.Tensor, trace: Trace) -> torch.Tensor:
        """(Spiking GAP,) classifier and population average. x: [T, B, C, H, W] -> rates [T, B, K]."""
        if self.gap is not None:
            x = self.gap(x.mean(dim=(3, 4), keepdim=True), trace)
        y = self.fc(x.flatten(2), trace)                                  # [T, B, K * population]
        if self.fc_neuron is None:
            return y
        s = self.fc_neuron(y, trace)
        return s.unflatten(2, (self.num_classes, POPULATION)).mean(3)     # the "boost" average

    def body(self, current: torch.Tensor, arch: Arch, trace: Trace) -> torch.Tensor:
        """Everything after the analog stem input. current: [T, B, C, H, W] -> class rates [T, B, K]."""
        x = self.stem(current, trace)
        for i, block in enumerate(self.layout(arch)):
            x = self.run_position(i, x, block, trace)
        return self.head(x, trace)

    def forward(self, x: torch.Tensor, arch: Arch | str | None = None, energy: bool = False):
        """x: [B, 3, H, W] or [B, T, 2, H, W] -> (out [B, K] class rates summed over T, SpikeStats).
        energy=True also counts synaptic operations (SpikeStats.energy())."""
        arch = self._path(arch)
        self.check_input(x)
        trace = Trace(counting=self.neuron != "ann", energy=energy)
        out = self.body(self.stem.encode(x, self.T, trace), arch, trace).sum(0)
        return out, SpikeStats.from_trace(trace, x.shape[0], self.T, x.device)

    def forward_stepwise(self, x: torch.Tensor, arch: Arch | str | None = None, energy: bool = False):
        """The same forward run one time step at a time, neurons under plain autograd: the original
        code's form, kept as the reference for equivalence tests and speed comparisons."""
        arch = self._path(arch)
        self.check_input(x)
        trace = Trace(stepwise=True, counting=self.neuron != "ann", energy=energy)
        current = self.stem.encode(x, self.T, trace)
        out = sum(self.body(c.unsqueeze(0), arch, trace)[0] for c in current.unbind(0))
        return out, SpikeStats.from_trace(trace, x.shape[0], self.T, x.device)

    def path_state_dict(self, arch: Arch | str) -> dict:
        """The super-network's weights of one path, named as in the child network of `arch`."""
        arch = parse_arch(arch, self.backbone)
        drop = tuple(f"layers.{i}.{c}." for i, chosen in zip(self.backbone.searched, arch)
                     for c in self.backbone.candidates if c != chosen)
        return {k: v for k, v in self.state_dict().items() if not k.startswith(drop)}

    def child(self, arch: Arch | str) -> SpikingNetwork:
        """A child network of `arch` holding this super-network's path weights (same device)."""
        net = SpikingNetwork(self.backbone, self.num_classes, arch, self.T, self.input_shape,
                             self.neuron, **self.neuron_options, checkpoint=self.checkpoint)
        net.load_state_dict(self.path_state_dict(arch))
        return net.to(self.fc.weight.device)

    def path_parameters(self, arch: Arch | str):
        """Trainable parameters on one path (all of them for a child)."""
        keep = self.path_state_dict(arch)
        return [p for n, p in self.named_parameters() if n in keep]


def rate_loss(out: torch.Tensor, labels: torch.Tensor, T: int) -> torch.Tensor:
    """MSE between the output rate out/T ([B, K]) and the one-hot labels ([B]) (sec. 3.3)."""
    return F.mse_loss(out / T, F.one_hot(labels, out.shape[1]).to(out.dtype))


def predict(out: torch.Tensor) -> torch.Tensor:
    """Predicted class per image, [B, K] -> [B]; ties go to the lowest class index (argmax's rule)."""
    return out.argmax(dim=1)


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters, PLIF scalars included."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
