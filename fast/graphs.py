"""A child network's training and evaluation steps captured as CUDA graphs and replayed.

On a GPU a child's training step is a few thousand small kernel launches (neurons, per-step
BatchNorm) for a few milliseconds of arithmetic: at batch 96 the host's launch time is what limits
it. A CUDA graph records the launches of one step once and replays them with one call. The replay
runs the same kernels on the same data in the same order, so it is bit-identical to eager (tested
where a GPU exists, tests/test_fast.py).

    steps = GraphedSteps(net, loss_fn, autocast, log)
    out, stats, loss = steps.train(x, y)     # forward, loss and backward; gradients in p.grad
    optimizer.step()                         # outside the graph: Adam's own arithmetic, eager
    out, stats = steps.evaluate(x)           # eval-mode forward under inference_mode

What a graph needs, and what runs eager instead:
  - fixed shapes: the graph of each mode is captured for the first batch shape it sees after
    WARMUP eager steps (kernel choices and compiled code settle there); other shapes (the last,
    shorter batch of an epoch) run eager;
  - one path: a child network, or a super-network with a fixed `arch`; a super-network with
    a path per batch runs eager;
  - no host reads inside the step: BatchNorm with momentum=None reads num_batches_tracked on the
    host, so a capture that fails for this or any other reason logs one line and that mode runs
    eager from then on;
  - the optimizer outside: its step runs eager after the replay (a capturable Adam would compute
    its bias corrections on the device, rounding otherwise than eager Adam).
Outputs are copied out of the graph's memory, so a caller may keep them across steps. The
gradients live in the graph's memory and are re-attached to the parameters after every replay
(a zero_grad(set_to_none=True) between steps is fine).
"""
import contextlib

import torch

from autosnn import SpikingNetwork
from spikes import SpikeStats

WARMUP = 2        # eager steps of a mode before its capture


