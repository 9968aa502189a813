"""Tests of the spiking core (autosnn.py) and the search space (search_space.py).

Run: python -m pytest -q
Golden values are computed by hand in the comments, not by the code under test.
"""
import copy
import math
import random

import pytest
import torch
import torch.nn as nn

from autosnn import (Conv, MaxPool, Neuron, SpikeFn, SpikingNetwork, TimeBatchNorm, Trace, atan_surrogate,
                     count_parameters, predict, rate_loss, recording)
from conftest import plif_free
from search_space import (AUTOSNN, CANDIDATES, NAMED_ARCHS, Arch, all_archs, full_layout,
                          get_backbone, parse_arch, resolve_arch, sample_arch)


def seeded(seed=0):
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Neurons: golden trajectories and surrogate
# ---------------------------------------------------------------------------------------------

def trajectory(kind, xs, **kw):
    """Membrane before reset and spikes of a single neuron driven by the scalar sequence xs,
    from Neuron.step; the spikes of Neuron.forward (with and without autograd) must agree."""
    n = Neuron(kind, **kw)
    x = torch.tensor(xs, dtype=torch.float64).view(-1, 1)
    v, h, s = torch.zeros(1, dtype=torch.float64), [], []
    for x_t in x:
        k = n.leak()
        h.append((v + x_t if k is None else v + (x_t - v) * k).item())     # before reset
        s_t, v = n.step(x_t, v)
        s.append(s_t.item())
    with torch.no_grad():
        assert n(x).view(-1).tolist() == s
    assert n(x.requires_grad_()).view(-1).tolist() == s
    return h, s


def test_if_golden():
    # v = 0.6, 1.2 (fire, reset to 0), 0.6, 1.2 (fire), 0.6 ; exactly 1.0 fires: H(0) = 1
    h, s = trajectory("if", [0.6, 0.6, 0.6, 0.6, 0.6])
    assert h == pytest.approx([0.6, 1.2, 0.6, 1.2, 0.6])
    assert s == [0, 1, 0, 1, 0]
    assert trajectory("if", [0.5, 0.5])[1] == [0, 1]


def test_plif_golden():
    # k = sigmoid(0) = 0.5: v1 = 0.75; v2 = 0.75 + 0.5*(1.5-0.75) = 1.125 fire -> 0;
    # v3 = 0.75; v4 = 0.75 + 0.5*(0.5-0.75) = 0.625; v5 = 0.625 + 0.5*(2-0.625) = 1.3125 fire
    h, s = trajectory("plif", [1.5, 1.5, 1.5, 0.5, 2.0])
    assert h == pytest.approx([0.75, 1.125, 0.75, 0.625, 1.3125])
    assert s == [0, 1, 0, 0, 1]


def test_lif_golden():
    # tau = 4, k = 0.25, x = 2: v = 0.5, 0.875, 1.15625 fire -> 0, 0.5, 0.875, 1.15625 fire
    h, s = trajectory("lif", [2.0] * 6, tau0=4.0)
    assert h == pytest.approx([0.5, 0.875, 1.15625, 0.5, 0.875, 1.15625])
    assert s == [0, 0, 1, 0, 0, 1]


def test_threshold_option():
    # IF with v_th = 0.25: 0.2 (no), 0.4 (fire), 0.2, 0.4 (fire)
    assert trajectory("if", [0.2] * 4, v_th=0.25)[1] == [0, 1, 0, 1]


@pytest.mark.parametrize("tau0", [1.5, 2.0, 3.0, 10.0])
def test_plif_init_tau(tau0):
    n = Neuron("plif", tau0=tau0)
    assert 1 / torch.sigmoid(n.w).item() == pytest.approx(tau0)
    assert n.w.item() == pytest.approx(-math.log(tau0 - 1))


@pytest.mark.parametrize("x, alpha, grad", [
    (0.0, 2.0, 1.0),                 # alpha/2
    (1 / math.pi, 2.0, 0.5),         # 1 / (1 + (pi * 1/pi)^2)
    (-1 / math.pi, 2.0, 0.5),
    (2 / math.pi, 2.0, 0.2),         # 1 / (1 + 4)
    (0.0, 4.0, 2.0),
    (1 / (2 * math.pi), 4.0, 1.0),   # 2 / (1 + (2*pi/(2*pi))^2)
])
def test_surrogate_values(x, alpha, grad):
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    s = SpikeFn.apply(t, alpha)
    s.backward()
    assert s.item() == (1.0 if x >= 0 else 0.0)
    assert t.grad.item() == pytest.approx(grad)


