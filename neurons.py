"""Spiking neurons of AutoSNN (Na et al., ICML 2022): the update, its loops over T, the layer.

With x[t] the input current, v[-1] = 0, V_th = 1:
    PLIF  v[t] = v'[t-1] + (x[t] - v'[t-1]) * sigmoid(w)     one learnable w per layer, w0 = -ln(tau0 - 1)
    LIF   v[t] = v'[t-1] + (x[t] - v'[t-1]) / tau            fixed tau
    IF    v[t] = v'[t-1] + x[t]
    s[t]  = H(v[t] - V_th)   (H(0) = 1);   v'[t] = v[t] * (1 - s[t])   (hard reset, s detached)
    ds/dv = alpha/2 / (1 + (pi/2 * alpha * (v - V_th))^2)   (ATan surrogate, alpha = 2)

The update is written once (`neuron_step`). Its execution forms, each tested bit-identical to it:
  - training (autograd): `neuron_loop`, under an activation checkpoint (eager);
  - evaluation (no autograd): `no_grad_loop`, the same arithmetic in place (eager);
  - compiled: `neuron_loop` under torch.compile (fast/compiled.py gives a layer its `loops`);
  - one step per call (`one_step_per_call`): the original code's form, the reference in tests.
Needs only torch: this file copies out alone.
"""
import functools
import math
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint


NEURONS = ("plif", "lif", "if", "ann")


def _float32_at_least(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 (from autocast) -> float32; float32 and float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


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


def neuron_loop(x, leak, v_th, alpha):
    """neuron_step for t = 0 .. T-1 from v = 0. x: [T, B, ...] input current -> spikes [T, B, ...].
    leak: () -> k, called at every step as in the original: PLIF's w then gets the original's
    gradient, a sum of T per-step terms in its order (one k for all steps would sum them before
    sigmoid's derivative, and round differently once w is off 0)."""
    v = torch.zeros_like(x[0])
    spikes = []
    for x_t in x:
        s, v = neuron_step(x_t, v, leak(), v_th, alpha)
        spikes.append(s)
    return torch.stack(spikes)


def no_grad_loop(x, k, v_th):
    """neuron_loop's arithmetic in place, for evaluation (no graph to build). x: [T, B, ...] -> spikes.
    Bit-identical to it: v >= v_th exactly when v - v_th >= 0, and the reset v - v * s equals
    v * (1 - s) for s in {0, 1}."""
    spikes = torch.empty_like(x)
    v = torch.zeros_like(x[0])
    for t in range(x.shape[0]):
        if k is None:
            v += x[t]
        else:
            v += (x[t] - v) * k
        torch.ge(v, v_th, out=spikes[t])
        v.addcmul_(v, spikes[t], value=-1)          # v' = v (1 - s), with no mask to allocate
    return spikes


class Neuron(nn.Module):
    """A layer of spiking neurons (PLIF default), or ReLU for the ANN ablation. x: [T, B, ...] -> same.

    PLIF has one learnable scalar w per layer: 1/tau = sigmoid(w), w0 = -ln(tau0 - 1) (tau0 = 2 -> w0 = 0).
    `loops`: None runs the plain loops below; a fast form (fast/compiled.py) may set a callable
    loops(x, k) -> spikes that computes the same spikes.
    """

    spike_kind = "neuron"     # what the network's spike count (spikes.Trace) counts this layer's output as

    def __init__(self, kind="plif", tau0=2.0, v_th=1.0, alpha=2.0):
        super().__init__()
        if kind not in NEURONS:
            raise ValueError(f"unknown neuron {kind!r}; valid: {', '.join(NEURONS)}")
        if kind in ("plif", "lif") and not tau0 > 1:
            raise ValueError(f"tau0 must be > 1 (got {tau0}): the leak 1/tau must lie in (0, 1)")
        self.kind, self.tau0, self.v_th, self.alpha = kind, float(tau0), float(v_th), float(alpha)
        self.loops = None
        if kind == "plif":
            self.w = nn.Parameter(torch.tensor(-math.log(tau0 - 1)))

    def leak(self):
        """k in v += (x - v) * k: sigmoid(w) for PLIF, 1/tau0 for LIF, None for IF."""
        if self.kind == "plif":
            return torch.sigmoid(self.w)
        return 1.0 / self.tau0 if self.kind == "lif" else None

    def step(self, x, v):
        """One time step: charge, fire, hard reset. x, v: [B, ...] -> (spikes s, membrane after reset v')."""
        return neuron_step(x, v, self.leak(), self.v_th, self.alpha)

    def forward(self, x):
        if self.kind == "ann":
            return F.relu(x)
        x = _float32_at_least(x)                        # the membrane integrates in float32 under autocast
        if self.loops is not None:
            return self.loops(x, self.leak())
        if not torch.is_grad_enabled():
            return no_grad_loop(x, self.leak(), self.v_th)
        # Keep only x (and w) for backward and run the loop again there: the loop's intermediates
        # (x - v, v - V_th, 1 - s at every step) would otherwise triple the neuron's memory.
        return torch.utils.checkpoint.checkpoint(neuron_loop, x, self.leak, self.v_th, self.alpha,
                                                 use_reentrant=False, preserve_rng_state=False)

    def extra_repr(self):
        return f"{self.kind}, tau0={self.tau0}, v_th={self.v_th}"


def neuron_factory(kind="plif", tau0=2.0, v_th=1.0, alpha=2.0):
    """A function that makes a fresh neuron layer with these options (validated now)."""
    Neuron(kind, tau0, v_th, alpha)
    return functools.partial(Neuron, kind, tau0, v_th, alpha)


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
