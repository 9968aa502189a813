"""Tests of evolve.py's bookkeeping and command line: one generation numbering, progress and
chance-accuracy warnings, configuration checks, rerank/export errors, durable plots.
No training: histories come from a made-up evaluator or a tiny silent super-network."""
import csv
import json
import math
import random
import shlex

import pytest
import torch

import evolve
import files
import search_space
import train
from autosnn import SpikingNetwork
from evolve import Search, SearchConfig, at_chance, run_search, write_history
from files import AutoSNNError, atomic_write_text
from search_space import get_backbone, parse_arch


def fake_eval(archs):
    """Deterministic made-up accuracy and spikes from the architecture string (a healthy spread)."""
    out = []
    for a in archs:
        h = sum(ord(c) * (i + 1) for i, c in enumerate(str(a)))
        out.append({"acc": 0.3 + (h % 97) / 200, "spikes": 5e4 + (h % 89) * 1e3, "neuron_spikes": 4e4})
    return out


def make_search(**kw):
    cfg = SearchConfig(**{"iterations": 3, "pool": 6, "topk": 3, "mutations": 3, "crossovers": 2, **kw})
    return Search(get_backbone("AutoSNN_16"), cfg, 1e5, random.Random(1))


def finished_run(tmp_path, iterations=3):
    """A run folder as train.py leaves it after a search: config.json, search.json, pareto.csv, best_arch.txt."""
    d = tmp_path / "run"
    d.mkdir()
    cfg = train.Config.from_flat({"dataset": "synthetic", "backbone": "AutoSNN_16", "T": 2, "n_train": 64,
                                  "data_root": "my data"})
    atomic_write_text(d / "config.json", json.dumps(cfg.to_dict()))
    s = make_search(iterations=iterations)
    run_search(s, fake_eval, lambda s: write_history(d, s, atomic_write_text), log=lambda m: None)
    atomic_write_text(d / "best_arch.txt", s.best()["arch"] + "\n")
    return d, s


def one_error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "usage:" not in err, err
    return err


# ---------------------------------------------------------------------------------------------
# One generation numbering
# ---------------------------------------------------------------------------------------------

def test_generations_are_one_based_everywhere(tmp_path):
    d = tmp_path
    seen, lines = [], []

    def on_generation(s):
        write_history(d, s, atomic_write_text)
        seen.append((s.generation, {r["generation"] for r in s.latest()}, len(s.latest())))

    s = make_search(iterations=3)
    run_search(s, fake_eval, on_generation, log=lines.append)
    # the callback (what train.py writes to metrics.jsonl) sees the number of the generation just done
    assert seen == [(1, {1}, 6), (2, {2}, 6), (3, {3}, 6)]
    assert [r["generation"] for r in s.history] == [1] * 6 + [2] * 6 + [3] * 6
    assert [ln.split(":")[0] for ln in lines] == ["generation 1/3", "generation 2/3", "generation 3/3"]
    doc = json.loads((d / "search.json").read_text())
    assert doc["generations"] == 3 and doc["first_generation"] == 1
    assert [r["generation"] for r in doc["history"]] == [r["generation"] for r in s.history]
    by_arch = {r["arch"]: r["generation"] for r in s.history}
    rows = list(csv.DictReader((d / "pareto.csv").open()))
    assert rows and all(int(r["generation"]) == by_arch[r["arch"]] for r in rows)
    assert evolve.load_history(d)["history"] == s.history


def test_files_from_before_the_unified_numbering_are_shifted(tmp_path):
    s = make_search()
    run_search(s, fake_eval, log=lambda m: None)
    old = s.state_dict()
    old.pop("first_generation")
    old["history"] = [dict(r, generation=r["generation"] - 1) for r in old["history"]]   # 0-based, as before
    t = make_search()
    t.load_state_dict(old)
    assert t.history == s.history and t.generation == 3
    doc = {"lam": -0.08, "spike_norm": 1e5, "algorithm": "evolution", "generations": 3, "history": old["history"]}
    atomic_write_text(tmp_path / "search.json", json.dumps(doc))
    assert [r["generation"] for r in evolve.load_history(tmp_path)["history"]] == [1] * 6 + [2] * 6 + [3] * 6


# ---------------------------------------------------------------------------------------------
# Progress and the chance-accuracy warning
# ---------------------------------------------------------------------------------------------

def test_progress_line_reports_rate_and_time_left():
    lines = []
    run_search(make_search(iterations=2), fake_eval, log=lines.append)
    assert len(lines) == 2
    for ln, left in zip(lines, ("ETA", "ETA 0s")):
        assert "6 evaluated in" in ln and "evals/s" in ln and left in ln and "best fitness" in ln
        rate = float(ln.split("(")[1].split(" evals/s")[0])
        assert rate > 0