def hand_backward(x, g, k, v_th, alpha):
    """dL/dx and dL/dk of L = sum(g * s) by backpropagation through time written out by hand
    (float64), for the neuron v = v' + (x - v') * k (k None: v = v' + x), s = H(v - v_th),
    v' = v * (1 - s) with s detached. With c = dL/dv'[t] carried back from step t+1:
        e = dL/ds[t] * surrogate(v[t] - v_th) + c * (1 - s[t]);  dL/dx[t] = e * k;  c <- e * (1 - k)
        dL/dk = sum_t e * (x[t] - v'[t-1])"""
    T = x.shape[0]
    vs, hs, v = [], [], torch.zeros_like(x[0])
    for t in range(T):
        vs.append(v)
        h = v + x[t] if k is None else v + (x[t] - v) * k
        hs.append(h)
        v = h * (h < v_th).to(h.dtype)
    gx, gk, c = torch.zeros_like(x), 0.0, torch.zeros_like(x[0])
    for t in reversed(range(T)):
        e = g[t] * atan_surrogate(hs[t] - v_th, alpha) + c * (hs[t] < v_th).to(x.dtype)
        gx[t] = e if k is None else e * k
        c = e if k is None else e * (1 - k)
        gk = gk + (e * (x[t] - vs[t])).sum()
    return gx, gk


@pytest.mark.parametrize("kind", ["plif", "lif", "if"])
def test_neuron_gradients_match_hand_written_bptt(kind):
    """Autograd through Neuron.forward == backpropagation through time written out by hand."""
    seeded(1)
    n = Neuron(kind, tau0=3.0, alpha=3.0).double()
    if kind == "plif":
        with torch.no_grad():
            n.w.fill_(0.3)                                  # k off 0.5
    x = (torch.randn(6, 3, 5, dtype=torch.float64) * 1.5).requires_grad_()
    g = torch.randn(6, 3, 5, dtype=torch.float64)
    s = n(x)
    grads = torch.autograd.grad((s * g).sum(), [x] + list(n.parameters()))
    k = n.leak()
    gx, gk = hand_backward(x.detach(), g, None if k is None else (k.detach() if kind == "plif" else k),
                           n.v_th, n.alpha)
    assert 0 < s.sum() < s.numel()
    assert torch.allclose(grads[0], gx, atol=1e-12) and grads[0].abs().sum() > 0
    if kind == "plif":                                      # dL/dw = dL/dk * k (1 - k)
        assert torch.allclose(grads[1], gk * k * (1 - k), atol=1e-12)


def step_by_step(n, x):
    v, out = torch.zeros_like(x[0]), []
    for x_t in x:
        s, v = n.step(x_t, v)
        out.append(s)
    return torch.stack(out)


def test_neuron_forward_is_its_step_loop_bit_for_bit():
    """float32, k off 0.5, inputs crowding the threshold: the same spikes, train and no_grad."""
    seeded(14)
    n = Neuron("plif")
    with torch.no_grad():
        n.w.fill_(0.8137)
    x = torch.rand(8, 64, 257) * 2.2
    ref = step_by_step(n, x)
    assert torch.equal(n(x), ref)
    with torch.no_grad():
        assert torch.equal(n(x), ref)
    assert 0.05 < ref.mean() < 0.95


def test_neuron_keeps_no_state():
    n = Neuron("plif")
    x = torch.rand(4, 2, 3) * 2
    assert torch.equal(n(x), n(x))
    assert [k for k, _ in n.named_buffers()] == []


