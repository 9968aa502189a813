"""The per-time-step layers of training without the copies around their per-step calls.

BatchNorm. layers.TimeBatchNorm's plain form calls BatchNorm2d once per time step and stacks the T outputs;
autograd then stacks the T input gradients again in backward (two copies of the layer's activation
per training step, about as much time as the normalisation itself on a CPU). `StepBatchNorm` makes
the same T kernel calls on the same slices, each writing into its slice of one output, and its
backward writes each step's input gradient into its slice of one gradient tensor and adds the
weight and bias gradients in the order autograd adds the plain form's (the last step's first).
So it is the plain form bit for bit, by construction: outputs, running statistics,
num_batches_tracked, input, weight and bias gradients (tested, tests/test_fast.py).

Convolutions. Under autograd layers.Conv runs one call per step and stacks them (`over_time`), so
that the weight gradient is the original's sum of T per-step gradients in its order. `StepConv`
runs the forward and the input gradient as one call over T*B images, which gives the same numbers
(a convolution treats every image alike: tested, bit for bit, in tests/test_fast.py), and only the
weight gradient per step, added last step first as autograd adds the plain form's: T - 1 fewer
calls each way and no stack.

CPU and float32 only (StepConv: and no autocast, whose bf16 casts and their gradients it does not
reproduce): on CUDA the plain forms run cuDNN's kernels (no form that writes into a given output;
per-image results not checked), so CUDA keeps the plain forms, whose launches CUDA graphs remove.
Anything else runs the plain form.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from layers import Conv, TimeBatchNorm

aten = torch.ops.aten


class StepBatchNorm(torch.autograd.Function):
    """apply(x, weight, bias, bn): x [T, B, C, H, W] contiguous, bn the TimeBatchNorm (its running
    statistics are updated once per step, as BatchNorm2d.forward updates them) -> [T, B, C, H, W]."""

    @staticmethod
    def forward(ctx, x, weight, bias, bn):
        T, C = x.shape[0], x.shape[2]
        out = torch.empty_like(x)
        mean, invstd = x.new_empty(T, C), x.new_empty(T, C)
        for t in range(T):
            bn.num_batches_tracked.add_(1)                   # as BatchNorm2d.forward does, per call
            momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            aten.native_batch_norm.out(x[t], weight, bias, bn.running_mean, bn.running_var, True, momentum,
                                       bn.eps, out=out[t], save_mean=mean[t], save_invstd=invstd[t])
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = bn.eps
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight, mean, invstd = ctx.saved_tensors
        need = list(ctx.needs_input_grad[:3])
        gx = torch.empty_like(x) if need[0] else None
        gw = gb = None
        # autograd runs the plain form's T BatchNorm backward nodes last step first (the newest
        # node first) and adds their weight and bias gradients in that order: so do we
        for t in reversed(range(x.shape[0])):
            gx_t, gw_t, gb_t = aten.native_batch_norm_backward(grad[t], x[t], weight, None, None, mean[t],
                                                               invstd[t], True, ctx.eps, need)
            if need[0]:
                gx[t] = gx_t
            if need[1]:
                gw = gw_t if gw is None else gw + gw_t
            if need[2]:
                gb = gb_t if gb is None else gb + gb_t
        return gx, gw, gb, None


class StepConv(torch.autograd.Function):
    """apply(x, weight, conv): x [T, B, Cin, H, W], conv the layers.Conv (its geometry) -> [T, B, Cout, H', W']."""

    @staticmethod
    def forward(ctx, x, weight, conv):
        ctx.geometry = (conv.stride, conv.padding, conv.dilation, conv.groups)
        ctx.save_for_backward(x, weight)
        return F.conv2d(x.flatten(0, 1), weight, None, *ctx.geometry).unflatten(0, x.shape[:2])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        geometry = (stride, padding, dilation, False, (0, 0), groups)
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = aten.convolution_backward(grad.flatten(0, 1), x.flatten(0, 1), weight, None, *geometry,
                                           (True, False, False))[0].unflatten(0, x.shape[:2])
        if ctx.needs_input_grad[1]:
            for t in reversed(range(x.shape[0])):           # as autograd adds the per-step calls' gradients
                gw_t = aten.convolution_backward(grad[t], x[t], weight, None, *geometry, (False, True, False))[1]
                gw = gw_t if gw is None else gw + gw_t
        return gx, gw, None


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:                  # torch < 2.4 names it otherwise
        return torch.is_autocast_cpu_enabled()


def _covered(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32


def step_batch_norm(bn: TimeBatchNorm, x: torch.Tensor) -> torch.Tensor:
    """TimeBatchNorm's training forward through StepBatchNorm. x: [T, B, C, H, W] -> same shape.
    Anything StepBatchNorm does not cover (see the module docstring; not contiguous, no affine
    parameters or no running statistics) runs the plain form."""
    if not (_covered(x) and x.is_contiguous() and bn.weight is not None and bn.running_mean is not None):
        return bn.plain_steps(x)
    return StepBatchNorm.apply(x, bn.weight, bn.bias, bn)


def step_conv(conv: Conv, x: torch.Tensor) -> torch.Tensor:
    """layers.Conv's forward with over_time's results, through StepConv where autograd is to compute
    the weight's gradient; otherwise (or where not covered) the plain form. x: [T, B, Cin, H, W]."""
    if not (torch.is_grad_enabled() and conv.weight.requires_grad and _covered(x) and conv.bias is None
            and not _cpu_autocast()):
        return conv.plain(x)
    return StepConv.apply(x, conv.weight, conv)


def use_step_layers(net: nn.Module) -> int:
    """Every TimeBatchNorm and Conv of `net` trains through step_batch_norm / step_conv (in place);
    returns how many layers."""
    layers = [m for m in net.modules() if isinstance(m, (TimeBatchNorm, Conv))]
    for m in layers:
        m.per_step = step_batch_norm if isinstance(m, TimeBatchNorm) else step_conv
    return len(layers)
