"""Spike bookkeeping of AutoSNN (Na et al., ICML 2022): what one forward counted, and the
statistics read from it (spikes per image, per layer, firing rates, an energy estimate).

A network counts through its `Recorder` (hooks registered once, on every counted layer);
`Trace.count` is the whole counting rule. A layer says what its output counts as through a class
attribute `spike_kind` ('neuron' for neurons.Neuron, 'pool' for layers.MaxPool); convolutions and
linear layers count synaptic operations when energy is asked for. Needs only torch: this file
copies out alone.
"""
import functools
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


class Trace:
    """What one forward counted. The network's Recorder hands every counted layer's output to
    `count` below, which is the whole rule:

      - every spiking neuron layer: its output spikes (kind 'neuron');
      - every max-pool: its (binary) output counted again (kind 'pool'), as the original does;
      - with `energy`, every conv / linear layer: synaptic operations and dense MACs (see `synapse`).

    Identity skips count nothing; the ANN ablation (counting=False) counts nothing. Counts are
    detached float64 tensors on the device: no host sync, no autograd. Modules hold no state.
    Conv fan-outs are computed once per geometry and device and kept in `fanouts` (the network's
    Recorder passes its own, so they are computed on a network's first forward only), not globally.
    """

    def __init__(self, counting: bool = True, energy: bool = False, fanouts: dict | None = None):
        self.counting = counting
        self.energy = energy and counting
        self.counts = {}      # layer name -> spikes over batch and T (float64)
        self.kinds = {}       # 'neuron' or 'pool'
        self.sizes = {}       # units per image per step
        self.sops = {}        # weight layer -> synaptic operations over batch and T (float64)
        self.macs = {}        # weight layer -> dense MACs per image per step
        self.analog = {}      # True: analog input, MACs once per image (static stem)
        self.fanouts = {} if fanouts is None else fanouts    # conv geometry -> [H, W] fan-out (`fanout`)
        self.last = None      # (tensor, its totals): the tensor counted last (see `totals`)

    def copy(self):
        """An independent continuation (used to branch a shared prefix of several paths)."""
        t = Trace(counting=self.counting, energy=self.energy, fanouts=self.fanouts)
        for k in ("counts", "kinds", "sizes", "sops", "macs", "analog"):
            setattr(t, k, dict(getattr(self, k)))
        t.last = self.last
        return t

    def count(self, name: str, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        """The counting rule: called after `module` (named `name`) mapped x to y."""
        if not self.counting:
            return
        kind = getattr(module, "spike_kind", None)
        if kind is not None:
            self.record(name, y, kind)
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and self.energy:
            self.synapse(name, module, x, y)

    def record(self, name: str, spikes: torch.Tensor, kind: str) -> None:
        """spikes: [T, B, ...] binary."""
        count = self.totals(spikes).sum()
        self.counts[name] = self.counts[name] + count if name in self.counts else count
        self.kinds[name], self.sizes[name] = kind, spikes[0, 0].numel()

    def totals(self, x: torch.Tensor) -> torch.Tensor:
        """Per-position totals of x: [T, B, C, H, W] -> [H, W], [T, B, F] -> [F] (float64, on x's device).

        A float32 matrix-vector product (ones @ rows, over at most 2^24 rows at a time) adds whole
        numbers exactly in any order while the sums stay below 2^24: always for spikes (event counts
        at the DVS stem: while a pixel's count over the batch does); it is several times faster
        than a reduction over the leading dimensions. The totals of the tensor counted last are
        kept, so the convolutions that read a layer's spikes (energy) reuse them instead of reading
        the spikes again."""
        if self.last is not None and self.last[0] is x:
            return self.last[1]
        shape = x.shape[-2:] if x.dim() >= 4 else x.shape[-1:]
        rows = x.detach().reshape(-1, shape.numel())
        with _no_autocast(rows.device.type):                        # a bf16 product would round the sums
            sums = [torch.ones(1, len(part), dtype=rows.dtype, device=rows.device) @ part
                    for part in rows.split(2**24)]
        out = sum(s.double() for s in sums).view(shape)
        self.last = (x, out)
        return out

    def synapse(self, name: str, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        """A weight layer's work. x: its input [T, B, C, H, W] / [T, B, F] (spikes or event counts), y: output.

        Synaptic operations = sum over input positions of (input value) x (outputs it reaches): for a
        conv, out_channels x the true fan-out of that pixel (fewer at padded edges or with stride).
        Dense MACs (what an ANN or the analog first layer pays) = outputs x inputs per output.
        The analog first layer (an image, not spikes) does no synaptic operation: its MACs count once."""
        analog = getattr(module, "analog", False)
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            macs = y.shape[-3] * y.shape[-2] * y.shape[-1] * k
            if analog:
                sops = torch.zeros((), dtype=torch.float64, device=x.device)
            else:
                key = (module.kernel_size, module.stride, module.padding, module.dilation, tuple(x.shape[-2:]),
                       x.device)
                if key not in self.fanouts:
                    self.fanouts[key] = fanout(module, key[-2]).to(x.device)
                sops = (self.totals(x) * self.fanouts[key]).sum() * (module.out_channels // module.groups)
        else:                                                            # Linear on [T, B, F]
            macs = module.in_features * module.out_features
            sops = (torch.zeros((), dtype=torch.float64, device=x.device) if analog
                    else self.totals(x).sum() * module.out_features)
        self.sops[name] = self.sops[name] + sops if name in self.sops else sops
        self.macs[name], self.analog[name] = macs, analog


def _no_autocast(device_type: str):
    """Autocast off while the block runs (a context that does nothing where autocast does not
    exist, e.g. on the meta device)."""
    available = getattr(torch.amp, "is_autocast_available", lambda d: d in ("cpu", "cuda"))
    return torch.autocast(device_type, enabled=False) if available(device_type) else nullcontext()


class Recorder:
    """A network's counting hooks, registered once when the network is built: while `active(trace)`
    runs, every counted layer of the network hands its input and output to `trace.count`; otherwise
    the hooks do nothing. Layer names are their names in the network ('layers.0.SRB_k5.n1'), so a
    block run on its own under `active` counts under the same names as inside a whole forward.
    Registered once (not per forward), the hooks let a whole step be compiled or captured."""

    def __init__(self, net: nn.Module):
        self.trace = None
        self.fanouts = {}         # conv fan-outs for this network's traces (see Trace)
        for name, m in net.named_modules():
            if hasattr(m, "spike_kind") or isinstance(m, (nn.Conv2d, nn.Linear)):
                m.register_forward_hook(functools.partial(_report, self, name))

    @contextmanager
    def active(self, trace):
        """Count into `trace` (a Trace, or None: count nothing) while the block runs."""
        before, self.trace = self.trace, trace
        try:
            yield
        finally:
            self.trace = before


def _report(recorder, name, module, inputs, output):
    if recorder.trace is not None:
        recorder.trace.count(name, module, inputs[0], output)


def fanout(conv: nn.Conv2d, size: tuple) -> torch.Tensor:
    """[H, W] float64 on the CPU: how many output pixels of `conv` each input pixel of an H x W input
    reaches (padding and stride included), computed as a transposed convolution of ones."""
    with torch.inference_mode(False), torch.no_grad():     # ordinary tensors, even under inference_mode
        H, W = size
        out = F.conv2d(torch.zeros(1, 1, H, W), torch.zeros(1, 1, *conv.kernel_size), None,
                       conv.stride, conv.padding, conv.dilation).shape[-2:]
        ones = torch.ones(1, 1, *out, dtype=torch.float64)
        fan = F.conv_transpose2d(ones, torch.ones(1, 1, *conv.kernel_size, dtype=torch.float64), None,
                                 conv.stride, conv.padding, dilation=conv.dilation)
        fan = F.pad(fan, (0, W - fan.shape[-1], 0, H - fan.shape[-2]))      # rows/cols no output uses
        return fan[0, 0]


# 45 nm energy per operation, the figures commonly cited from Horowitz (ISSCC 2014), in pJ
E_AC, E_MAC = 0.9, 4.6


def silent_layers(per_layer: dict) -> list:
    """The names whose count is zero: layers that emitted no spike at all. The one rule, used for a
    forward's statistics (SpikeStats.silent_layers) and for an epoch's sums alike."""
    return [n for n, c in per_layer.items() if c == 0]


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
        mask = torch.tensor([k == "neuron" for k in self.kinds], dtype=torch.bool, device=self.counts.device)
        return self.counts[mask].sum() / self.batch

    @property
    def layer_spikes(self) -> torch.Tensor:
        """[L] spikes per image summed over T, per layer."""
        return self.counts / self.batch

    @property
    def layer_rates(self) -> torch.Tensor:
        """[L] mean spikes per unit per time step, per layer, in [0, 1]."""
        sizes = torch.tensor(self.sizes, dtype=torch.float64, device=self.counts.device)
        return self.counts / (self.batch * self.T * sizes)

    def per_layer(self) -> dict:
        """Layer name -> spikes per image summed over T (0-dim tensors)."""
        return dict(zip(self.names, self.layer_spikes))

    def firing_rates(self) -> dict:
        """Layer name -> mean spikes per unit per time step (0-dim tensors)."""
        return dict(zip(self.names, self.layer_rates))

    def silent_layers(self) -> list:
        """Names of the layers that emitted no spike at all (one host sync). A silent layer silences
        everything after it: e.g. PLIF after an average pool of spikes at v_th = 1 (see README)."""
        return silent_layers(dict(zip(self.names, self.counts.tolist())))

    def summary(self) -> dict:
        """The properties above as plain Python numbers, for logs and JSON (one host sync)."""
        L = len(self.names)
        v = torch.cat([self.spikes.view(1), self.neuron_spikes.view(1), self.layer_spikes,
                       self.layer_rates]).tolist()
        return {"spikes": v[0], "neuron_spikes": v[1], "per_layer": dict(zip(self.names, v[2:2 + L])),
                "firing_rate": dict(zip(self.names, v[2 + L:]))}

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