# ---------------------------------------------------------------------------------------------
# BatchNorm per time step
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("momentum", [0.1, None])     # None: cumulative average (BN recalibration)
def test_time_batchnorm_equals_per_step_bn(momentum):
    seeded(2)
    tbn, ref = TimeBatchNorm(3, momentum=momentum), nn.BatchNorm2d(3, momentum=momentum)
    with torch.no_grad():
        tbn.weight.uniform_(0.5, 1.5), tbn.bias.uniform_(-0.5, 0.5)
    ref.load_state_dict(tbn.state_dict())
    x = (torch.randn(4, 5, 3, 6, 6) * 2 + 1).requires_grad_()
    y = tbn(x)
    y_ref = torch.stack([ref(x[t]) for t in range(4)])
    assert torch.allclose(y, y_ref, atol=1e-5)
    # each step normalised with its own statistics: step means are ~0 after BN minus bias
    assert torch.allclose(y[2].mean(dim=(0, 2, 3)), tbn.bias, atol=1e-5)
    for name in ("running_mean", "running_var"):
        assert torch.allclose(getattr(tbn, name), getattr(ref, name), atol=1e-6)
    assert tbn.num_batches_tracked.item() == ref.num_batches_tracked.item() == 4
    tbn(x), [ref(x[t]) for t in range(4)]                   # a second batch: 8 updates in all
    for name in ("running_mean", "running_var"):
        assert torch.allclose(getattr(tbn, name), getattr(ref, name), atol=1e-6)
    g = torch.randn_like(y)
    gx, = torch.autograd.grad((y * g).sum(), x)
    gx_ref, = torch.autograd.grad((y_ref * g).sum(), x)
    assert torch.allclose(gx, gx_ref, atol=1e-5)
    tbn.eval(), ref.eval()
    assert torch.allclose(tbn(x), torch.stack([ref(x[t]) for t in range(4)]), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Search space
# ---------------------------------------------------------------------------------------------

def test_search_space_sizes():
    assert CANDIDATES == ("skip_connect", "SCB_k3", "SCB_k5", "SRB_k3", "SRB_k5")
    b1, b3 = get_backbone("AutoSNN_16"), get_backbone("SNN_3")
    assert b1.searched == (0, 2, 3, 5, 6) and b1.size == 3125
    assert len(b3.searched) == 8 and b3.size == 390625
    archs = list(all_archs(b1))
    assert len(archs) == len(set(archs)) == 3125
    assert all(isinstance(a, Arch) and len(a) == 5 for a in archs[:10])


def test_arch_parse_print_roundtrip():
    text = "SRB_k5-SRB_k5-skip_connect-SRB_k3-SRB_k5"
    a = parse_arch(text)
    assert str(a) == text and a == AUTOSNN and parse_arch(str(a)) == a
    assert full_layout(a, get_backbone("SNN_1")) == ["SRB_k5", "m", "SRB_k5", "skip_connect", "m",
                                                     "SRB_k3", "SRB_k5", "m"]
    assert full_layout(a, get_backbone("SNN_4"))[1] == "a"
    assert resolve_arch("AutoSNN") == AUTOSNN
    assert set(NAMED_ARCHS) >= {"AutoSNN", "AutoSNN_lam0", "AutoSNN_lam016", "AutoSNN_lam024",
                                "random_search_lam0", "random_search_lam008", "AutoSNN_ANN_space"}


def test_sample_arch_uses_the_given_rng():
    b = get_backbone("SNN_1")
    a = [sample_arch(b, random.Random(7)) for _ in range(2)]
    assert a[0] == a[1]
    rng = random.Random(0)
    counts = {c: 0 for c in CANDIDATES}
    for _ in range(2000):
        for c in sample_arch(b, rng):
            counts[c] += 1
    assert all(abs(n / 10000 - 0.2) < 0.02 for n in counts.values())


@pytest.mark.parametrize("text, words", [
    ("SRB_k5-SRB_k5-skip-SRB_k3-SRB_k5", ["'skip'", "skip_connect, SCB_k3"]),
    ("SRB_k5-SRB_k5-SRB_k3", ["3 blocks", "5 searched"]),
    ("SRB_k5-m-SRB_k5-skip_connect-SRB_k3-SRB_k5", ["'m'"]),
])
def test_arch_errors(text, words):
    with pytest.raises(ValueError) as e:
        parse_arch(text)
    assert all(w in str(e.value) for w in words)


def test_other_input_errors():
    with pytest.raises(ValueError, match="unknown backbone 'SNN_9'"):
        get_backbone("SNN_9")
    with pytest.raises(ValueError, match="T must be"):
        SpikingNetwork("SNN_1_4", T=0)
    with pytest.raises(ValueError, match="tau0 must be > 1"):
        SpikingNetwork("SNN_1_4", T=2, tau0=1.0)
    with pytest.raises(ValueError, match="unknown neuron"):
        SpikingNetwork("SNN_1_4", T=2, neuron="relu")
    with pytest.raises(ValueError, match="unsupported input shape"):
        SpikingNetwork("SNN_1_4", T=2, input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="one step"):
        SpikingNetwork("SNN_1_4", T=4, neuron="ann")
    with pytest.raises(ValueError, match="5 searched positions"):
        SpikingNetwork("SNN_1_4", arch=["SCB_k3"] * 8)
    net = SpikingNetwork("SNN_1_4", T=2, arch=AUTOSNN)
    with pytest.raises(ValueError, match=r"expected \[B, 3, 32, 32\]"):
        net(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"expected \[B, 3, 32, 32\]"):
        net(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match="not"):
        net(torch.zeros(2, 3, 32, 32), arch=["SCB_k3"] * 5)
    with pytest.raises(ValueError, match="one path"):
        SpikingNetwork("SNN_1_4", T=2)(torch.zeros(2, 3, 32, 32))
    dvs = SpikingNetwork("SNN_1_4", T=2, input_shape=(2, 2, 32, 32), arch=AUTOSNN)
    with pytest.raises(ValueError, match=r"expected \[B, 2, 2, 32, 32\]"):
        dvs(torch.zeros(1, 3, 2, 32, 32))
    with pytest.raises(ValueError, match="frames"):
        SpikingNetwork("SNN_1_4", T=2, input_shape=(4, 2, 32, 32))


# ---------------------------------------------------------------------------------------------
# Network sizes (computed from the original code, plus one PLIF scalar per neuron layer)
# ---------------------------------------------------------------------------------------------


def test_exact_parameter_counts():
    assert count_parameters(SpikingNetwork("AutoSNN_16", 10, AUTOSNN)) == 417_626
    assert count_parameters(SpikingNetwork("AutoSNN_64", 10, AUTOSNN)) == 5_436_746
    assert count_parameters(SpikingNetwork("AutoSNN_16", 11, AUTOSNN, input_shape=(2, 128, 128))) == 430_059
    assert count_parameters(SpikingNetwork("AutoSNN_16", 10)) == 1_367_868
    assert plif_free(SpikingNetwork("AutoSNN_16", 200, AUTOSNN, input_shape=(3, 64, 64))) == 2_365_552
    assert plif_free(SpikingNetwork("AutoSNN_16", 100, AUTOSNN)) == 1_339_216
    assert plif_free(SpikingNetwork("AutoSNN_16", 10, NAMED_ARCHS["AutoSNN_lam0"])) == 565_072
    assert plif_free(SpikingNetwork("AutoSNN_16", 10, NAMED_ARCHS["AutoSNN_lam024"])) == 500_880


@pytest.mark.parametrize("backbone, block, params", [
    ("SNN_1", "SCB_k3", 269_584), ("SNN_2", "SCB_k3", 173_584), ("SNN_3", "SCB_k3", 686_224),
    ("SNN_4", "SCB_k3", 269_584), ("SNN_2", "SRB_k5", 471_248), ("SNN_3", "SRB_k3", 697_424),
])
def test_design_study_parameter_counts(backbone, block, params):
    n = len(get_backbone(backbone).searched)
    assert plif_free(SpikingNetwork(backbone, 10, [block] * n)) == params


# ---------------------------------------------------------------------------------------------
# Forward semantics
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone", ["SNN_1_4", "SNN_2_4", "SNN_3_4", "SNN_4_4"])
def test_every_candidate_everywhere_runs(backbone):
    seeded(3)
    net = SpikingNetwork(backbone, num_classes=3, T=2)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    for c in CANDIDATES:
        arch = [c] * len(net.backbone.searched)
        net.zero_grad(set_to_none=True)
        out, stats = net(x, arch)
        assert out.shape == (2, 3) and torch.all((out >= 0) & (out <= 2))
        rate_loss(out, y, 2).backward()
        path = net.path_parameters(arch)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in path)
        assert stats.spikes > 0


