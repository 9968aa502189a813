"""Tests of spike accounting (spikes.py): manual recounts, exact large counts, synaptic operations
by hand, and the energy estimate per image.

Golden values are computed by hand in the comments, not by the code under test.
"""
import copy

import pytest
import torch
import torch.nn as nn
from conftest import seeded

from autosnn import SpikingNetwork
from layers import Conv, MaxPool
from neurons import Neuron
from search_space import AUTOSNN, parse_arch
from spikes import Recorder, Trace


# ---------------------------------------------------------------------------------------------
# Spike accounting
# ---------------------------------------------------------------------------------------------

def test_spike_stats_equal_manual_recount():
    """Recount from hooked layer outputs: every neuron once, every max-pool output once more,
    identity skips nothing."""
    seeded(8)
    net = SpikingNetwork("SNN_1_4", num_classes=3)
    arch = parse_arch("SRB_k5-skip_connect-skip_connect-SCB_k3-SRB_k3", net.backbone)
    seen = []
    for name, m in net.named_modules():
        if isinstance(m, (Neuron, MaxPool)):
            m.register_forward_hook(lambda m, i, o, name=name: seen.append((name, o)))
    B = 3
    out, stats = net(torch.randn(B, 3, 32, 32), arch)
    neuron_total = sum(o.sum().item() for n, o in seen if not isinstance(net.get_submodule(n), MaxPool))
    pool_total = sum(o.sum().item() for n, o in seen if isinstance(net.get_submodule(n), MaxPool))
    assert stats.neuron_spikes.item() == pytest.approx(neuron_total / B)
    assert stats.spikes.item() == pytest.approx((neuron_total + pool_total) / B)
    assert pool_total > 0
    assert stats.names == [n for n, _ in seen]
    # position 2 is a channel-doubling skip (conv1x1 + BN + neuron), position 3 an identity
    assert "layers.2.skip_connect.n1" in stats.names
    assert not any(n.startswith("layers.3.") for n in stats.names)
    rates = stats.firing_rates()
    for n, o in seen:
        assert rates[n].item() == pytest.approx(o.mean().item())
    summary = stats.summary()
    assert summary["spikes"] == pytest.approx(stats.spikes.item())
    assert summary["neuron_spikes"] == pytest.approx(neuron_total / B)
    for n, o in seen:                               # o: [T, B, ...]; the rate per unit per step
        assert summary["firing_rate"][n] == pytest.approx(o.mean().item())
        assert summary["per_layer"][n] == pytest.approx(o.sum().item() / B)
    assert (stats + stats).spikes.item() == pytest.approx(stats.spikes.item())
    assert stats.counts.device == out.device and stats.counts.dtype == torch.float64


def test_large_counts_are_exact():
    # 2 * 4097 * 4097 = 33,570,818 spikes: not representable in float32 (spacing 4 at 2^25)
    spikes = torch.ones(1, 1, 1).expand(2, 4097, 4097)
    tr = Trace()
    tr.record("neuron", spikes, "neuron")
    assert tr.counts["neuron"].item() == 33_570_818


def test_counts_exact_under_bf16_autocast():
    """Per-position totals above 256 (the largest run of whole numbers bf16 holds): the count is
    still exact under bf16 autocast, which must not reach the counting's matrix product."""
    spikes = (torch.rand(2, 4, 64, 3, 3, generator=torch.Generator().manual_seed(0)) < 0.9).float()
    tr = Trace()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tr.record("neuron", spikes, "neuron")
    per_position = spikes.sum((0, 1, 2))                   # ~460: odd ones are not bf16 numbers
    assert (per_position > 256).all() and (per_position % 2 == 1).any()
    assert tr.counts["neuron"].item() == spikes.sum().item()


def test_ann_mode():
    seeded(9)
    net = SpikingNetwork("SNN_1_4", num_classes=5, arch=AUTOSNN, T=1, neuron="ann")
    out, stats = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5) and net.fc.out_features == 5
    assert stats.spikes.item() == 0 and (out < 0).any()          # plain logits


# ---------------------------------------------------------------------------------------------
# Synaptic operations and the energy estimate
# ---------------------------------------------------------------------------------------------

