"""The fast execution forms (fast/) against the plain forms, bit for bit: the compiled neuron
loops, per-step BatchNorm written into one output, the CUDA graphs' fallback, and (where a GPU
exists) CUDA graphs and the compiled loops on CUDA. (Counting: test_spikes.py.)
"""
import copy
import json

import pytest
import torch
from conftest import by_steps, seeded

from autosnn import SpikingNetwork, rate_loss
from fast.compiled import compile_network
from neurons import Neuron
from search_space import AUTOSNN


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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# ---------------------------------------------------------------------------------------------
# Per-step layers without their copies: BatchNorm written into one output, convolutions folded
# ---------------------------------------------------------------------------------------------

def grads_and_state(net, run):
    """run() -> loss; then every parameter's gradient and every buffer, in order."""
    run().backward()
    return ([p.grad.clone() for p in net.parameters() if p.grad is not None] + [b.clone() for b in net.buffers()])


@pytest.mark.parametrize("T, B, C, H, momentum", [(4, 5, 3, 6, 0.1), (3, 2, 1, 5, 0.1), (2, 4, 6, 1, None),
                                                  (1, 3, 4, 3, 0.3), (3, 6, 2, 2, None)])
def test_step_batch_norm_is_the_plain_form_bit_for_bit(T, B, C, H, momentum):
    """StepBatchNorm against TimeBatchNorm's plain per-step form, two training calls: outputs,
    input / weight / bias gradients, running statistics and num_batches_tracked, equal bit for bit
    (C = 1 and H = W = 1 are the shapes where BatchNorm2d's CPU kernel takes other paths;
    momentum None is the cumulative average)."""
    from fast.steps import use_step_layers
    from layers import TimeBatchNorm
    seeded(40)
    plain = TimeBatchNorm(C, momentum=momentum)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5), plain.bias.uniform_(-0.5, 0.5)
        plain.running_mean.normal_(), plain.running_var.uniform_(0.5, 2)
    fast = copy.deepcopy(plain)
    assert use_step_layers(fast) == 1 and fast.per_step is not None
    for _ in range(2):
        x = torch.randn(T, B, C, H, H) * 2 + 1
        g = torch.randn(T, B, C, H, H)
        out = []
        for bn in (plain, fast):
            xr = x.clone().requires_grad_()
            y = bn(xr)
            y.backward(g)
            out.append([y, xr.grad])
        assert all(torch.equal(a, b) for a, b in zip(*out))
    assert torch.equal(plain.weight.grad, fast.weight.grad) and torch.equal(plain.bias.grad, fast.bias.grad)
    assert all(torch.equal(a, b) for a, b in zip(plain.buffers(), fast.buffers()))
    assert int(fast.num_batches_tracked) == 2 * T


@pytest.mark.parametrize("cin, cout, k, stride, shifted, T, B, H", [
    (4, 4, 5, 1, False, 3, 4, 8), (4, 8, 3, 2, False, 2, 3, 9), (6, 6, 1, 1, False, 4, 2, 4),
    (4, 3, 1, 2, True, 3, 2, 8), (2, 4, 3, 1, False, 1, 5, 6)])
def test_step_conv_is_the_plain_form_bit_for_bit(cin, cout, k, stride, shifted, T, B, H):
    """StepConv (one call over T*B images forward and for the input gradient, the weight gradient
    per step added last step first) against layers.Conv's plain per-step form under autograd:
    outputs, input and weight gradients equal bit for bit; kernels 5/3/1, stride 2, T = 1, and the
    shifted, non-contiguous view a factorized reduce's second conv reads. Without autograd both
    run the folded call."""
    from fast.steps import use_step_layers
    from layers import Conv
    seeded(45)
    plain = Conv(cin, cout, k, stride)
    fast = copy.deepcopy(plain)
    assert use_step_layers(fast) == 1
    x = (torch.rand(T, B, cin, H + shifted, H + shifted) > 0.6).float() * 1.5
    out = []
    for conv in (plain, fast):
        xr = x.clone().requires_grad_()
        y = conv(xr[..., 1:, 1:] if shifted else xr)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        y.backward(g)
        out.append([y, xr.grad, conv.weight.grad])
    assert all(torch.equal(a, b) for a, b in zip(*out)) and out[0][2].abs().sum() > 0
    with torch.no_grad():
        assert torch.equal(plain(x), fast(x))


@pytest.mark.parametrize("backbone, arch, shape", [
    ("SNN_1_4", "AutoSNN", (3, 32, 32)),
    ("SNN_3_4", "skip_connect-skip_connect-SRB_k3-SCB_k3-SRB_k5-skip_connect-SRB_k3-SCB_k3", (2, 32, 32))])