def test_output_is_population_rate_summed_over_T():
    seeded(4)
    net = SpikingNetwork("SNN_1_4", num_classes=4, arch=AUTOSNN, T=3, v_th=0.3)
    with torch.no_grad():
        net.fc.weight.mul_(8)                                   # drive the classifier neurons
    captured = {}
    net.fc_neuron.register_forward_hook(lambda m, i, o: captured.setdefault("s", o))
    out, _ = net(torch.randn(2, 3, 32, 32))
    s = captured["s"]                                          # [T, B, 4*10]
    assert s.shape == (3, 2, 40)
    assert 0 < s.sum() < s.numel()                             # some classifier neurons spike, not all
    assert torch.equal(out, s.view(3, 2, 4, 10).mean(3).sum(0))
    assert (out != out.round()).any()                          # a population mean, not one neuron
    assert torch.allclose(out * 10, (out * 10).round())       # multiples of 0.1 in [0, T]


def run_pair(net, x, arch, y=None):
    """Multi-step and one-step-at-a-time forwards (and backwards) on two copies of `net`."""
    a, b = net, copy.deepcopy(net)
    oa, sa = a(x, arch)
    ob, sb = b.forward_stepwise(x, arch)
    if y is not None:
        rate_loss(oa, y, net.T).backward()
        rate_loss(ob, y, net.T).backward()
    return a, b, (oa, sa), (ob, sb)