def test_synaptic_ops_hand_count():
    def count(layer, x):
        tr = Trace(energy=True)
        with Recorder(nn.ModuleDict({"conv": layer})).active(tr):
            layer(x)
        return tr

    conv = Conv(1, 2, 3)                       # 3x3, padding 1, on 4x4: corner reaches 4 outputs,
    x = torch.zeros(1, 1, 1, 4, 4)             # edge 6, interior 9 (per output channel)
    x[..., 0, 0] = x[..., 0, 2] = x[..., 2, 2] = 1
    tr = count(conv, x)
    assert tr.sops["conv"].item() == 2 * (4 + 6 + 9)
    assert tr.macs["conv"] == 2 * 16 * 9       # dense: 2 channels x 16 outputs x 9 inputs each
    strided = Conv(1, 3, 1, stride=2)          # 1x1 stride 2: only even rows/cols are read
    x = torch.zeros(2, 1, 1, 4, 4)
    x[0, ..., 0, 0] = x[1, ..., 2, 2] = x[0, ..., 1, 1] = x[1, ..., 3, 0] = 1
    tr = count(strided, x)
    assert tr.sops["conv"].item() == 3 * 2
    tr = count(nn.Linear(5, 7, bias=False), torch.tensor([[[1.0, 0, 1, 1, 0]]]))
    assert tr.sops["conv"].item() == 3 * 7 and tr.macs["conv"] == 35


def test_energy_without_spikes_is_first_layer_only():
    net = SpikingNetwork("SNN_1_4", num_classes=3, arch=AUTOSNN, T=2, v_th=1e9).eval()
    _, stats = net(torch.randn(2, 3, 32, 32), energy=True)
    e = stats.energy()
    assert stats.spikes.item() == 0 and e["sops"] == 0
    assert e["first_layer_macs"] == 4 * 32 * 32 * 3 * 9          # the analog stem conv, once per image
    assert e["energy_uj"] == pytest.approx(4.6 * e["first_layer_macs"] * 1e-6)
    assert e["ann_macs"] > e["first_layer_macs"]
    assert e["ann_energy_uj"] == pytest.approx(4.6 * e["ann_macs"] * 1e-6)
    assert stats.energy(e_ac=1.0, e_mac=2.0)["energy_uj"] == pytest.approx(2.0 * e["first_layer_macs"] * 1e-6)


def test_energy_is_per_image():
    """The same image twice in one batch costs what it costs once (eval mode: no batch statistics)."""
    seeded(21)
    net = SpikingNetwork("SNN_1_4", num_classes=3, arch=AUTOSNN, T=2, v_th=0.5).eval()
    x = torch.randn(1, 3, 32, 32) * 2
    one = net(x, energy=True)[1].energy()
    two = net(x.expand(2, -1, -1, -1), energy=True)[1].energy()
    assert one["sops"] > 0
    for key in ("sops", "energy_uj", "first_layer_macs", "ann_macs"):
        assert two[key] == pytest.approx(one[key])
    for name, layer in one["per_layer"].items():
        assert two["per_layer"][name]["sops"] == pytest.approx(layer["sops"])


def test_energy_counts_agree_between_forms():
    seeded(12)
    net = SpikingNetwork("SNN_3_4", num_classes=3, T=2, v_th=0.5)
    arch = parse_arch("skip_connect-skip_connect-SRB_k3-SCB_k3-SRB_k5-skip_connect-SRB_k3-SCB_k3", net.backbone)
    x = torch.randn(3, 3, 32, 32) * 2
    _, a = net(x, arch, energy=True)
    _, b = copy.deepcopy(net).forward_stepwise(x, arch, energy=True)
    assert a.syn_names == b.syn_names and torch.allclose(a.sops, b.sops) and a.sops.sum() > 0
    assert "layers.1.skip_connect.conv.conv_a" in a.syn_names      # factorized reduce: both halves
    assert "layers.1.skip_connect.conv.conv_b" in a.syn_names
    with pytest.raises(ValueError, match="energy=True"):
        net(x, arch)[1].energy()


# ---------------------------------------------------------------------------------------------
# The recorder: hooks registered once, counts and synaptic operations exact
# ---------------------------------------------------------------------------------------------