def test_at_chance_tolerance_is_one_image():
    recs = [{"acc": a} for a in (0.1, 0.11, 0.09, 0.12, 0.5)]
    assert [r["acc"] for r in at_chance(recs, 10, val_images=100)] == [0.1, 0.11, 0.09]
    assert [r["acc"] for r in at_chance(recs, 10, val_images=1000)] == [0.1]
    assert [r["acc"] for r in at_chance(recs, 10)] == [0.1]          # unknown count: 0.005


def test_chance_warning_fires_on_a_silent_supernet_only():
    """An untrained super-network whose neurons cannot fire (huge threshold) predicts one class for
    every image: every architecture ties at 1/4 on balanced labels, and the search says so."""
    torch.manual_seed(0)
    net = SpikingNetwork("AutoSNN_4", num_classes=4, T=2, v_th=1e6)
    x, y = torch.rand(8, 3, 32, 32), torch.arange(8) % 4
    s = Search(net.backbone, SearchConfig(iterations=2, pool=3, topk=2, mutations=2, crossovers=1), 1e3,
               random.Random(0))
    lines = []
    run_search(s, lambda archs: evolve.evaluate_archs(net, archs, lambda: [(x, y)]), log=lines.append,
               num_classes=4, val_images=8)
    assert all(r["acc"] == 0.25 for r in s.history)
    warnings = [ln for ln in lines if ln.startswith("warning")]
    assert len(warnings) == 2 and "3 of 3" in warnings[0] and "under-trained" in warnings[0]

    lines = []       # a healthy spread of accuracies: no warning
    run_search(make_search(), fake_eval, log=lines.append, num_classes=10, val_images=200)
    assert lines and not any("warning" in ln for ln in lines)


def test_chance_warning_needs_more_than_half():
    def half_at_chance(archs):
        return [{"acc": 0.1 if i % 2 else 0.6, "spikes": 1e5, "neuron_spikes": 1e5} for i in range(len(archs))]

    lines = []
    run_search(make_search(iterations=1), half_at_chance, log=lines.append, num_classes=10, val_images=100)
    assert not any("warning" in ln for ln in lines)      # 3 of 6 is not more than half


# ---------------------------------------------------------------------------------------------
# Configuration checks
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, words", [
    ({"lam": math.nan}, "lambda"), ({"lam": -math.inf}, "lambda"), ({"lam": 0.1}, "lambda must be <= 0"),
    ({"spike_norm": math.nan}, "--spike-norm"), ({"spike_norm": math.inf}, "--spike-norm"),
    ({"spike_norm": -1.0}, "--spike-norm"), ({"iterations": 0}, "--iterations"), ({"pool": -1}, "--pool"),
    ({"topk": 0}, "--topk"), ({"mutations": -1}, "--mutations"), ({"crossovers": -2}, "--crossovers"),
    ({"tries": 0}, "--tries"), ({"bn_recalib": -1}, "--bn-recalib"), ({"iterations": 2.5}, "--iterations"),
    ({"mutation_prob": math.nan}, "--mutation-prob"), ({"mutation_prob": 1.5}, "--mutation-prob"),
    ({"search_algo": "genetic"}, "--search-algo"),
])
def test_search_config_rejects(kw, words):
    with pytest.raises(AutoSNNError, match=words):
        SearchConfig(**kw).check()


def test_fitness_rejects_nan_lambda_and_bad_normaliser():
    with pytest.raises(AutoSNNError):
        evolve.fitness(0.5, 100, 100, math.nan)
    with pytest.raises(AutoSNNError, match="normaliser"):
        evolve.fitness(0.5, 100, 0.0, -0.08)
    assert evolve.fitness(0.5, 100, 0.0, 0.0) == 0.5          # lambda 0 does not use it


def test_search_algo_option_replaces_search():
    p = train.build_parser()
    assert vars(p.parse_args(["--search-algo", "random"]))["search_algo"] == "random"
    assert "search" not in {f.name for f in train.fields(SearchConfig)}


def test_search_space_errors_are_autosnn_errors():
    for bad in (lambda: get_backbone("ResNet"), lambda: parse_arch("SRB_k5"),
                lambda: search_space.check_candidate("x")):
        with pytest.raises(AutoSNNError):
            bad()
    assert not hasattr(search_space.Backbone, "out_channels")


# ---------------------------------------------------------------------------------------------
# rerank / plot / export on the command line
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, words", [
    (["--norm", "0"], "normaliser must be a finite number > 0"), (["--norm", "-5"], "normaliser"),
    (["--norm", "nan"], "normaliser"), (["--lam", "nan"], "lambda"), (["--lam", "0.2"], "lambda"),
    (["--top", "-1"], "--top"), (["--top", "0"], "--top"), (["--budget", "-1"], "budget"),
    (["--budget", "nan"], "budget"), (["--budget", "10"], "raise --budget"),
])
def test_rerank_bad_values(tmp_path, capsys, extra, words):
    d, _ = finished_run(tmp_path, iterations=1)
    assert evolve.main(["rerank", str(d), *extra]) == 2
    assert words in one_error_line(capsys)