@pytest.mark.parametrize("backbone, shape, neuron, arch", [
    ("SNN_1_4", (3, 32, 32), "plif", "SRB_k5-SCB_k3-skip_connect-SRB_k3-SCB_k5"),
    ("SNN_2_4", (3, 32, 32), "lif", "SCB_k5-SRB_k3-SRB_k5-skip_connect-SRB_k3"),
    ("SNN_3_4", (3, 32, 32), "if", "skip_connect-skip_connect-SRB_k3-SCB_k3-SRB_k5-SCB_k3-skip_connect-SRB_k3"),
    ("SNN_4_4", (3, 32, 32), "plif", "SRB_k3-SCB_k3-skip_connect-SRB_k5-SRB_k3"),
    ("SNN_1_4", (3, 64, 64), "plif", "SRB_k3-SRB_k3-skip_connect-SCB_k3-SRB_k3"),
    ("SNN_1_4", (2, 32, 32), "plif", "SRB_k3-SRB_k3-skip_connect-SCB_k3-SRB_k3"),
])
def test_multistep_equals_stepwise(backbone, shape, neuron, arch):
    """Time-folded forward == the original's one-step-at-a-time loop: outputs, spike counts,
    gradients and BN running statistics (train), outputs and counts (eval)."""
    seeded(5)
    T = 3
    net = SpikingNetwork(backbone, num_classes=3, T=T, input_shape=shape, neuron=neuron,
                         tau0=3.0, v_th=0.5).double()
    x = torch.randn(3, T, *shape) if shape[0] == 2 else torch.randn(3, *shape)
    x, y = x.double() * 2, torch.tensor([0, 1, 2])
    a, b, (oa, sa), (ob, sb) = run_pair(net, x, arch, y)
    assert torch.allclose(oa, ob) and sa.names == sb.names
    assert torch.allclose(sa.counts, sb.counts) and sa.spikes > 0
    ga = dict((n, p.grad) for n, p in a.named_parameters() if p.grad is not None)
    gb = dict((n, p.grad) for n, p in b.named_parameters() if p.grad is not None)
    assert ga.keys() == gb.keys() and len(ga) > 10
    for n in ga:
        assert torch.allclose(ga[n], gb[n], atol=1e-9), n
    assert sum(g.abs().sum() for g in ga.values()) > 0
    for (n, ba), bb in zip(a.named_buffers(), b.buffers()):
        assert torch.allclose(ba, bb, atol=1e-10), n
    a.eval(), b.eval()
    with torch.no_grad():
        _, _, (oa, sa), (ob, sb) = run_pair(a, x, arch)
    assert torch.allclose(oa, ob) and torch.allclose(sa.counts, sb.counts)
    assert sa.spikes > 0


def test_stem_bn_runs_once_and_block_bns_every_step():
    seeded(6)
    net = SpikingNetwork("SNN_1_4", num_classes=2, arch=AUTOSNN, T=4)
    net(torch.randn(2, 3, 32, 32))
    assert net.stem.bn.num_batches_tracked.item() == 1
    assert net.layers[0]["SRB_k5"].cb1.bn.num_batches_tracked.item() == 4
    dvs = SpikingNetwork("SNN_1_4", num_classes=2, arch=AUTOSNN, T=4, input_shape=(2, 32, 32))
    dvs(torch.rand(2, 4, 2, 32, 32))
    assert dvs.stem.bn.num_batches_tracked.item() == 4


def test_dvs128_stem_shapes_and_counts():
    seeded(7)
    net = SpikingNetwork("SNN_1_4", num_classes=11, arch=AUTOSNN, T=2, input_shape=(2, 2, 128, 128))
    out, stats = net(torch.rand(1, 2, 2, 128, 128) * 3)
    assert out.shape == (1, 11)
    assert stats.names[:5] == ["stem.n1", "stem.pool1", "stem.n2", "stem.pool2", "layers.0.SRB_k5.n1"]
    assert stats.sizes[:4] == [4 * 128 * 128, 4 * 64 * 64, 4 * 64 * 64, 4 * 32 * 32]


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


def test_ann_mode():
    seeded(9)
    net = SpikingNetwork("SNN_1_4", num_classes=5, arch=AUTOSNN, T=1, neuron="ann")
    out, stats = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5) and net.fc.out_features == 5
    assert stats.spikes.item() == 0 and (out < 0).any()          # plain logits


# ---------------------------------------------------------------------------------------------
# Super-network and child
# ---------------------------------------------------------------------------------------------

def test_child_from_supernet_is_identical():
    seeded(10)
    sup = SpikingNetwork("SNN_1_4", num_classes=3, T=3, v_th=0.5)
    x = torch.randn(4, 3, 32, 32) * 2
    for _ in range(2):                                   # move BN running stats off their init
        sup(x, AUTOSNN)
    child = SpikingNetwork("SNN_1_4", num_classes=3, T=3, v_th=0.5, arch=AUTOSNN)
    missing = child.load_state_dict(sup.path_state_dict(AUTOSNN))
    assert not missing.missing_keys and not missing.unexpected_keys
    assert count_parameters(child) == sum(p.numel() for p in sup.path_parameters(AUTOSNN))
    for mode in ("eval", "train"):
        getattr(sup, mode)(), getattr(child, mode)()
        o1, s1 = sup(x, AUTOSNN)
        o2, s2 = child(x)
        assert torch.equal(o1, o2) and torch.equal(s1.counts, s2.counts) and s1.names == s2.names
        assert s1.spikes > 0


