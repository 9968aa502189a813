"""Tests of the command-line pipeline (train.py) on synthetic data; the search itself is tested in test_evolve.py and test_pareto.py."""
import json
import os

import pytest
import torch
from conftest import TINY, TINY1, count_syncs, run_cli

import autosnn
import evaluation
import files
import runs
import train
from autosnn import SpikingNetwork
from evolve import fitness
from plumbing import config
from search_space import AUTOSNN


# every test here runs the pipeline from the command line: the quick tier (-m "not slow") leaves them out
pytestmark = [pytest.mark.usefixtures("plotless"), pytest.mark.slow]


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------

RUN_FILES = ["config.json", "log.txt", "metrics.jsonl", "supernet.pt", "search.pt", "search.json",
             "pareto.csv", "best_arch.txt", "child.pt", "results.json"]


def test_pipeline_end_to_end(tmp_path):
    assert run_cli(tmp_path, "full") == 0
    d = tmp_path / "full"
    for f in RUN_FILES:
        assert (d / f).is_file(), f
    assert not list(d.glob("*.tmp*"))
    doc = json.loads((d / "search.json").read_text())
    assert len(doc["history"]) == 12 and doc["lam"] == -0.08
    sn = torch.load(d / "supernet.pt", weights_only=False)
    assert doc["spike_norm"] == pytest.approx(sn["history"][-1]["spikes"])
    for h in doc["history"]:
        assert h["fitness"] == pytest.approx(fitness(h["acc"], h["spikes"], doc["spike_norm"], -0.08))
    best = max(doc["history"], key=lambda h: h["fitness"])
    assert (d / "best_arch.txt").read_text().strip() == best["arch"]
    res = json.loads((d / "results.json").read_text())
    assert res["arch"] == best["arch"] and res["test_acc"] * 32 == round(res["test_acc"] * 32)     # of 32 images
    assert res["spikes"] >= res["neuron_spikes"] > 0
    child = SpikingNetwork("AutoSNN_4", 10, best["arch"], T=2)
    assert res["params"] == sum(p.numel() for p in child.parameters())
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["supernet"] * 2 + ["search"] * 3 + ["retrain"] * 2
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["run"]["backbone"] == "AutoSNN_4" and cfg["search"]["pool"] == 4
    pareto = (d / "pareto.csv").read_text().splitlines()
    assert pareto[0].startswith("generation,arch,acc,spikes") and len(pareto) >= 2


def test_same_seeds_same_history_other_seed_differs(tmp_path):
    assert run_cli(tmp_path, "a", "--stage", "supernet") == 0
    sup = str(tmp_path / "a" / "supernet.pt")
    for name, seed in (("s1", "99"), ("s2", "99"), ("s3", "5")):
        assert train.main(["--stage", "search", "--supernet", sup, "--iterations", "2", "--pool", "4",
                           "--topk", "2", "--mutations", "2", "--crossovers", "1", "--search-seed", seed,
                           "--out", str(tmp_path), "--name", name, "--log-every", "0"]) == 0
    h = [json.loads((tmp_path / n / "search.json").read_text())["history"] for n in ("s1", "s2", "s3")]
    assert h[0] == h[1] and [r["arch"] for r in h[0]] != [r["arch"] for r in h[2]]


def test_stages_separately_and_inherit(tmp_path):
    assert run_cli(tmp_path, "sup", "--stage", "supernet") == 0
    sup = tmp_path / "sup" / "supernet.pt"
    assert train.main(["--stage", "search", "--supernet", str(sup), "--lam", "-0.16", "--iterations", "2",
                       "--pool", "3", "--topk", "2", "--mutations", "1", "--crossovers", "1",
                       "--search-algo", "random", "--out", str(tmp_path), "--name", "se", "--log-every", "0"]) == 0
    doc = json.loads((tmp_path / "se" / "search.json").read_text())
    assert doc["lam"] == -0.16 and doc["algorithm"] == "random" and len(doc["history"]) == 6
    assert run_cli(tmp_path, "re", "--stage", "retrain", "--arch", "AutoSNN", "--supernet", str(sup),
                   "--inherit", "--retrain-epochs", "1") == 0
    assert json.loads((tmp_path / "re" / "results.json").read_text())["arch"] == str(AUTOSNN)


def test_event_data_pipeline(tmp_path):
    """The search runs on event-camera data too (the original's super-network could not)."""
    assert run_cli(tmp_path, "dvs", "--dataset", "synthetic-dvs") == 0
    res = json.loads((tmp_path / "dvs" / "results.json").read_text())
    assert res["dataset"] == "synthetic-dvs" and res["energy"]["first_layer_macs"] == 0   # events: no analog layer
    sn = torch.load(tmp_path / "dvs" / "supernet.pt", weights_only=False)
    assert tuple(sn["input_shape"]) == (2, 2, 32, 32)
    assert len(json.loads((tmp_path / "dvs" / "search.json").read_text())["history"]) == 12