@pytest.mark.parametrize("content, words", [
    ('{"lam": -0.08, "spike_norm": 1}', 'no valid "history"'), ("{not json", "is damaged"), ("[]", "history"),
    ('{"history": [{"arch": "a"}]}', "history"), ('{"history": []}', "no evaluated architecture"),
])
def test_rerank_bad_search_json_names_the_file(tmp_path, capsys, content, words):
    (tmp_path / "search.json").write_text(content)
    assert evolve.main(["rerank", str(tmp_path)]) == 2
    err = one_error_line(capsys)
    assert words in err and str(tmp_path / "search.json") in err


def test_rerank_still_ranks(tmp_path, capsys):
    d, s = finished_run(tmp_path)
    assert evolve.main(["rerank", str(d), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[-1] for ln in lines[2:]] == [r["arch"] for r in s.topk()[:2]]


@pytest.mark.parametrize("argv, hint", [
    (["rerank", "RUN", "--lamm", "-0.1"], "did you mean --lam?"),
    (["rerenk", "RUN"], "did you mean rerank?"),
    (["rerank", "RUN", "--bugdet=3"], "did you mean --budget?"),
    (["export", "RUN", "--lam", "1"], "(see evolve.py export --help)"),      # no hint from another command
])
def test_misspelled_option_is_one_line_with_a_hint(tmp_path, capsys, argv, hint):
    with pytest.raises(SystemExit) as e:
        evolve.main([a.replace("RUN", str(tmp_path)) for a in argv])
    assert e.value.code == 2
    err = one_error_line(capsys)
    assert hint in err and err.startswith("evolve.py")


def test_export_prints_arch_and_a_retrain_command_train_accepts(tmp_path, capsys):
    d, s = finished_run(tmp_path)
    assert evolve.main(["export", str(d)]) == 0
    out = capsys.readouterr().out
    best = s.best()
    assert f"architecture: {best['arch']}" in out and "best_arch.txt" in out
    assert f"generation {best['generation']}," in out and f"val acc {best['acc']:.4f}" in out
    cmd = shlex.split(out.splitlines()[-1])
    assert cmd[:2] == ["python", "train.py"]
    cfg, _ = train.make_config(vars(train.build_parser().parse_args(cmd[2:])))
    assert cfg.run.stage == "retrain" and cfg.retrain.arch == best["arch"]
    assert (cfg.run.dataset, cfg.run.backbone, cfg.run.T, cfg.run.n_train) == ("synthetic", "AutoSNN_16", 2, 64)
    assert cfg.run.data_root == "my data" and "--n-test" not in cmd    # 0 (unset) is left out
    # without best_arch.txt, the best record of search.json is the answer
    (d / "best_arch.txt").unlink()
    assert evolve.main(["export", str(d)]) == 0
    assert f"--arch {best['arch']}" in capsys.readouterr().out
    # a retraining run of a named architecture, without any search
    (d / "search.json").unlink()
    cfg = json.loads((d / "config.json").read_text())
    cfg["retrain"]["arch"] = "AutoSNN"
    (d / "config.json").write_text(json.dumps(cfg))
    assert evolve.main(["export", str(d)]) == 0
    out = capsys.readouterr().out
    assert "--arch SRB_k5-SRB_k5-skip_connect-SRB_k3-SRB_k5" in out and "config.json" in out


def test_export_errors_name_the_file(tmp_path, capsys):
    d, _ = finished_run(tmp_path)
    cases = [(tmp_path / "nope", "is not a folder")]
    empty = tmp_path / "empty"
    empty.mkdir()
    cases.append((empty, "no config.json"))
    for name, text, words in (("c1", "{oops", "config.json is damaged"), ("c2", "[]", "config.json lacks"),
                              ("c3", None, "no best_arch.txt or search.json")):
        f = tmp_path / name
        f.mkdir()
        (f / "config.json").write_text(text if text is not None else (d / "config.json").read_text())
        cases.append((f, words))
    (d / "best_arch.txt").write_text("SRB_k5-nonsense\n")
    cases.append((d, "best_arch.txt: bad block 'nonsense'"))
    for folder, words in cases:
        assert evolve.main(["export", str(folder)]) == 2
        assert words in one_error_line(capsys), words


def test_plots_are_written_durably(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    d, _ = finished_run(tmp_path, iterations=2)
    rows = [{"stage": "supernet", "epoch": 1, "loss": 2.0, "acc": 0.2, "spikes": 10.0},
            {"stage": "supernet", "epoch": 1, "loss": 2.0, "acc": 0.2, "spikes": 10.0},   # repeated by a kill
            {"stage": "search", "generation": 1}]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"stage": "sup')
    written, notes = [], []
    real = files.atomic_write
    monkeypatch.setattr(evolve, "atomic_write", lambda p, w: (written.append(p.name), real(p, w)))
    assert evolve.plot_run(d, notes.append) == ["pareto.png", "curves.png"]
    assert written == ["pareto.png", "curves.png"] and "line 4 is damaged" in notes[0]
    assert (d / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in d.iterdir() if "tmp" in p.name]