class GraphedSteps:
    """CUDA-graph forms of `net`'s training step and evaluation forward (see the module docstring).
    net: a child network, a baseline, or a super-network run on `arch`; loss_fn(net, out, y) -> loss;
    autocast() -> a context for the forward (nullcontext for fp32); energy: whether the evaluation
    forward counts synaptic operations. On a device other than CUDA every call runs eager (logged
    once). The parameters and buffers must stay the same tensors (load_state_dict copies into them:
    fine; replacing a parameter or moving the network is not)."""

    def __init__(self, net, loss_fn, autocast=contextlib.nullcontext, log=print, arch=None, energy=True):
        self.net, self.loss_fn, self.autocast, self.log, self.arch = net, loss_fn, autocast, log, arch
        self.energy = energy          # the evaluation forward counts synaptic operations too
        self.graphs = {}          # mode -> (graph, static inputs, static outputs) or None (eager)
        self.calls = {"train": 0, "eval": 0}
        self.eager_why = None
        self.stream = None
        param = next(net.parameters())
        if param.device.type != "cuda":
            self.eager_why = f"CUDA graphs need a CUDA device (the network is on {param.device})"
        elif isinstance(net, SpikingNetwork) and net.arch is None and arch is None:
            self.eager_why = "the super-network runs a new path every batch"
        if self.eager_why:
            log(f"CUDA graphs: {self.eager_why}: running eager")

    # -- the steps, eager -------------------------------------------------------------------

    def _train_eager(self, x, y):
        with self.autocast():
            out, stats = self.net(x, self.arch)
            loss = self.loss_fn(self.net, out, y)
        loss.backward()
        return out, stats, loss

    def _eval_eager(self, x):
        with torch.inference_mode(), self.autocast():
            return self.net(x, self.arch, energy=self.energy)

    # -- capture and replay ------------------------------------------------------------------

    def train(self, x, y):
        """One training step's forward, loss and backward (net in train mode; gradients of the
        step in p.grad as eager backward leaves them after zero_grad(set_to_none=True)).
        x: [B, ...], y: [B] -> (out [B, K], SpikeStats, loss)."""
        return self._run("train", (x, y))

    def evaluate(self, x):
        """One eval-mode forward under inference_mode. x: [B, ...] -> (out [B, K], SpikeStats)."""
        return self._run("eval", (x,))

    def _run(self, mode, inputs):
        eager = self._train_eager if mode == "train" else self._eval_eager
        if (self.eager_why is not None or self.graphs.get(mode, False) is None
                or self.net.training != (mode == "train")):       # a graph is recorded in its mode
            return eager(*inputs)
        self.calls[mode] += 1
        if mode not in self.graphs:
            if self.calls[mode] <= WARMUP:
                return self._side(eager, *inputs)
            self.graphs[mode] = self._capture(mode, inputs)
            if self.graphs[mode] is None:
                return eager(*inputs)
        graph, static_in, static_out = self.graphs[mode]
        if any(a.shape != b.shape or a.dtype != b.dtype for a, b in zip(inputs, static_in)):
            return eager(*inputs)               # another batch shape: eager (see the module docstring)
        for a, b in zip(static_in, inputs):
            a.copy_(b)
        graph.replay()
        return self._outputs(mode, static_out)

    def _side(self, fn, *args):
        """fn(*args) on the capture stream, ordered after and before the current stream's work:
        warm-up steps set up what the capture then reuses (library handles and workspaces are per
        stream)."""
        if self.stream is None:
            self.stream = torch.cuda.Stream()
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            out = fn(*args)
        torch.cuda.current_stream().wait_stream(self.stream)
        return out

    def _capture(self, mode, inputs):
        """Record one step of `mode` on copies of `inputs`; None (logged) if it cannot be captured.
        Nothing runs while recording, so the first replay is the step itself."""
        params = [p for p in self.net.parameters() if p.requires_grad]
        with torch.inference_mode(False):           # ordinary tensors: later copies may run outside it
            static_in = [a.clone() for a in inputs]
        graph = torch.cuda.CUDAGraph()
        if self.stream is None:
            self.stream = torch.cuda.Stream()
        autocast = self.autocast
        torch.cuda.synchronize()
        try:
            # autocast's cache of cast weights would be recorded as stale tensors: off while capturing
            self.autocast = lambda: _uncached(autocast)
            if mode == "train":
                for p in params:
                    p.grad = None               # backward then allocates the gradients in the graph's pool
                with torch.cuda.graph(graph, stream=self.stream):
                    out, stats, loss = self._train_eager(*static_in)
                static_out = (out, stats, loss, [p.grad for p in params])
            else:
                with torch.cuda.graph(graph, stream=self.stream):
                    out, stats = self._eval_eager(*static_in)
                static_out = (out, stats)
        except Exception as e:                              # a host read, an unsupported op, ...
            for p in params:
                p.grad = None
            self.log(f"CUDA graphs: the {mode} step cannot be captured ({type(e).__name__}: "
                     f"{str(e).splitlines()[0][:120] if str(e) else ''}): running it eager")
            return None
        finally:
            self.autocast = autocast
        self.log(f"CUDA graphs: captured the {mode} step for input {tuple(inputs[0].shape)}")
        return graph, static_in, static_out

    def _outputs(self, mode, static_out):
        """Copies of the graph's outputs (the next replay overwrites its memory); the gradients
        re-attached to the parameters."""
        out, stats = static_out[0].detach().clone(), _copy_stats(static_out[1])
        if mode == "eval":
            return out, stats
        params = [p for p in self.net.parameters() if p.requires_grad]
        for p, g in zip(params, static_out[3]):
            p.grad = g
        return out, stats, static_out[2].detach().clone()


@contextlib.contextmanager
def _uncached(autocast):
    """autocast() with its weight-cast cache off (a plain context passes through)."""
    ctx = autocast()
    if isinstance(ctx, torch.autocast):
        ctx = torch.autocast(ctx.device, dtype=ctx.fast_dtype, enabled=ctx._enabled, cache_enabled=False)
    with ctx:
        yield


def _copy_stats(s: SpikeStats) -> SpikeStats:
    return SpikeStats(s.names, s.kinds, s.sizes, s.counts.clone(), s.batch, s.T, s.syn_names, s.macs, s.analog,
                      s.sops.clone())
