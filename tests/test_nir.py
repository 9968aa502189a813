"""Tests of export/nir.py: the NIR graph reproduces independent readers' numbers, round trip, bad input.

Golden numbers (tests/data/nir/golden.npz) were made by tools/golden_nir.py (see its docstring): the
small trained network in tests/data/nir/model.pt, exported with to_nir, read back from a .nir file and
run on the 16 images of tests/data/nir/inputs.npz, one image and one step at a time, by Norse 1.1
(its node mapping under nirtorch 2.6) and snnTorch 1.0 (import_from_nir), in a scratch environment.
Stored: every neuron node's output spikes [T, B, ...] (bit-packed) and the class scores [B, K].
Spikes may differ only where a membrane lands on the threshold (we fire at v >= v_th, NIR readers
at v > v_th; BN folding and tau = dt / k round differently): at most MAX_DIFF of all neuron outputs.
Tests that need the `nir` package skip without it (pip install nir).
"""
import importlib.util
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from autosnn import SpikingNetwork, load_model, save_model
from baselines import HandcraftedSNN
from export.nir import graphs_equal, import_nir, run_nir, to_nir, write_nir
from files import AutoSNNError
from layers import MaxPool
from neurons import Neuron


DATA = Path(__file__).parent / "data" / "nir"
MAX_DIFF = 1e-3       # fraction of neuron outputs (all layers, steps, images) allowed to differ
needs_nir = pytest.mark.skipif(importlib.util.find_spec("nir") is None,
                               reason="needs the nir package (pip install nir)")


def golden_inputs():
    from data import NORMALISATION
    d = np.load(DATA / "inputs.npz")
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in NORMALISATION["synthetic"])
    return (torch.from_numpy(d["images"]).float() / 255 - mean) / std, torch.from_numpy(d["labels"])


def golden(reader):
    """(scores [B, K], {neuron node: spikes [T, B, ...] bool}) stored for `reader`."""
    g = np.load(DATA / "golden.npz")
    spikes = {}
    for key in g.files:
        if key.startswith(f"{reader}/spikes/"):
            name = key.split("/", 2)[2]
            shape = tuple(g[f"{reader}/shape/{name}"])
            spikes[name] = torch.from_numpy(np.unpackbits(g[key])[: int(np.prod(shape))].reshape(shape).astype(bool))
    return torch.from_numpy(g[f"{reader}/scores"]), spikes


def our_spikes(net, x):
    """Our network's output spikes of every neuron layer and max-pool, by module name ([T, B, ...])."""
    rec, hooks = {}, []
    for name, m in net.named_modules():
        if isinstance(m, (Neuron, MaxPool)):
            hooks.append(m.register_forward_hook(lambda m, i, o, n=name: rec.__setitem__(n, o.bool())))
    with torch.no_grad():
        out, _ = net(x)
    for h in hooks:
        h.remove()
    return out, rec


def disagreement(ours: dict, theirs: dict):
    """(differing neuron outputs, all neuron outputs), over the layers both have (which must be all)."""
    assert set(ours) == set(theirs), set(ours) ^ set(theirs)
    diff = sum(int((ours[k].bool() != theirs[k].bool()).sum()) for k in theirs)
    return diff, sum(v.numel() for v in theirs.values())


@pytest.mark.parametrize("reader", ["norse", "snntorch"])
def test_our_network_reproduces_the_readers_golden_numbers(reader):
    net = load_model(DATA / "model.pt")
    x, labels = golden_inputs()
    scores, spikes = golden(reader)
    out, ours = our_spikes(net, x)
    diff, total = disagreement(ours, spikes)
    print(f"{reader}: our network differs in {diff} of {total} neuron outputs ({diff / total:.2e})")
    assert diff / total < MAX_DIFF
    assert sum(int(s.sum()) for s in spikes.values()) > 0.02 * total     # a network that really fires
    assert torch.equal(out.argmax(1), scores.argmax(1))
    assert (out.argmax(1) == labels).float().mean() > 0.5                 # and really classifies
    assert torch.allclose(out, scores, atol=0.1 * 4 + 1e-5)               # at most a few flipped output spikes


