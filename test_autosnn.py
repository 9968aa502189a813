"""Tests of the network (autosnn.py, layers.py): parameter counts, forward semantics, the super-network
and its children, the loss, bit-exact forms, mixed precision and saved networks.
Run: python -m pytest -q
Golden values are computed by hand in the comments, not by the code under test.
"""
import copy

import pytest
import torch

from autosnn import SpikingNetwork, count_parameters, predict, rate_loss
from layers import TimeBatchNorm
from neurons import Neuron
from search_space import AUTOSNN, CANDIDATES, NAMED_ARCHS, get_backbone, parse_arch


def seeded(seed=0):
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Network sizes (computed from the original code, plus one PLIF scalar per neuron layer)
# ---------------------------------------------------------------------------------------------


def test_exact_parameter_counts():
    assert count_parameters(SpikingNetwork("AutoSNN_16", 10, AUTOSNN)) == 417_626
    assert count_parameters(SpikingNetwork("AutoSNN_64", 10, AUTOSNN)) == 5_436_746
    assert count_parameters(SpikingNetwork("AutoSNN_16", 11, AUTOSNN, input_shape=(2, 128, 128))) == 430_059
    assert count_parameters(SpikingNetwork("AutoSNN_16", 10)) == 1_367_868
    assert count_parameters(SpikingNetwork("AutoSNN_16", 200, AUTOSNN, input_shape=(3, 64, 64)), taus=False) == 2_365_552
    assert count_parameters(SpikingNetwork("AutoSNN_16", 100, AUTOSNN), taus=False) == 1_339_216
    assert count_parameters(SpikingNetwork("AutoSNN_16", 10, NAMED_ARCHS["AutoSNN_lam0"]), taus=False) == 565_072
    assert count_parameters(SpikingNetwork("AutoSNN_16", 10, NAMED_ARCHS["AutoSNN_lam024"]), taus=False) == 500_880


@pytest.mark.parametrize("backbone, block, params", [
    ("SNN_1", "SCB_k3", 269_584), ("SNN_2", "SCB_k3", 173_584), ("SNN_3", "SCB_k3", 686_224),
    ("SNN_4", "SCB_k3", 269_584), ("SNN_2", "SRB_k5", 471_248), ("SNN_3", "SRB_k3", 697_424),
])
def test_design_study_parameter_counts(backbone, block, params):
    n = len(get_backbone(backbone).searched)
    assert count_parameters(SpikingNetwork(backbone, 10, [block] * n), taus=False) == params


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

@pytest.mark.parametrize("backbone, shape, T", [("SNN_1_4", (2, 128, 128), 2), ("SNN_2_4", (3, 32, 32), 4)])
def test_float32_equals_stepwise_bit_for_bit_after_adam(backbone, shape, T):
    """The multi-step forward and the original's one-step loop give the same outputs, spikes and
    gradients bit for bit in float32, also after an Adam step has moved k off 0.5: on 128x128 event
    input (the DVS stem) and on images with T = 4 (sums over more than two steps, whose order
    changes their rounding)."""
    seeded(15)
    net = SpikingNetwork(backbone, num_classes=3, arch=AUTOSNN, T=T, input_shape=shape, v_th=0.5)
    ref = copy.deepcopy(net)
    if shape[0] == 2:
        x = (torch.rand(2, T, *shape) < 0.3).float() * torch.randint(1, 4, (2, T, *shape))
    else:
        x = torch.randn(4, *shape) * 2
    y = torch.tensor([0, 2, 1, 0])[:len(x)]
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for step in range(2):
        ref.load_state_dict(net.state_dict())            # same weights (and BN statistics) in both forms
        opt.zero_grad()
        ref.zero_grad()
        oa, sa = net(x)
        ob, sb = ref.forward_stepwise(x)
        assert torch.equal(oa, ob) and torch.equal(sa.counts, sb.counts), step
        assert sa.spikes > 0
        rate_loss(oa, y, T).backward()
        rate_loss(ob, y, T).backward()
        for (name, a), b in zip(net.named_parameters(), ref.parameters()):
            assert torch.equal(a.grad, b.grad), (step, name)
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


COPY_OUT = ("autosnn", "layers", "neurons", "spikes", "search_space", "files")


def test_core_files_copy_out_as_a_closed_set():
    """autosnn.py, layers.py, neurons.py, spikes.py, search_space.py and files.py import only each other, the
    standard library, numpy and torch (anywhere in the file, lazy imports included): copied into
    another project, loading a saved network cannot fail with a ModuleNotFoundError."""
    import ast
    import sys
    from pathlib import Path
    allowed = set(COPY_OUT) | set(sys.stdlib_module_names) | {"numpy", "torch"}
    for name in COPY_OUT:
        tree = ast.parse((Path(__file__).parent / f"{name}.py").read_text())
        used = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        used |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        used |= {n.args[0].value.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and getattr(n.func, "id", None) == "__import__" and isinstance(n.args[0], ast.Constant)}
        assert used <= allowed, (name, used - allowed)


def test_core_files_run_alone_in_another_folder(tmp_path):
    """The six files copied into an empty folder (nothing else of the project importable) build a
    super-network and a child, train a step, count spikes, save and load a network."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    for name in COPY_OUT:
        shutil.copy(Path(__file__).parent / f"{name}.py", tmp_path)
    script = (
        "import torch\n"
        "from autosnn import SpikingNetwork, rate_loss, save_model\n"
        "from search_space import AUTOSNN\n"
        "torch.manual_seed(0)\n"
        "sup = SpikingNetwork('AutoSNN_4', 10, T=2)\n"
        "net = SpikingNetwork('AutoSNN_4', 10, AUTOSNN, T=2)\n"
        "net.load_state_dict(sup.path_state_dict(AUTOSNN))\n"
        "x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])\n"
        "out, stats = net(x)\n"
        "rate_loss(out, y, net.T).backward()\n"
        "save_model(net.eval(), 'model.pt')\n"
        "back = SpikingNetwork.load('model.pt')\n"
        "with torch.no_grad():\n"
        "    assert torch.equal(back(x)[0], net(x)[0])\n"
        "print('ok', float(stats.spikes) > 0)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["ok", "True"]