def test_step_layers_network_equals_plain_after_adam_steps(backbone, arch, shape):
    """A network whose BN layers and convolutions all run the fast per-step forms against the plain
    network, three training steps with Adam (one under bf16 autocast, where the convolutions run
    their plain form, one with a block-level activation checkpoint, whose recomputation must leave
    the running statistics alone): the same loss, every gradient and every buffer bit for bit after
    each step, then the same eval output. Static images, and event frames through the event stem
    with factorized-reduce skips."""
    from fast.steps import use_step_layers
    from search_space import resolve_arch
    seeded(41)
    plain = SpikingNetwork(backbone, num_classes=3, arch=resolve_arch(arch, backbone), T=3, input_shape=shape,
                           v_th=0.5)
    fast = copy.deepcopy(plain)
    assert use_step_layers(fast) > 10
    opts = [torch.optim.Adam(n.parameters(), lr=1e-2) for n in (plain, fast)]
    x = torch.randint(0, 3, (4, 3, *shape)).float() if shape[0] == 2 else torch.randn(4, *shape) * 2
    y = torch.tensor([0, 1, 2, 0])
    for step, (amp, checkpoint) in enumerate([(False, False), (True, False), (False, True)]):
        got = []
        for net, opt in zip((plain, fast), opts):
            net.checkpoint = checkpoint
            opt.zero_grad(set_to_none=True)

            def run():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                    out, stats = net(x)
                assert stats.spikes > 0
                return rate_loss(out.float(), y, 3)
            got.append(grads_and_state(net, run))
            opt.step()
        assert len(got[0]) == len(got[1]) and all(torch.equal(a, b) for a, b in zip(*got)), step
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), fast.state_dict().values()))
    plain.eval(), fast.eval()
    with torch.no_grad():
        assert torch.equal(plain(x)[0], fast(x)[0])