def recount(net, x, arch=None):
    """Every counted layer's count, recounted from its own input and output in float64 with hooks
    of the test's own: {neuron / max-pool name: spikes}, {conv / linear name: synaptic operations}.
    A conv's operations: every input spike reaches (in_channels x kernel) outputs it sums into, once per
    output channel, i.e. conv2d(x, ones) summed, times the output channels."""
    F = torch.nn.functional
    spikes, sops, hooks = {}, {}, []

    def hook(name, m, inputs, out):
        if isinstance(m, (Neuron, MaxPool)):
            spikes[name] = spikes.get(name, 0) + out.double().sum().item()
        elif isinstance(m, nn.Conv2d) and not m.analog:
            x = inputs[0].double().flatten(0, 1)
            ones = torch.ones(1, m.in_channels, *m.kernel_size, dtype=torch.float64)
            s = F.conv2d(x, ones, None, m.stride, m.padding, m.dilation).sum().item() * m.out_channels
            sops[name] = sops.get(name, 0) + s
        elif isinstance(m, nn.Linear):
            sops[name] = sops.get(name, 0) + inputs[0].double().sum().item() * m.out_features
    for name, m in net.named_modules():
        if isinstance(m, (Neuron, MaxPool, nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(lambda m, i, o, name=name: hook(name, m, i, o)))
    try:
        _, stats = net(x, arch, energy=True)
    finally:
        for h in hooks:
            h.remove()
    return stats, spikes, sops


@pytest.mark.parametrize("backbone, arch, shape", [
    ("SNN_3_4", "skip_connect-skip_connect-SRB_k3-SCB_k3-SRB_k5-skip_connect-SRB_k3-SCB_k3", (3, 32, 32)),
    ("SNN_2_4", "SRB_k3-SCB_k5-skip_connect-SRB_k5-SCB_k3", (3, 32, 32)),
    ("AutoSNN_4", "SCB_k3-SRB_k3-skip_connect-SRB_k5-SCB_k5", (2, 128, 128)),
])
def test_counts_and_synaptic_ops_equal_a_float64_recount(backbone, arch, shape):
    """Spikes per layer and synaptic operations per weight layer, exactly as a float64 recount from
    each layer's own input and output: factorized-reduce skips (whose second conv reads a shifted
    view of the spikes the first one reads), SRB shortcuts reading the block input twice, a spiking
    GAP (SNN_2), max-pools, the DVS stem on event counts."""
    seeded(31)
    net = SpikingNetwork(backbone, 3, T=2, input_shape=shape, v_th=0.5).eval()
    x = torch.randint(0, 3, (2, 2, *shape)).float() if shape[0] == 2 else torch.randn(2, *shape) * 2
    with torch.no_grad():
        stats, spikes, sops = recount(net, x, arch)
    assert dict(zip(stats.names, stats.counts.tolist())) == spikes and sum(spikes.values()) > 0
    got = dict(zip(stats.syn_names, stats.sops.tolist()))
    assert {n: s for n, s in got.items() if s or n in sops} == sops and sum(sops.values()) > 0


def test_recorder_hooks_are_registered_once_and_count_only_when_active():
    """The network's hooks are set when it is built: a forward adds or removes none (and conv
    fan-outs are computed once); layers run outside `active` count nothing; a deep copy counts into
    its own traces only."""
    seeded(32)
    net = SpikingNetwork("SNN_1_4", num_classes=3, arch=AUTOSNN, T=2, v_th=0.5)
    hooks = [len(m._forward_hooks) for m in net.modules()]
    assert sum(hooks) == sum(1 for m in net.modules() if isinstance(m, (Neuron, MaxPool, nn.Conv2d, nn.Linear)))
    x = torch.randn(2, 3, 32, 32) * 2
    _, stats = net(x, energy=True)
    assert [len(m._forward_hooks) for m in net.modules()] == hooks and stats.spikes > 0
    fanouts = dict(net.recorder.fanouts)                 # computed on the first forward only
    assert fanouts and net(x, energy=True)[1].sops.sum() > 0 and net.recorder.fanouts == fanouts
    tr = Trace()
    net.stem(net.stem.encode(x, 2))                      # no active trace: nothing recorded anywhere
    with net.recorder.active(tr):
        h = net.stem(net.stem.encode(x, 2))
    assert list(tr.counts) == ["stem.n1"] and net.recorder.trace is None
    twin = copy.deepcopy(net)
    other = Trace()
    with twin.recorder.active(other):
        twin.run_position(0, h, net.arch[0])
    assert list(other.counts) == ["layers.0.SRB_k5.n1", "layers.0.SRB_k5.n2"] and list(tr.counts) == ["stem.n1"]
