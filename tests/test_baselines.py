"""Tests of the hand-crafted baselines, the design-choice study and the plots."""
import builtins
import csv
import json

import pytest
import torch
from conftest import TINY

import runs
import train
from autosnn import count_parameters, rate_loss
from baselines import BASELINES, HandcraftedSNN
from plumbing import plots


# Parameter counts of the original code's factory defaults, PLIF scalars excluded (10 and 100 classes)
STATIC_COUNTS = {
    "cifarnet-wu": (45_049_984, 45_510_784),
    "cifarnet-fang": (36_718_336, 38_561_536),
    "resnet11-lee": (18_298_944, 19_220_544),
    "resnet19-zheng": (14_686_848, 14_917_248),
    "resnet19-zheng-nopool": (20_978_304, 21_208_704),
    "resnet19-zheng-gap": (12_720_768, 12_951_168),
}


@pytest.mark.parametrize("name", list(STATIC_COUNTS))
def test_static_baseline_parameter_counts(name):
    assert count_parameters(HandcraftedSNN(name, 10), taus=False) == STATIC_COUNTS[name][0]
    assert count_parameters(HandcraftedSNN(name, 100), taus=False) == STATIC_COUNTS[name][1]


@pytest.mark.parametrize("name, classes, count", [
    ("dvs-cifarnet-fang", 10, 4_691_200), ("dvs-cifarnet-fang", 11, 1_698_304),
    ("dvs-resnet17-zheng", 10, 1_930_752), ("dvs-resnet17-zheng", 11, 1_933_312),
])
def test_dvs_baseline_parameter_counts(name, classes, count):
    assert count_parameters(HandcraftedSNN(name, classes, input_shape=(2, 128, 128)), taus=False) == count


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_baseline_trains_on_tiny_input(name):
    torch.manual_seed(0)
    event = name.startswith("dvs")
    net = HandcraftedSNN(name, 3, T=2, width=4, input_shape=(2, 2, 128, 128) if event else (3, 32, 32))
    x = torch.rand(2, 2, 2, 128, 128) * 2 if event else torch.randn(2, 3, 32, 32)
    out, stats = net(x, energy=True)
    assert out.shape == (2, 3)
    rate_loss(out, torch.tensor([0, 2]), 2).backward()
    assert all(p.grad is not None for p in net.parameters())
    assert stats.spikes > 0 and stats.energy()["ann_macs"] > 0
    assert stats.names[-1] == "fc_neurons." + str(len(net.fcs) - 1)
    pools = [n for n, k in zip(stats.names, stats.kinds) if k == "pool"]
    assert pools == [n for n, m in net.named_modules() if type(m).__name__ == "MaxPool"]


def test_baseline_errors():
    with pytest.raises(ValueError, match="unknown model"):
        HandcraftedSNN("vgg16")
    with pytest.raises(ValueError, match="takes input"):
        HandcraftedSNN("resnet19-zheng", input_shape=(2, 128, 128))
    with pytest.raises(ValueError, match="fixed network"):
        HandcraftedSNN("resnet19-zheng", width=4, T=1)(torch.zeros(1, 3, 32, 32), arch="SCB_k3")


@pytest.mark.slow
def test_retrain_a_baseline_from_the_cli(tmp_path):
    assert train.main(TINY + ["--out", str(tmp_path), "--name", "b", "--stage", "retrain",
                              "--model", "resnet19-zheng", "--model-width", "4", "--retrain-epochs", "1"]) == 0
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    net = HandcraftedSNN("resnet19-zheng", 10, T=2, width=4)
    assert res["model"] == "resnet19-zheng" and res["params"] == sum(p.numel() for p in net.parameters())
    assert res["energy"]["energy_uj"] > 0 and "layers.0.cb1.conv" in res["energy"]["per_layer"]


@pytest.mark.slow
def test_design_study_writes_a_complete_table(tmp_path):
    assert train.main(TINY + ["--out", str(tmp_path), "--name", "st", "--stage", "study",
                              "--retrain-epochs", "1", "--study-block", "SRB_k3"]) == 0
    d = tmp_path / "st"
    with open(d / "study.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["backbone", "design", "test_acc", "spikes", "neuron_spikes", "params", "energy_uj",
                             "ann_energy_uj"]
    assert [r["backbone"] for r in rows] == ["SNN_1_4", "SNN_2_4", "SNN_3_4", "SNN_4_4"]
    for r in rows:
        res = json.loads((d / "study" / r["backbone"] / "results.json").read_text())
        assert res["arch"].split("-") == ["SRB_k3"] * (8 if r["backbone"] == "SNN_3_4" else 5)
        assert float(r["test_acc"]) == res["test_acc"] and int(r["params"]) == res["params"]
        assert float(r["energy_uj"]) == res["energy"]["energy_uj"]
    params = [int(r["params"]) for r in rows]
    assert params[1] < params[0] and params[3] == params[0] + 3    # GAP shrinks the FC; avg-pools add 3 PLIF
    md = (d / "study.md").read_text()
    assert md.count("| SNN_") == 4 and "estimate" in md


@pytest.mark.slow
def test_plots_are_optional(tmp_path, monkeypatch):
    assert train.main(TINY + ["--out", str(tmp_path), "--name", "p"]) == 0
    d = tmp_path / "p"
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    notes = []
    assert plots.plot_run(d, notes.append) == [] and "matplotlib" in notes[0]
    monkeypatch.undo()
    pytest.importorskip("matplotlib")
    for f in ("pareto.png", "curves.png"):
        (d / f).unlink(missing_ok=True)
    assert runs.main(["plot", str(d)]) == 0
    for f in ("pareto.png", "curves.png"):
        assert (d / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert runs.main(["plot", str(tmp_path)]) == 2


def test_load_model_reads_baselines_only(tmp_path):
    import autosnn
    import baselines
    from files import AutoSNNError
    from search_space import AUTOSNN
    net = autosnn.SpikingNetwork("SNN_1_4", num_classes=3, arch=AUTOSNN, T=2)
    autosnn.save_model(net, tmp_path / "model.pt")
    with pytest.raises(AutoSNNError, match="an AutoSNN network, not a baseline: load it with SpikingNetwork.load"):
        baselines.load_model(tmp_path)
    base = baselines.HandcraftedSNN("cifarnet-fang", 3, T=2, width=4)
    autosnn.save_model(base, tmp_path / "model.pt")
    doc = torch.load(tmp_path / "model.pt", weights_only=True)
    doc["spec"]["width"] = 8                                 # the spec no longer fits the weights
    torch.save(doc, tmp_path / "model.pt")
    with pytest.raises(AutoSNNError, match="the weights do not fit the network the file describes"):
        baselines.load_model(tmp_path / "model.pt")