@needs_nir
@pytest.mark.parametrize("reader", ["norse", "snntorch"])
def test_exported_graph_reproduces_the_readers_golden_numbers(reader):
    """Our own runner of the exported graph (NIR's equations, v > v_th) against the reader."""
    nir = import_nir()
    net = load_model(DATA / "model.pt")
    x, _ = golden_inputs()
    scores, spikes = golden(reader)
    dt, pooling = (1.0, "sum") if reader == "norse" else (1e-4, "conv")
    buf = io.BytesIO()
    nir.write(buf, to_nir(net, dt=dt, pooling=pooling))
    buf.seek(0)
    out, ran = run_nir(nir.read(buf), x, net.T)
    diff, total = disagreement(ran, spikes)
    print(f"{reader}: the exported graph differs in {diff} of {total} neuron outputs ({diff / total:.2e})")
    assert diff / total < MAX_DIFF
    assert torch.equal(out.argmax(1), scores.argmax(1))
    assert torch.allclose(out, scores, atol=1e-5) or diff > 0


@needs_nir
def test_round_trip_is_node_for_node_equal(tmp_path):
    nir = import_nir()
    net = load_model(DATA / "model.pt")
    graph = write_nir(net, tmp_path / "net.nir", log=lambda s: None)
    back = nir.read(tmp_path / "net.nir")
    assert graphs_equal(graph, back) == []
    assert [p.name for p in tmp_path.iterdir()] == ["net.nir"]          # no temporary file left
    kinds = {type(n).__name__ for n in graph.nodes.values()}
    assert kinds == {"Input", "Conv2d", "LIF", "SumPool2d", "Flatten", "Linear", "Affine", "Output"}
    # the SRB joins: two edges into the block's last neuron
    assert sorted(a for a, b in graph.edges if b == "layers.0.SRB_k3.n2") == ["layers.0.SRB_k3.cb2", "stem.n1"]
    assert sorted(a for a, b in graph.edges if b == "layers.2.SRB_k3.n2") == ["layers.2.SRB_k3.cb2",
                                                                            "layers.2.SRB_k3.shortcut"]
    meta = back.metadata
    assert meta["architecture"] == str(net.arch) and int(meta["T"]) == 4 and float(meta["dt"]) == 1.0
    back.nodes["fc"].weight[0, 0] += 1          # and the comparison can see a difference
    assert graphs_equal(graph, back) != []