def test_ann_mode_and_bn_recalibration(tmp_path):
    i = TINY.index("--T")                                   # ann implies T = 1 and lambda = 0
    argv = TINY[:i] + TINY[i + 2:] + ["--out", str(tmp_path), "--name", "ann"]
    assert train.main(argv + ["--neuron", "ann", "--bn-recalib", "2"]) == 0
    doc = json.loads((tmp_path / "ann" / "search.json").read_text())
    assert doc["lam"] == 0.0 and all(h["fitness"] == h["acc"] and h["spikes"] == 0 for h in doc["history"])
    cfg = json.loads((tmp_path / "ann" / "config.json").read_text())
    assert cfg["run"]["T"] == 1 and cfg["search"]["lam"] == 0.0


def test_presets():
    """--dry-run alone runs on synthetic data; with another dataset it keeps no synthetic-only value and
    mentions no option the user did not type; the baselines shrink with it."""
    cfg, preset = config.make_config({"dry_run": True})
    assert preset == "dry-run" and cfg.run.dataset == "synthetic" and cfg.run.n_train == 1000
    cfg, _ = config.make_config({"dry_run": True, "dataset": "cifar10"})
    assert (cfg.run.dataset, cfg.run.n_train, cfg.run.n_test, cfg.retrain.model_width) == ("cifar10", 0, 0, 0)
    cfg, _ = config.make_config({"dry_run": True, "stage": "retrain", "model": "resnet19-zheng"})
    assert cfg.retrain.model_width == 8
    cfg, _ = config.make_config({})
    assert (cfg.run.dataset, cfg.supernet.supernet_epochs, cfg.retrain.model_width) == ("cifar10", 30, 0)


def test_help_states_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")                   # no line wrapping inside the checked phrases
    with pytest.raises(SystemExit) as e:
        train.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for text in ("--supernet-epochs", "(default 30; --preset paper: 600)", "--lam", "default -0.08", "--search-seed",
                 "default 99", "--model", "resnet19-zheng", "dry-run"):
        assert text in out, text
    for argv in (["rerank", "--help"], ["plot", "--help"]):
        with pytest.raises(SystemExit) as e:
            runs.main(argv)
        assert e.value.code == 0


