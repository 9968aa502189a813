"""Tests of the neurons (neurons.py): golden trajectories, the surrogate, BPTT by hand, the step loop,
and per-step BatchNorm (the compiled loops: test_fast.py).

Golden values are computed by hand in the comments, not by the code under test.
"""
import math

import pytest
import torch
import torch.nn as nn
from conftest import by_steps, seeded

from layers import TimeBatchNorm
from neurons import Neuron, SpikeFn, atan_surrogate


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


def test_neuron_forward_is_its_step_loop_bit_for_bit():
    """float32, k off 0.5, inputs crowding the threshold: the same spikes, train and no_grad."""
    seeded(14)
    n = Neuron("plif")
    with torch.no_grad():
        n.w.fill_(0.8137)
    x = torch.rand(8, 64, 257) * 2.2
    ref = by_steps(n, x)
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



def test_membrane_update_rounds_as_v_plus_x_minus_v_times_k():
    """The charge is v + (x - v) * k in float32, in that order, as the original computes it: the
    same value written as lerp(v, x, k) or v * (1 - k) + x * k rounds differently in about a third
    of cases, and a membrane at the threshold then flips a spike. Checked against numpy's float32
    arithmetic, one operation at a time, on random values (k in (0, 1), both halves)."""
    import numpy as np
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(4096, generator=g), torch.rand(4096, generator=g)
    for k in (0.3, 0.5, 0.7, torch.rand((), generator=g).item()):
        n = Neuron("plif", tau0=1 / k)                                  # sigmoid(w) = k, rounded
        kk = n.leak().detach()
        _, v_new = n.step(x, v)                                        # reset needs a spike; v < 1 mostly
        xs, vs, ks = x.numpy(), v.numpy(), np.float32(kk.item())
        want = vs + (xs - vs).astype(np.float32) * ks                  # float32 throughout
        fired = (want >= 1.0)
        assert np.array_equal(v_new.detach().numpy()[~fired], want[~fired]), k