def seeded(net, seed=0):
    """Random BN statistics and affine so that every layer fires (an untrained network barely does)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 1.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.3)
        if isinstance(m, torch.nn.Linear):
            m.weight.data *= 6
        if isinstance(m, Neuron) and m.kind == "plif":
            m.w.data.fill_(0.7)
    return net.eval()


@needs_nir
@pytest.mark.parametrize("make", [
    # SNN_3: searched stride-2 positions -> factorized reduce (skip) and stride-2 1x1-conv shortcuts (SRB)
    lambda: SpikingNetwork("SNN_3_4", 3, "SRB_k3-skip_connect-SCB_k3-skip_connect-SRB_k3-SRB_k3-skip_connect-SRB_k3",
                           T=3),
    lambda: SpikingNetwork("SNN_2_4", 3, "SRB_k3-skip_connect-SCB_k3-SRB_k3-skip_connect", T=3, neuron="if"),
    lambda: SpikingNetwork("SNN_4_4", 3, "SCB_k3-SRB_k3-skip_connect-SRB_k3-SCB_k3", T=3, neuron="if"),
    lambda: HandcraftedSNN("resnet11-lee", 3, T=3, width=4, neuron="if"),
    lambda: SpikingNetwork("AutoSNN_4", 3, "SRB_k3-SRB_k3-skip_connect-SCB_k3-SRB_k3", T=3, input_shape=(3, 2, 32, 32),
                           neuron="lif", tau0=1.5),
], ids=["snn3-factorized", "snn2-gap-if", "snn4-avgpool-if", "resnet11-baseline", "event-stem"])
@pytest.mark.parametrize("pooling", ["sum", "conv"])
def test_graph_computes_the_network(make, pooling):
    """Every layer kind: the exported graph run at our firing rule gives our spikes (BN folding may
    flip a membrane that sits on the threshold; nothing more). IF after average pools: a PLIF/LIF
    there stays silent at v_th = 1 (the mean of spikes never exceeds 1), which would test nothing."""
    torch.manual_seed(0)
    net = seeded(make())
    event = net.stem.kind.startswith("event")
    x = (torch.rand(4, net.T, *net.input_shape) < 0.3).float() if event else torch.randn(4, *net.input_shape)
    out, ours = our_spikes(net, x)
    graph = to_nir(net, dt=0.5, pooling=pooling)
    ran_out, ran = run_nir(graph, x, net.T, fire_at_threshold=True)
    diff, total = disagreement(ours, ran)
    print(f"graph vs network: {diff} of {total} neuron outputs differ")
    assert diff / total < MAX_DIFF, f"{diff} of {total}"
    for name, s in ours.items():
        assert s.any(), f"{name} never fires: the check would be empty"
    assert torch.allclose(out, ran_out, atol=1e-5) or diff > 0


def test_ann_network_is_refused_with_the_layer_named():
    net = SpikingNetwork("AutoSNN_4", 3, "SRB_k3-SRB_k3-skip_connect-SCB_k3-SRB_k3", T=1, neuron="ann")
    with pytest.raises(AutoSNNError, match=r"layer 'stem.n1' is a ReLU .*neuron plif, lif or if"):
        to_nir(net)


def test_missing_nir_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "nir", None)         # import nir -> ImportError
    net = SpikingNetwork("AutoSNN_4", 3, "SRB_k3-SRB_k3-skip_connect-SCB_k3-SRB_k3", T=2)
    with pytest.raises(AutoSNNError, match=r"^exporting to NIR needs the nir package: pip install nir$"):
        write_nir(net, tmp_path / "x.nir")
    assert list(tmp_path.iterdir()) == []


@needs_nir
def test_bad_inputs(tmp_path):
    net = SpikingNetwork("AutoSNN_4", 3, T=2)                     # the super-network
    with pytest.raises(AutoSNNError, match="super-network"):
        to_nir(net)
    child = net.child("SRB_k3-SRB_k3-skip_connect-SCB_k3-SRB_k3")
    with pytest.raises(AutoSNNError, match="does not exist"):
        write_nir(child, tmp_path / "missing" / "x.nir")
    with pytest.raises(AutoSNNError, match="dt must be > 0"):
        to_nir(child, dt=0)
    child.layers[0]["SRB_k3"] = torch.nn.Identity()              # a layer without a NIR node
    with pytest.raises(AutoSNNError, match=r"layer 'layers.0.SRB_k3' \(Identity\) has no NIR equivalent"):
        to_nir(child)


@needs_nir
def test_write_nir_from_a_run_folder(tmp_path):
    nir = import_nir()
    run = tmp_path / "run"
    run.mkdir()
    net = load_model(DATA / "model.pt")
    save_model(net, run / "model.pt", run_id="r1")               # a run folder's model.pt is that run's network
    (run / "config.json").write_text(json.dumps({"run_id": "r1", "run": {"dataset": "synthetic", "T": net.T,
                                                                         "backbone": net.backbone.name}}))
    lines = []
    write_nir(run, tmp_path / "net.nir", log=lines.append)
    meta = nir.read(tmp_path / "net.nir").metadata
    norm = meta["normalisation"]
    norm = norm.decode() if isinstance(norm, bytes) else norm
    assert '"std": [0.22, 0.22, 0.22]' in norm and len(lines) == 1 and "net.nir" in lines[0]