def test_supernet_path_touches_no_other_weights():
    seeded(11)
    sup = SpikingNetwork("SNN_1_4", num_classes=3, T=2)
    arch = parse_arch("SCB_k3-SRB_k5-skip_connect-SRB_k3-SCB_k5", sup.backbone)
    before = {k: v.clone() for k, v in sup.state_dict().items()}
    out, _ = sup(torch.randn(2, 3, 32, 32), arch)
    rate_loss(out, torch.tensor([0, 1]), 2).backward()
    on_path = set(sup.path_state_dict(arch))
    for name, p in sup.named_parameters():
        assert (p.grad is not None) == (name in on_path), name
    changed = {k for k, v in sup.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= on_path


# ---------------------------------------------------------------------------------------------
# Loss and accuracy
# ---------------------------------------------------------------------------------------------

def test_rate_loss_and_ties():
    out = torch.tensor([[4.0, 0.0], [2.0, 2.0]])          # T = 4: rates [1, 0] and [0.5, 0.5]
    y = torch.tensor([0, 1])
    # squared errors: (0 + 0 + 0.25 + 0.25) / 4 elements
    assert rate_loss(out, y, 4).item() == pytest.approx(0.125)
    assert predict(out).tolist() == [0, 0]                 # tie -> lowest class index
    assert predict(torch.tensor([[0.1, 0.3, 0.3]])).tolist() == [1]


# ---------------------------------------------------------------------------------------------
# Synaptic operations and the energy estimate
# ---------------------------------------------------------------------------------------------

def test_synaptic_ops_hand_count():
    def count(layer, x):
        tr = Trace(energy=True)
        with recording(tr, layer, "conv"):
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


def test_activation_checkpointing_changes_nothing_but_memory():
    seeded(13)
    net = SpikingNetwork("SNN_1_4", num_classes=3, T=3).double()
    ck = copy.deepcopy(net)
    ck.checkpoint = True
    x, y = torch.randn(3, 3, 32, 32, dtype=torch.float64) * 2, torch.tensor([0, 1, 2])
    arch = parse_arch("SRB_k5-SCB_k3-skip_connect-SRB_k3-SCB_k5", net.backbone)
    saved = []
    for m in (net, ck):
        sizes = {}

        def pack(t):
            sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out, stats = m(x, arch)
        rate_loss(out, y, 3).backward()
        saved.append((sum(sizes.values()), out, stats))
    assert saved[1][0] < saved[0][0] / 2                       # far less kept for backward
    assert torch.equal(saved[0][1], saved[1][1]) and torch.equal(saved[0][2].counts, saved[1][2].counts)
    for (n, a), b in zip(net.named_parameters(), ck.parameters()):
        assert (a.grad is None) == (b.grad is None), n
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-12), n
    for (n, a), b in zip(net.named_buffers(), ck.buffers()):
        assert torch.equal(a, b), n                            # BN statistics updated once, not twice


# ---------------------------------------------------------------------------------------------
# Bit-exact agreement in float32, compilation, mixed precision, saved networks
# ---------------------------------------------------------------------------------------------

def test_float32_spikes_equal_stepwise_on_events_and_after_adam():
    """The multi-step forward and the original's one-step loop give the same spikes bit for bit in
    float32: on 128x128 event input (the DVS stem) and after an Adam step has moved k off 0.5."""
    seeded(15)
    net = SpikingNetwork("SNN_1_4", num_classes=3, arch=AUTOSNN, T=2, input_shape=(2, 128, 128))
    ref = copy.deepcopy(net)
    x = (torch.rand(2, 2, 2, 128, 128) < 0.3).float() * torch.randint(1, 4, (2, 2, 2, 128, 128))
    y = torch.tensor([0, 2])
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for step in range(2):
        ref.load_state_dict(net.state_dict())            # same weights (and BN statistics) in both forms
        oa, sa = net(x)
        ob, sb = ref.forward_stepwise(x)
        assert torch.equal(oa, ob) and torch.equal(sa.counts, sb.counts), step
        assert sa.spikes > 0
        opt.zero_grad()
        rate_loss(oa, y, 2).backward()
        opt.step()
    assert torch.sigmoid(ref.stem.n1.w).item() != 0.5      # the second comparison ran with k off 0.5


def test_stats_are_detached_and_silent_layers_named():
    seeded(16)
    net = SpikingNetwork("SNN_1_4", num_classes=3, arch=AUTOSNN, T=2)
    out, stats = net(torch.randn(2, 3, 32, 32))
    assert not stats.counts.requires_grad and out.requires_grad
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        float(stats.spikes)
    assert stats.silent_layers() == [n for n, c in stats.summary()["per_layer"].items() if c == 0]
    quiet = SpikingNetwork("SNN_1_4", num_classes=3, arch=AUTOSNN, T=2, v_th=1e9)
    _, s = quiet(torch.randn(2, 3, 32, 32))
    assert s.silent_layers() == s.names and "stem.n1" in s.names


