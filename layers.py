"""AutoSNN's layers and candidate blocks: plain modules, forward(x) with
x: [T, B, C, H, W]. Pooling folds T into the batch, and so do convolutions except under autograd,
where they run once per time step as the original does (`over_time`); BatchNorm keeps the original's
per-step statistics in training; every neuron is a neurons.Neuron made by the factory passed in.
Spikes and synaptic operations are counted by the network (spikes.Trace), not here.

    SCB:  x -> conv-BN -> neuron -> conv-BN -> neuron
    SRB:  x -> conv-BN -> neuron -> conv-BN (+ x, or its 1x1 conv-BN when the shape changes) -> neuron
    skip_connect: identity, or factorized reduce / 1x1 conv-BN -> neuron when the shape changes
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from neurons import _float32_at_least
from search_space import check_candidate


def fold(layer, x):
    """Apply a per-image layer to [T, B, ...] by merging T into the batch: [T*B, ...] -> [T, B, ...]."""
    return layer(x.flatten(0, 1)).unflatten(0, x.shape[:2])


def over_time(layer, x, weight):
    """Apply a per-image layer with a trainable `weight` to x: [T, B, ...] -> [T, B, ...].

    Folded into one call over T*B images, except when autograd is to compute `weight`'s gradient:
    then one call per step, as in the original, which runs the whole network one step at a time.
    The gradient is then the original's sum of T per-step gradients, added in the same order, bit
    for bit; one call over T*B images adds the same terms in another order. Adam's first step moves
    a weight by about lr * sign(g), so a tiny g rounded to the other sign would move it by 2 * lr."""
    if torch.is_grad_enabled() and weight.requires_grad:
        return torch.stack([layer(x_t) for x_t in x])
    return fold(layer, x)


class Conv(nn.Conv2d):
    """nn.Conv2d (no bias, 'same' padding) on [T, B, C, H, W], over time by `over_time`.

    Plain NCHW, as the original: channels_last makes oneDNN pick other kernels whose rounding flips
    spikes of membranes that sit at the threshold (training stopped matching the original)."""

    per_step = None     # a fast form (fast/steps.py) may set per_step(conv, x) with plain()'s results

    def __init__(self, cin, cout, k, stride=1, analog=False):
        super().__init__(cin, cout, k, stride, k // 2, bias=False)
        self.analog = analog      # its input is an image, not spikes (energy: MACs, not accumulates)

    def forward(self, x):
        return self.plain(x) if self.per_step is None else self.per_step(self, x)

    def plain(self, x):
        """x: [T, B, Cin, H, W] -> [T, B, Cout, H/s, W/s], over time by `over_time`."""
        return over_time(super().forward, x, self.weight)


class TimeBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d over x: [T, B, C, H, W] with separate batch statistics at every time step.

    Literally one BatchNorm2d call on each x[t] in turn, as the original (which runs the net one step
    at a time) does: in training each step is normalised with its own B-sample statistics and the
    running statistics are updated T times in sequence. Eval uses the running statistics, in one
    call for all steps. Runs in float32 under autocast (its buffers stay float32).
    `per_step`: None runs plain_steps below in training; a fast form (fast/steps.py) may set a
    callable per_step(bn, x) with the same results.
    """
    per_step = None

    def forward(self, x):
        x = _float32_at_least(x)
        if not self.training:
            return fold(super().forward, x)
        return self.plain_steps(x) if self.per_step is None else self.per_step(self, x)

    def plain_steps(self, x):
        """Training: BatchNorm2d on x[0], x[1], ... in turn, stacked. x: [T, B, C, H, W] -> same."""
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
    """Spiking convolution block: conv-BN-neuron-conv-BN-neuron. neuron: () -> Neuron."""

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

    spike_kind = "pool"       # spikes.Trace counts its output again

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
