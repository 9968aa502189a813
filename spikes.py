"""Spike bookkeeping of AutoSNN (Na et al., ICML 2022, sec. 3.4): what one forward counted, and the
statistics read from it (spikes per image, per layer, firing rates, an energy estimate).

The network watches its layers with `recording(trace, module, name)`; `Trace.count` is the whole
counting rule. A layer says what its output counts as through a class attribute `spike_kind`
('neuron' for neurons.Neuron, 'pool' for autosnn.MaxPool); convolutions and linear layers count
synaptic operations when energy is asked for. Needs only torch: this file copies out alone.
"""
import functools
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


class Trace:
    """What one forward counted. The network watches its layers with `recording(trace, module, name)`
    (forward hooks, removed after the call), and `count` below is the whole rule (sec. 3.4):

      - every spiking neuron layer: its output spikes (kind 'neuron');
      - every max-pool: its (binary) output counted again (kind 'pool'), as the original does;
      - with `energy`, every conv / linear layer: synaptic operations and dense MACs (see `synapse`).

    Identity skips count nothing; the ANN ablation (counting=False) counts nothing. Counts are
    detached float64 tensors on the device: no host sync, no autograd. Modules hold no state.
    Conv fan-outs are computed once per geometry and kept in the trace (and its copies), not globally.
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
        self.fanouts = {}     # conv geometry -> [H, W] fan-out, shared with copies (see `fanout`)

    def copy(self):
        """An independent continuation (used to branch a shared prefix of several paths)."""
        t = Trace(counting=self.counting, energy=self.energy)
        for k in ("counts", "kinds", "sizes", "sops", "macs", "analog"):
            setattr(t, k, dict(getattr(self, k)))
        t.fanouts = self.fanouts
        return t

    @torch.no_grad()
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
            key = (module.kernel_size, module.stride, module.padding, module.dilation, tuple(x.shape[-2:]))
            if key not in self.fanouts:
                self.fanouts[key] = fanout(module, key[-1]).to(x.device)
            fan = self.fanouts[key]
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
               if hasattr(m, "spike_kind") or isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _hook(trace, name, module, inputs, output):
    trace.count(name, module, inputs[0], output)


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
