"""Tests of export/nir.py: the NIR files reproduce independent readers' numbers, round trip, bad input.

Golden numbers (tests/data/nir/golden.npz) were made by tools/golden_nir.py (see its docstring for
the commands and versions): two small trained networks, model.pt (AutoSNN_4: PLIF, SRBs, max-pools)
and ties.pt (SNN_4_4: LIF leak 0.5, v_th 0.5, avg-pools, where many membranes land exactly on the
threshold), each exported for each reader of export.nir.READERS (its dt and threshold), read back from
a .nir file and run on the 16 images of tests/data/nir/inputs.npz, one image and one step at a time,
by Norse 1.1, snnTorch 1.0 and spikingjelly 2.0.0, each loaded with READERS[reader].load.
Stored: every neuron node's output spikes [T, B, ...] (bit-packed) and the class scores [B, K].
A spike may differ only where a membrane lies within rounding of the threshold (BN folding; leaks
computed another way): at most MAX_DIFF of all neuron outputs, and the predictions must agree.
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

import runs
from autosnn import POPULATION, SpikingNetwork, load_model, save_model
from baselines import HandcraftedSNN
from export.nir import READERS, _Graph, check_target, import_nir, threshold, to_nir, write_nir
from export.nir_runner import graphs_equal, run_nir
from files import AutoSNNError
from layers import MaxPool
from neurons import Neuron

DATA = Path(__file__).parent / "data" / "nir"
NETWORKS = {"model.pt": 0.5, "ties.pt": 0.3}   # file: test accuracy it beats on the 16 images (4 classes)
MAX_DIFF = 1e-4       # fraction of neuron outputs (all layers, steps, images) allowed to differ: 0.01%
needs_nir = pytest.mark.skipif(importlib.util.find_spec("nir") is None,
                               reason="needs the nir package (pip install nir)")


def golden_inputs():
    from data import NORMALISATION
    d = np.load(DATA / "inputs.npz")
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in NORMALISATION["synthetic"])
    return (torch.from_numpy(d["images"]).float() / 255 - mean) / std, torch.from_numpy(d["labels"])


def golden(file, reader):
    """(scores [B, K], {neuron node: spikes [T, B, ...] bool}) stored for `reader` on network `file`."""
    g = np.load(DATA / "golden.npz")
    key, spikes = f"{file}/{reader}", {}
    for k in g.files:
        if k.startswith(f"{key}/spikes/"):
            name = k.split("/", 3)[3]
            shape = tuple(g[f"{key}/shape/{name}"])
            spikes[name] = torch.from_numpy(np.unpackbits(g[k])[: int(np.prod(shape))].reshape(shape).astype(bool))
    return torch.from_numpy(g[f"{key}/scores"]), spikes


def our_spikes(net, x):
    """Our network's class scores and the output spikes of every neuron layer and max-pool, by module name."""
    rec, hooks = {}, []
    for name, m in net.named_modules():
        if isinstance(m, (Neuron, MaxPool)):
            hooks.append(m.register_forward_hook(lambda m, i, o, n=name: rec.__setitem__(n, o.bool())))
    with torch.no_grad():
        out, _ = net(x)
    for h in hooks:
        h.remove()
    return out, rec


def agreement(ours, theirs, label):
    """Assert that two runs of one network agree: (scores [B, K], {node: spikes [T, B, ...]}) each.
    At most MAX_DIFF of the neuron outputs differ, the class spike counts (score * POPULATION) differ by
    no more than the output population's differing spikes, and every prediction is the same."""
    (out_a, a), (out_b, b) = ours, theirs
    assert set(a) == set(b), set(a) ^ set(b)
    diff = sum(int((a[k].bool() != b[k].bool().reshape(a[k].shape)).sum()) for k in a)
    total = sum(v.numel() for v in a.values())
    print(f"{label}: {diff} of {total} neuron outputs differ ({diff / total:.2e})")
    assert diff / total < MAX_DIFF, f"{label}: {diff} of {total} neuron outputs differ"
    counts_a, counts_b = (torch.round(o.double() * POPULATION).long() for o in (out_a, out_b))
    last = sorted(k for k in a if k.startswith("fc_neuron"))[-1]          # the output population
    out_diff = int((a[last] != b[last].reshape(a[last].shape)).sum())
    assert int((counts_a - counts_b).abs().sum()) <= out_diff, f"{label}: class counts differ"
    assert torch.equal(counts_a.argmax(1), counts_b.argmax(1)), f"{label}: predictions differ"
    return diff


