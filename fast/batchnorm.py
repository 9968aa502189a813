"""Per-time-step BatchNorm in training without the copies around it.

layers.TimeBatchNorm's plain form calls BatchNorm2d once per time step and stacks the T outputs;
autograd then stacks the T input gradients again in backward (two copies of the layer's activation
per training step, about as much time as the normalisation itself on a CPU). `StepBatchNorm` makes
the same T kernel calls on the same slices, each writing into its slice of one output, and its
backward writes each step's input gradient into its slice of one gradient tensor and adds the
weight and bias gradients in the order autograd adds the plain form's (the last step's first).
So it is the plain form bit for bit, by construction: outputs, running statistics,
num_batches_tracked, input, weight and bias gradients (tested, tests/test_fast.py).

CPU only: on CUDA the plain form's F.batch_norm runs cuDNN's kernels, which have no form that
writes into a given output, so CUDA keeps the plain form (whose launches CUDA graphs remove).
"""
import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from layers import TimeBatchNorm

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


def step_batch_norm(bn: TimeBatchNorm, x: torch.Tensor) -> torch.Tensor:
    """TimeBatchNorm's training forward through StepBatchNorm. x: [T, B, C, H, W] -> same shape.
    Anything StepBatchNorm does not cover (not float32 on the CPU, not contiguous, no affine
    parameters or no running statistics) runs the plain form."""
    if (x.device.type != "cpu" or x.dtype != torch.float32 or not x.is_contiguous() or bn.weight is None
            or bn.running_mean is None):
        return bn.plain_steps(x)
    return StepBatchNorm.apply(x, bn.weight, bn.bias, bn)


def use_step_batch_norm(net: nn.Module) -> int:
    """Every TimeBatchNorm of `net` trains through step_batch_norm (in place); returns how many."""
    bns = [m for m in net.modules() if isinstance(m, TimeBatchNorm)]
    for m in bns:
        m.per_step = step_batch_norm
    return len(bns)