def test_rerank_cli(tmp_path, capsys):
    assert run_cli(tmp_path, "r") == 0
    capsys.readouterr()
    assert runs.main(["rerank", str(tmp_path / "r"), "--lam", "-0.24", "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()[2:]
    doc = json.loads((tmp_path / "r" / "search.json").read_text())
    expected = sorted(doc["history"], key=lambda h: -fitness(h["acc"], h["spikes"], doc["spike_norm"], -0.24))[:3]
    assert [ln.split()[-1] for ln in lines] == [h["arch"] for h in expected]
    for ln, h in zip(lines, expected):
        assert float(ln.split()[0]) == pytest.approx(fitness(h["acc"], h["spikes"], doc["spike_norm"], -0.24),
                                                     abs=1e-4)
    assert runs.main(["rerank", str(tmp_path / "nothing")]) == 2
    capsys.readouterr()
    budget = sorted(h["energy_uj"] for h in doc["history"])[5]
    assert runs.main(["rerank", str(tmp_path / "r"), "--by", "energy_uj", "--budget", str(budget)]) == 0
    lines = capsys.readouterr().out.splitlines()[2:]
    kept = [h for h in doc["history"] if h["energy_uj"] <= budget]
    norm = sorted(h["energy_uj"] for h in doc["history"])[len(doc["history"]) // 2 - 1:len(doc["history"]) // 2 + 1]
    norm = sum(norm) / 2                                   # the median of 12 values
    best = max(fitness(h["acc"], h["energy_uj"], norm, -0.08) for h in kept)
    assert len(lines) == min(len(kept), 10) and 6 <= len(kept) < 12
    assert float(lines[0].split()[0]) == pytest.approx(best, abs=1e-4)
    assert {ln.split()[-1] for ln in lines} <= {h["arch"] for h in kept}


def test_bench_quick_json(capsys):
    import bench
    assert bench.main(["--quick", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    for name in ("child", "supernet"):
        r = res[name]
        for key in ("train_img_s", "eval_img_s", "train_ratio", "eval_ratio"):
            assert r[key] > 0, (name, key)
        assert r["stepwise"]["train_img_s"] > 0 and r["stepwise"]["eval_img_s"] > 0
        # CUDA's max allocated on a GPU; on a CPU none (the process peak RSS stands for it)
        assert r["train_peak_mib"] > 0 if res["config"]["device"].startswith("cuda") else r["train_peak_mib"] is None
    s = res["search"]
    assert s["pool"] == 4 and s["archs_per_min"] > 0 and s["ratio"] == pytest.approx(
        s["archs_per_min"] / s["stepwise_archs_per_min"])
    assert [r["T"] for r in res["scale_T"]] == [2, 3] and [r["batch"] for r in res["scale_batch"]] == [2, 4]
    assert res["config"]["backbone"] == "AutoSNN_4" and res["config"]["T"] == 2
    assert res["process_peak_rss_mib"] > 0


# ---------------------------------------------------------------------------------------------
# Promises of the training loop and the writer
# ---------------------------------------------------------------------------------------------

def test_no_host_sync_per_batch(tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = autosnn.SpikingNetwork("AutoSNN_4", 10, AUTOSNN, T=2, v_th=0.5)
    opt = torch.optim.SGD(net.parameters(), 1e-3)    # Adam reads its step counters, kept on the CPU, with .item()
    data = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(6)]
    run = train.Run(tmp_path)
    counts = []
    for n in (2, 6):
        counts.append(count_syncs(monkeypatch, lambda: train.train_epoch(
            net, opt, data[:n], n, lambda: None, run, 0, "t")))
        counts.append(count_syncs(monkeypatch, lambda: evaluation.evaluate_model(net, data[:n])))
    assert counts[0] == counts[2] and counts[1] == counts[3], counts     # independent of the batch count


def test_bf16_autocast_runs(tmp_path):
    assert run_cli(tmp_path, "bf", "--stage", "retrain", "--arch", "AutoSNN", "--retrain-epochs", "1", "--amp", "bf16",
                   base=TINY1) == 0
    res = json.loads((tmp_path / "bf" / "results.json").read_text())
    assert res["test_acc"] * 32 == round(res["test_acc"] * 32) and res["spikes"] >= res["neuron_spikes"]
    assert "bf16 autocast" in (tmp_path / "bf" / "log.txt").read_text()


def test_determinism_flag_and_compile_default():
    try:
        config.set_determinism(True)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"]
    finally:
        config.set_determinism(False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.allow_tf32 and not torch.backends.cudnn.deterministic
    cfg, _ = config.make_config({"device": "cpu"})
    assert not config.Env(cfg, torch.device("cpu")).compile and config.Env(cfg, torch.device("cuda")).compile
    cfg, _ = config.make_config({"compile": False})
    assert not config.Env(cfg, torch.device("cuda")).compile


def test_writer_and_sweeper(tmp_path):
    target = tmp_path / "x.json"
    files.atomic_write_text(target, "old")

    def interrupted(f):
        f.write(b"partial")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(target, interrupted)
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
    live = tmp_path / f".a{files.TEMP_MARK}{os.getpid()}"          # a writer still running: kept
    dead = tmp_path / f".b{files.TEMP_MARK}999999999"              # no such process: removed
    live.write_text("")
    dead.mkdir()
    assert files.remove_stale_temps(tmp_path) == [dead.name] and live.exists()
    files.create_folder(tmp_path / "new", {"config.json": "{}"})
    assert (tmp_path / "new" / "config.json").read_text() == "{}"
    with pytest.raises(files.AutoSNNError, match="already exists"):
        files.create_folder(tmp_path / "new", {"config.json": "{}"})


def test_progress_lines_give_the_stage_eta_early(tmp_path):
    """A process's first epoch logs a progress line after EARLY_BATCHES batches, before the first
    --log-every line, with the epoch's speed and the stage's ETA; later lines come every --log-every."""
    assert run_cli(tmp_path, "r", "--stage", "supernet", "--n-train", "400", "--batch-size", "16",
                   "--supernet-epochs", "2", "--log-every", "15") == 0
    lines = [ln for ln in (tmp_path / "r" / "log.txt").read_text().splitlines() if " batch " in ln]
    # D_train: 320 images, 20 batches per epoch: batch 10 (early, epoch 1 only) and 15 (every epoch)
    assert [ln.split(":")[0].strip() for ln in lines] == ["super-network batch 10/20", "super-network batch 15/20",
                                                          "super-network batch 15/20"]
    assert all("img/s, elapsed" in ln and "ETA" in ln and ln.endswith("of the stage)") for ln in lines)


def test_durations_read_as_a_person_reads_them():
    assert [files.duration(s) for s in (0, 42.4, 185, 3600 * 2 + 14 * 60 + 5, 86400 * 4 + 3 * 3600)] == \
        ["0s", "42s", "3m05s", "2h14m", "4d03h"]