def exact_ties(net, x) -> int:
    """How many neuron-steps of `net` on x put a membrane exactly on v_th (ours spikes, v > v_th would not)."""
    ties = [0]

    def count(m, inputs, out):
        v, k = torch.zeros_like(inputs[0][0]), m.leak()
        for x_t, s_t in zip(inputs[0], out):
            v = v + x_t if k is None else v + (x_t - v) * k
            ties[0] += int((v == m.v_th).sum())
            v = v * (1 - s_t)
    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, Neuron)]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return ties[0]


def through_file(graph):
    nir = import_nir()
    buf = io.BytesIO()
    nir.write(buf, graph)
    buf.seek(0)
    return nir.read(buf)


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("file", NETWORKS)
def test_our_network_reproduces_the_readers_golden_numbers(file, reader):
    net = load_model(DATA / file)
    x, labels = golden_inputs()
    scores, spikes = golden(file, reader)
    out, ours = our_spikes(net, x)
    agreement((out, ours), (scores, spikes), f"{file} in {reader}")
    assert sum(int(s.sum()) for s in spikes.values()) > 0.02 * sum(s.numel() for s in spikes.values())
    assert (out.argmax(1) == labels).float().mean() > NETWORKS[file]      # a network that really classifies


@needs_nir
@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("file", NETWORKS)
def test_the_file_for_a_reader_reproduces_its_golden_numbers(file, reader):
    """Our own runner of the file written for `reader` (its dt, threshold and spike condition) against
    what the reader did with the same file."""
    net = load_model(DATA / file)
    x, _ = golden_inputs()
    graph = through_file(to_nir(net, reader=reader))
    assert float(graph.metadata["dt"]) == READERS[reader].dt
    agreement(run_nir(graph, x, net.T), golden(file, reader), f"{file} for {reader}, run_nir")


def test_the_tie_network_puts_membranes_on_the_threshold():
    """ties.pt makes the golden tests above sensitive to the firing rule: many exact ties, and a file
    with v_threshold = v_th run at v > v_threshold (as Norse and snnTorch fire) is far off."""
    net = load_model(DATA / "ties.pt")
    x, _ = golden_inputs()
    assert exact_ties(net, x) > 1000
    if importlib.util.find_spec("nir") is None:
        return
    graph = to_nir(net)
    for name, node in graph.nodes.items():
        if type(node).__name__ == "LIF" and name + ".sum" not in graph.nodes:        # not a max-pool's neuron
            node.v_threshold = np.full_like(node.v_threshold, 0.5)
    out, ran = run_nir(graph, x, net.T)
    _, ours = our_spikes(net, x)
    diff = sum(int((ours[k] != ran[k].bool()).sum()) for k in ours)
    assert diff > 100 * MAX_DIFF * sum(v.numel() for v in ours.values())


@needs_nir
@pytest.mark.parametrize("v_th", [0.5, 0.3, 2.0])
def test_threshold_is_the_float32_below_v_th_or_v_th_for_readers_that_fire_on_it(v_th):
    net = SpikingNetwork("SNN_4_4", 3, "SCB_k3-SRB_k3-skip_connect-SRB_k3-SCB_k3", T=2, neuron="lif",
                         tau0=2.0, v_th=v_th)
    below = np.nextafter(np.float32(v_th), np.float32(-np.inf))
    assert threshold(v_th) == below < np.float32(v_th) and threshold(v_th, True) == np.float32(v_th)
    for reader in (None, *READERS):
        graph = to_nir(net, reader=reader)
        at = reader is not None and READERS[reader].fires_at_threshold
        neurons = [n for n in graph.nodes.values() if type(n).__name__ == "LIF"]
        assert len(neurons) == 13
        for node in neurons:
            assert node.v_threshold.dtype == np.float32
            assert np.all(node.v_threshold == (np.float32(v_th) if at else below)), reader
        assert graph.metadata["spike_condition"] == ("v >= v_threshold" if at else "v > v_threshold")


def test_docs_table_gives_each_reader_the_call_its_golden_numbers_were_made_with():
    """tools/golden_nir.py loads each file by evaluating READERS[r].load: the docs must show that call."""
    doc = (Path(__file__).parent.parent / "docs" / "nir.md").read_text()
    for reader, spec in READERS.items():
        assert f"| `{reader}` |" in doc and f"`{spec.load}`" in doc, reader