def test_fanout_cache_from_inference_mode_serves_training():
    seeded(17)
    net = SpikingNetwork("SNN_1_4", num_classes=3, arch=AUTOSNN, T=2, v_th=0.5)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        net(x, energy=True)
    out, stats = net(x, energy=True)                 # the cached fan-outs in a graph-building forward
    rate_loss(out, torch.tensor([0, 1]), 2).backward()
    assert stats.sops.sum() > 0 and not stats.sops.requires_grad


def test_bf16_autocast_keeps_membranes_bn_and_counts_in_float32():
    seeded(18)
    net = SpikingNetwork("SNN_1_4", num_classes=3, arch=AUTOSNN, T=2, v_th=0.5)
    seen = []
    for m in net.modules():
        if isinstance(m, (Neuron, TimeBatchNorm)):
            m.register_forward_hook(lambda m, i, o: seen.append((type(m).__name__, o.dtype)))
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, stats = net(x, energy=True)
    rate_loss(out.float(), torch.tensor([0, 1]), 2).backward()
    assert {d for _, d in seen} == {torch.float32} and len(seen) > 10
    assert stats.counts.dtype == torch.float64 and stats.spikes > 0
    assert all(b.dtype in (torch.float32, torch.int64) for b in net.buffers())
    assert net.stem.n1.w.grad is not None


def compiled(module):
    """`module` after autosnn.compile_network (skips the test without a working compiler)."""
    import autosnn
    lines = []
    autosnn.compile_network(module, log=lines.append)
    assert len(lines) == 1
    if "unavailable" in lines[0]:
        pytest.skip(lines[0])
    return module


def test_compiled_network_spikes_equal_eager():
    """torch.compile of the neuron loops (CPU inductor): the same spikes as eager, bit for bit, in
    training (with autograd), in evaluation, and under inference_mode."""
    seeded(19)
    net = SpikingNetwork("SNN_1_4", num_classes=3, arch=AUTOSNN, T=2, v_th=0.5)
    eager = copy.deepcopy(net)
    compiled(net)
    assert list(net.state_dict()) == list(eager.state_dict())
    assert all(m.loops is not None for m in net.modules() if isinstance(m, Neuron))
    assert all(m.loops is None for m in eager.modules() if isinstance(m, Neuron))
    x = torch.randn(2, 3, 32, 32) * 2
    oa, sa = net(x)
    ob, sb = eager(x)
    assert torch.equal(oa, ob) and torch.equal(sa.counts, sb.counts) and sa.spikes > 0
    rate_loss(oa, torch.tensor([0, 1]), 2).backward()
    rate_loss(ob, torch.tensor([0, 1]), 2).backward()
    assert torch.allclose(net.stem.n1.w.grad, eager.stem.n1.w.grad, rtol=1e-4, atol=1e-6)
    net.eval(), eager.eval()
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            (oa, sa), (ob, sb) = net(x), eager(x)
        assert torch.equal(oa, ob) and torch.equal(sa.counts, sb.counts) and sa.spikes > 0


def test_compiled_no_grad_loop_is_eager_bit_for_bit_and_never_falls_back():
    """One compiled neuron, many input shapes (T = 2..6, C = 4..8, ranks 3 and 5): every output
    equals the eager loop and neuron_step's, and no call runs eager because dynamo's recompile
    limit was hit (fail_on_recompile_limit_hit turns that silent fallback into an error)."""
    seeded(22)
    n = Neuron("plif")
    with torch.no_grad():
        n.w.fill_(0.8137)                                   # k off 0.5
    eager = copy.deepcopy(n)
    compiled(n)
    shapes = [(T, 3, C, 5, 5) for T in (2, 3, 4) for C in (4, 8)] + [(T, 3, 4 * C) for T in (2, 3, 4, 5, 6)
                                                                       for C in (1, 2)]
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        for shape in shapes:
            x = torch.rand(shape) * 2.2                     # crowding the threshold
            with torch.no_grad():
                a, b = n(x), eager(x)
            assert torch.equal(a, b) and torch.equal(a, step_by_step(n, x)), shape
            assert 0 < a.sum() < a.numel()


