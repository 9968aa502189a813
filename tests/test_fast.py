"""The fast execution forms (fast/) against the plain forms, bit for bit: the compiled neuron
loops, per-step BatchNorm written into one output, counting through hooks registered once, and
(where a GPU exists) CUDA graphs and the compiled loops on CUDA.
"""
import copy

import pytest
import torch

from autosnn import SpikingNetwork, rate_loss
from fast.compiled import compile_network
from neurons import Neuron
from search_space import AUTOSNN


def seeded(seed=0):
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def by_steps(n, x):
    """Neuron n's spikes from Neuron.step, one time step at a time. x: [T, B, ...]."""
    v, out = torch.zeros_like(x[0]), []
    for x_t in x:
        s, v = n.step(x_t, v)
        out.append(s)
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------
# Compiled loops
# ---------------------------------------------------------------------------------------------

def compiled(module):
    """`module` after compile_network (skips the test without a working compiler)."""
    lines = []
    compile_network(module, log=lines.append)
    assert len(lines) == 1
    if "unavailable" in lines[0] or "need torch" in lines[0]:
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
            assert torch.equal(a, b) and torch.equal(a, by_steps(n, x)), shape
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