def _conformance_cases():
    from benchmarks.conformance import DATA
    return json.loads(DATA.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", _conformance_cases()["cases"])
def test_step_layers_match_the_original(name):
    """The conformance cases (tests/test_conformance.py) with every BN layer and convolution in its
    fast per-step form, as train.py runs them: the original's numbers within the conformance
    tolerances anywhere, bit for bit where the goldens were made (training before and after an
    Adam step, BN recalibration with momentum None, eval)."""
    from benchmarks.conformance import differences, machine, measure_ours, threads
    from fast.steps import use_step_layers
    golden = _conformance_cases()
    case = golden["cases"][name]
    replaced = []
    with threads(golden["made_with"]["threads"]):
        ours = measure_ours(case["case"], lambda net: replaced.append(use_step_layers(net)))
    assert replaced[0] > 10
    exact = machine() == {k: golden["made_with"][k] for k in machine()}
    assert differences(ours, case["golden"], exact=exact) == []


# ---------------------------------------------------------------------------------------------
# CUDA graphs (the CPU fallback here; the graphs themselves where a GPU exists)
# ---------------------------------------------------------------------------------------------

def test_graphed_steps_fall_back_to_eager_off_cuda_with_one_line():
    """On a CPU GraphedSteps logs one line and runs the plain steps: the same loss, gradients and
    evaluation output as calling the network."""
    from fast.graphs import GraphedSteps
    seeded(42)
    net = SpikingNetwork("SNN_1_4", num_classes=3, arch=AUTOSNN, T=2, v_th=0.5)
    twin = copy.deepcopy(net)
    lines = []
    steps = GraphedSteps(net, lambda n, out, y: rate_loss(out, y, n.T), log=lines.append)
    assert len(lines) == 1 and "CUDA graphs need a CUDA device" in lines[0]
    x, y = torch.randn(2, 3, 32, 32) * 2, torch.tensor([0, 2])
    out, stats, loss = steps.train(x, y)
    out2, stats2 = twin(x)
    loss2 = rate_loss(out2, y, 2)
    loss2.backward()
    assert torch.equal(loss, loss2) and torch.equal(stats.counts, stats2.counts)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(net.parameters(), twin.parameters()))
    net.eval(), twin.eval()
    (o, s), (o2, s2) = steps.evaluate(x), twin(x, energy=True)
    assert torch.equal(o, o2) and torch.equal(s.sops, s2.sops) and s.sops.sum() > 0


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def cuda_plain_algorithms():
    """cuDNN's default algorithm choice (no autotuning), restored afterwards."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    yield
    torch.backends.cudnn.benchmark = before


@cuda
def test_cuda_graphs_equal_eager_bit_for_bit(cuda_plain_algorithms):
    """A child network trained with GraphedSteps (2 eager warm-up steps, then capture and replays,
    and one shorter batch that runs eager) against the same network trained eagerly, Adam after
    every step: outputs, spike counts, loss, every gradient, every parameter and buffer equal bit
    for bit after each step; then the evaluation forward (captured after 2 warm-up calls)."""
    from fast.graphs import GraphedSteps
    seeded(43)
    dev = torch.device("cuda")
    eager = SpikingNetwork("SNN_1_4", num_classes=3, arch=AUTOSNN, T=3, v_th=0.5).to(dev)
    graphed = copy.deepcopy(eager)
    loss_fn = lambda n, out, y: rate_loss(out, y, n.T)                      # noqa: E731
    lines = []
    steps = GraphedSteps(graphed, loss_fn, log=lines.append)
    opts = [torch.optim.Adam(n.parameters(), lr=1e-2) for n in (eager, graphed)]
    g = torch.Generator().manual_seed(0)
    for i, batch in enumerate([8, 8, 8, 8, 5, 8]):
        x = (torch.randn(batch, 3, 32, 32, generator=g) * 2).to(dev)
        y = torch.randint(0, 3, (batch,), generator=g).to(dev)
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        out_e, stats_e = eager(x)
        loss_e = loss_fn(eager, out_e, y)
        loss_e.backward()
        out_g, stats_g, loss_g = steps.train(x, y)
        assert torch.equal(out_e, out_g) and torch.equal(loss_e, loss_g), i
        assert torch.equal(stats_e.counts, stats_g.counts) and stats_g.spikes > 0, i
        assert all(torch.equal(a.grad, b.grad) for a, b in zip(eager.parameters(), graphed.parameters())), i
        for opt in opts:
            opt.step()
        assert all(torch.equal(a, b) for a, b in zip(eager.state_dict().values(), graphed.state_dict().values())), i
    assert any("captured the train step" in line for line in lines), lines
    eager.eval(), graphed.eval()
    for i in range(4):
        x = (torch.randn(8, 3, 32, 32, generator=g) * 2).to(dev)
        with torch.inference_mode():
            out_e, stats_e = eager(x, energy=True)
        out_g, stats_g = steps.evaluate(x)
        assert torch.equal(out_e, out_g) and torch.equal(stats_e.counts, stats_g.counts), i
        assert torch.equal(stats_e.sops, stats_g.sops), i
    assert any("captured the eval step" in line for line in lines), lines


@cuda
def test_compiled_loops_equal_eager_on_cuda_bit_for_bit(cuda_plain_algorithms):
    """The compiled neuron loops on CUDA (Triton, with the inductor options that keep eager
    rounding) against eager: spikes in training and in evaluation and the input gradient bit for
    bit (the PLIF w gradient is a sum over every unit, which the compiled backward adds in another
    order: close, as on a CPU). Inputs crowd the threshold, so a contracted FMA in v + (x - v) * k
    or an approximate division in the surrogate would show."""
    seeded(44)
    dev = torch.device("cuda")
    n = Neuron("plif", alpha=3.0).to(dev)
    with torch.no_grad():
        n.w.fill_(0.8137)
    eager = copy.deepcopy(n)
    compiled(n)
    for shape in [(4, 16, 8, 9, 9), (6, 32, 300)]:
        x = (torch.rand(shape, device=dev) * 2.2).requires_grad_()
        g = torch.randn(shape, device=dev)
        got = []
        for m in (n, eager):
            xr = x.detach().clone().requires_grad_()
            s = m(xr)
            got.append((s, *torch.autograd.grad((s * g).sum(), [xr, m.w])))
            with torch.no_grad():
                got.append((m(x.detach()),))
        assert 0 < got[1][0].sum() < got[1][0].numel()
        assert torch.equal(got[0][0], got[2][0]) and torch.equal(got[1][0], got[3][0]), shape
        assert torch.equal(got[0][1], got[2][1]), shape
        assert torch.allclose(got[0][2], got[2][2], rtol=1e-4, atol=1e-6), shape
    net = SpikingNetwork("SNN_1_4", num_classes=3, arch=AUTOSNN, T=3, v_th=0.5).to(dev)
    plain = copy.deepcopy(net)
    compiled(net)
    x = torch.randn(4, 3, 32, 32, device=dev) * 2
    (oa, sa), (ob, sb) = net(x), plain(x)
    assert torch.equal(oa, ob) and torch.equal(sa.counts, sb.counts) and sa.spikes > 0