def test_compiled_training_loop_uses_alpha():
    """The surrogate gradient through the compiled loop with alpha = 3 equals eager's (a loop that
    kept the default alpha = 2 gives other gradients)."""
    seeded(23)
    n = Neuron("plif", alpha=3.0)
    with torch.no_grad():
        n.w.fill_(0.3)
    eager = copy.deepcopy(n)
    compiled(n)
    x = torch.rand(3, 4, 6, 5, 5) * 2
    g = torch.randn(3, 4, 6, 5, 5)
    grads = []
    for m in (n, eager):
        xr = x.clone().requires_grad_()
        s = m(xr)
        grads.append(torch.autograd.grad((s * g).sum(), [xr, m.w]))
    (gx, gw), (ex, ew) = grads
    assert gx.abs().sum() > 0
    assert torch.allclose(gx, ex, rtol=1e-5, atol=1e-6) and torch.allclose(gw, ew, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make", [
    lambda: SpikingNetwork("SNN_1_4", num_classes=3, arch=AUTOSNN, T=2, v_th=0.5, tau0=3.0),
    lambda: SpikingNetwork("SNN_2_4", num_classes=4, T=2, input_shape=(2, 2, 32, 32), neuron="lif"),
    lambda: __import__("baselines").HandcraftedSNN("resnet19-zheng", 3, T=2, width=4),
])
def test_saved_network_round_trip(tmp_path, make):
    import autosnn
    seeded(20)
    net = make()
    event = net.input_shape[0] == 2
    x = torch.rand(2, 2, 2, 32, 32) * 2 if event else torch.randn(2, 3, 32, 32)
    arch = None if getattr(net, "arch", None) is not None or not hasattr(net, "backbone") else AUTOSNN
    net(x, arch)                                      # move BN statistics off their init
    net.eval()
    run = tmp_path / "run"
    run.mkdir()
    name = "supernet_model.pt" if arch is not None else "model.pt"
    autosnn.save_model(net, run / name)
    doc = torch.load(run / name, weights_only=True)
    assert doc["format"] == "autosnn-model" and doc["version"] == 1 and doc["spec"] == net.spec()
    is_baseline = not isinstance(net, SpikingNetwork)
    if is_baseline:
        from files import AutoSNNError
        with pytest.raises(AutoSNNError, match="hand-crafted baseline: load it with baselines.load_model"):
            SpikingNetwork.load(run)
    for path in (run / name, run):
        back = (__import__("baselines").load_model(path) if is_baseline
                else SpikingNetwork.load(path, supernet=arch is not None))
        assert not back.training and type(back) is type(net)
        with torch.no_grad():
            (o1, s1), (o2, s2) = net(x, arch), back(x, arch)
        assert torch.equal(o1, o2) and torch.equal(s1.counts, s2.counts)


def test_load_errors(tmp_path):
    from files import AutoSNNError
    with pytest.raises(AutoSNNError, match="model.pt"):
        SpikingNetwork.load(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"junk")
    with pytest.raises(AutoSNNError, match="not a readable model file"):
        SpikingNetwork.load(tmp_path)
    torch.save({"a": 1}, tmp_path / "model.pt")
    with pytest.raises(AutoSNNError, match="not an AutoSNN model file"):
        SpikingNetwork.load(tmp_path / "model.pt")
    doc = {"format": "autosnn-model", "version": 0, "spec": {}, "state_dict": {}}
    torch.save(doc, tmp_path / "model.pt")
    with pytest.raises(AutoSNNError, match="made by an older version of this code; rerun"):
        SpikingNetwork.load(tmp_path)
    net = SpikingNetwork("SNN_1_4", num_classes=3, arch=AUTOSNN, T=2)
    autosnn_save(net, tmp_path / "model.pt")
    doc = torch.load(tmp_path / "model.pt", weights_only=True)
    doc["spec"]["num_classes"] = 4                          # the spec no longer fits the weights
    torch.save(doc, tmp_path / "model.pt")
    with pytest.raises(AutoSNNError, match=r"model.pt: the weights do not fit the network the file describes"):
        SpikingNetwork.load(tmp_path)
    doc["spec"]["colour"] = "red"                           # a field this code does not know
    torch.save(doc, tmp_path / "model.pt")
    with pytest.raises(AutoSNNError, match="spec does not fit this code"):
        SpikingNetwork.load(tmp_path)


def autosnn_save(net, path):
    import autosnn
    autosnn.save_model(net, path)


def test_core_files_copy_out_as_a_closed_set():
    """autosnn.py, layers.py, neurons.py, spikes.py, search_space.py and files.py import only each other, the
    standard library, numpy and torch (anywhere in the file, lazy imports included): copied into
    another project, loading a saved network cannot fail with a ModuleNotFoundError."""
    import ast
    import sys
    from pathlib import Path
    core = {"autosnn", "layers", "neurons", "spikes", "search_space", "files"}
    allowed = core | set(sys.stdlib_module_names) | {"numpy", "torch"}
    for name in core:
        tree = ast.parse((Path(__file__).parent / f"{name}.py").read_text())
        used = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        used |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        used |= {n.args[0].value.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and getattr(n.func, "id", None) == "__import__" and isinstance(n.args[0], ast.Constant)}
        assert used <= allowed, (name, used - allowed)