@needs_nir
def test_reader_files_use_the_readers_time_step_and_what_it_can_run():
    net = load_model(DATA / "model.pt")
    k = torch.sigmoid(net.stem.n1.w).item()
    for reader, spec in READERS.items():
        graph = to_nir(net, reader=reader)
        assert float(graph.metadata["dt"]) == spec.dt and spec.version in graph.metadata["reader"]
        assert graph.nodes["stem.n1"].tau.dtype == np.float64
        assert np.allclose(graph.nodes["stem.n1"].tau, spec.dt / k, rtol=1e-6)
        # spikingjelly 2.0.0 reads a LIF only with tau > dt; the max-pool's neuron has tau = 2 dt
        assert all(n.tau.min() > spec.dt for n in graph.nodes.values() if type(n).__name__ == "LIF")
        assert np.all(graph.nodes["layers.1"].tau == 2 * spec.dt)
    assert float(to_nir(net).metadata["dt"]) == 1.0 and float(to_nir(net, dt=1e-3).metadata["dt"]) == 1e-3
    if_net = SpikingNetwork("SNN_2_4", 3, "SRB_k3-skip_connect-SCB_k3-SRB_k3-skip_connect", T=2, neuron="if")
    with pytest.raises(AutoSNNError, match=r"layer 'stem.n1' is an IF neuron, which snntorch 1.0.0 .* norse "
                                           r"or spikingjelly$"):
        to_nir(if_net, reader="snntorch")
    assert np.all(to_nir(if_net, reader="spikingjelly").nodes["stem.n1"].r == np.float32(1e4))
    with pytest.raises(AutoSNNError, match="unknown reader 'brian'; choose one of: norse, snntorch, spikingjelly"):
        to_nir(net, reader="brian")
    with pytest.raises(AutoSNNError, match=r"snntorch 1.0.0 simulates at dt = 0.0001, not 1: leave dt out"):
        to_nir(net, reader="snntorch", dt=1.0)
    for dt in (0, -1, float("inf"), float("nan")):
        with pytest.raises(AutoSNNError, match="dt must be a finite number > 0"):
            to_nir(net, dt=dt)


@needs_nir
@pytest.mark.parametrize("pooling", ["sum", "conv"])
def test_max_pool_neuron_is_a_memoryless_at_least_one_spike(pooling):
    """The exporter's max-pool (window sum -> LIF with tau = 2 dt, threshold 0.25) spikes exactly where
    the 2x2 window holds a spike, step by step, whatever came before: every window sum 0..4 after
    every other, at the readers' time steps."""
    nir = import_nir()
    windows = [torch.tensor([1.0] * s + [0.0] * (4 - s)).view(1, 2, 2) for s in range(5)]
    seq = [windows[s] for a in range(5) for b in range(5) for s in (a, b)]
    x = torch.stack(seq)[None]                                           # [1, 50, 1, 2, 2]
    for dt in {1.0, *(r.dt for r in READERS.values())}:
        g = _Graph(nir, dt, pooling, None)
        g.add("input", nir.Input(input_type={"input": np.array([1, 2, 2])}))
        pool, _ = g.maxpool("pool", "input", (1, 2, 2))
        g.add("output", nir.Output(output_type={"output": np.array([1, 1, 1])}), pool)
        graph = nir.NIRGraph(nodes=g.nodes, edges=g.edges, metadata={"dt": dt})
        _, spikes = run_nir(graph, x, len(seq))
        assert torch.equal(spikes["pool"].flatten(), torch.tensor([float(w.sum() >= 1) for w in seq])), dt


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
    assert meta["spike_condition"] == "v > v_threshold" and "nextafter" in meta["firing_rule"]
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
    # binary leak and threshold: exact ties, which only the threshold one float32 below v_th gets right
    lambda: SpikingNetwork("SNN_4_4", 3, "SCB_k3-SRB_k3-skip_connect-SRB_k3-SCB_k3", T=3, neuron="lif", tau0=2.0,
                           v_th=0.5),
    lambda: HandcraftedSNN("resnet11-lee", 3, T=3, width=4, neuron="if"),
    lambda: SpikingNetwork("AutoSNN_4", 3, "SRB_k3-SRB_k3-skip_connect-SCB_k3-SRB_k3", T=3, input_shape=(3, 2, 32, 32),
                           neuron="lif", tau0=1.5),
], ids=["snn3-factorized", "snn2-gap-if", "snn4-avgpool-if", "snn4-ties", "resnet11-baseline", "event-stem"])
@pytest.mark.parametrize("pooling", ["sum", "conv"])
def test_graph_computes_the_network(make, pooling):
    """Every layer kind: the exported graph, run by run_nir at NIR's v > v_threshold, gives our spikes
    (BN folding may flip a membrane within rounding of the threshold; nothing more). IF after average
    pools: a PLIF/LIF there stays silent at v_th = 1 (the mean of spikes never exceeds 1), which would
    test nothing."""
    torch.manual_seed(0)
    net = seeded(make())
    event = net.stem.kind.startswith("event")
    x = (torch.rand(4, net.T, *net.input_shape) < 0.3).float() if event else torch.randn(4, *net.input_shape)
    out, ours = our_spikes(net, x)
    for name, s in ours.items():
        assert s.any(), f"{name} never fires: the check would be empty"
    if getattr(net, "neuron_options", {}).get("v_th") == 0.5:
        assert exact_ties(net, x) > 100
    agreement((out, ours), run_nir(to_nir(net, dt=0.5, pooling=pooling), x, net.T), "graph vs network")


@needs_nir
def test_dynapcnn_target_names_what_the_chip_cannot_run(tmp_path):
    net = load_model(DATA / "model.pt")
    with pytest.raises(AutoSNNError, match=r"^dynapcnn cannot run this network: leaky neurons \(stem.n1, "
                                           r"layers.0.SRB_k3.n1, layers.2.SRB_k3.n1 and 4 more\): .*; residual "
                                           r"joins \(layers.0.SRB_k3.n2, .*\): .*; neurons after a pooling layer "
                                           r"\(layers.1, layers.4, layers.7\): "):
        write_nir(net, tmp_path / "x.nir", target="dynapcnn")
    assert list(tmp_path.iterdir()) == []
    # IF neurons, no SRB, no pooling block: what the chip's rules accept (the readout is the host's)
    ok = SpikingNetwork("SNN_3_4", 3, "SCB_k3-skip_connect-SCB_k3-skip_connect-SCB_k3-SCB_k3-skip_connect-SCB_k3",
                        T=2, neuron="if")
    check_target(to_nir(ok), "dynapcnn")
    with pytest.raises(AutoSNNError, match=r"^dynapcnn cannot run this network: leaky neurons \(stem.n1, "):
        check_target(to_nir(SpikingNetwork("SNN_3_4", 3, ok.arch, T=2, neuron="lif")), "dynapcnn")
    with pytest.raises(AutoSNNError, match="unknown target 'loihi'; choose one of: dynapcnn"):
        check_target(to_nir(ok), "loihi")


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
    with pytest.raises(AutoSNNError, match=r"cannot write .*: it is a folder"):
        write_nir(child, tmp_path)
    child.layers[0]["SRB_k3"] = torch.nn.Identity()              # a layer without a NIR node
    with pytest.raises(AutoSNNError, match=r"layer 'layers.0.SRB_k3' \(Identity\) has no NIR equivalent"):
        to_nir(child)


def run_folder(tmp_path):
    """A retraining run's folder holding tests/data/nir/model.pt: config.json and model.pt."""
    from plumbing import config
    run = tmp_path / "run"
    run.mkdir()
    net = load_model(DATA / "model.pt")
    save_model(net, run / "model.pt", run_id="r1")          # a run folder's model.pt is that run's network
    cfg = config.Config.from_flat({"dataset": "synthetic", "backbone": "AutoSNN_4", "T": 4, "arch": str(net.arch)})
    (run / "config.json").write_text(json.dumps({**cfg.to_dict(), "run_id": "r1"}))
    return run


@needs_nir
def test_write_nir_from_a_run_folder(tmp_path):
    nir = import_nir()
    lines = []
    write_nir(run_folder(tmp_path), tmp_path / "net.nir", reader="spikingjelly", log=lines.append)
    meta = nir.read(tmp_path / "net.nir").metadata
    norm = meta["normalisation"]
    norm = norm.decode() if isinstance(norm, bytes) else norm
    assert '"std": [0.22, 0.22, 0.22]' in norm and len(lines) == 1 and "net.nir" in lines[0]
    assert "dt=0.0001" in lines[0] and "spikingjelly 2.0.0" in lines[0]


@needs_nir
def test_export_command_line(tmp_path, capsys):
    nir = import_nir()
    run = run_folder(tmp_path)
    assert runs.main(["export", str(run), "--nir", str(tmp_path / "a.nir"), "--reader", "snntorch"]) == 0
    assert float(nir.read(tmp_path / "a.nir").metadata["dt"]) == 1e-4
    capsys.readouterr()
    for argv, message in (
            (["--dt", "0.5"], "--dt: only with --nir (how the NIR file is written); add --nir FILE.nir"),
            (["--nir", "b.nir", "--reader", "norse", "--dt", "0.5"], "norse 1.1.0, nirtorch 2.6 simulates at dt = 1,"),
            (["--nir", "b.nir", "--dt", "inf"], "dt must be a finite number > 0"),
            (["--nir", "b.nir", "--target", "dynapcnn"], "dynapcnn cannot run this network: leaky neurons")):
        argv = [a.replace("b.nir", str(tmp_path / "b.nir")) for a in argv]
        assert runs.main(["export", str(run), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "b.nir").exists()
