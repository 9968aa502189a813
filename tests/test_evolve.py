"""Tests of evolve.py's bookkeeping and runs.py's command line: one generation numbering, progress and
chance-accuracy warnings, rerank/export of damaged files, durable plots (bad values: test_options.py).
No training: histories come from a made-up evaluator or a tiny silent super-network."""
import csv
import dataclasses
import json
import math
import random
import shlex
import shutil

import pytest
import torch
from conftest import count_syncs, fake_eval

import evaluation
import evolve
import files
import runs
import search_space
from autosnn import SpikingNetwork
from evolve import SearchConfig, at_chance, run_search
from files import AutoSNNError, atomic_write_text
from pareto import make_search
from plumbing import config, plots
from plumbing.history import load_history, write_history
from search_space import get_backbone, parse_arch


def tiny_search(**kw):
    cfg = SearchConfig(**{"iterations": 3, "pool": 6, "topk": 3, "mutations": 3, "crossovers": 2, **kw})
    return make_search(get_backbone("AutoSNN_16"), cfg, 1e5, random.Random(1))


def finished_run(tmp_path, iterations=3):
    """A run folder as train.py leaves it after a search: config.json, search.json, pareto.csv, best_arch.txt."""
    d = tmp_path / "run"
    d.mkdir()
    cfg = config.Config.from_flat({"dataset": "synthetic", "backbone": "AutoSNN_16", "T": 2, "n_train": 64,
                                  "data_root": "my data"})
    atomic_write_text(d / "config.json", json.dumps({**cfg.to_dict(), "run_id": "r1"}))
    s = tiny_search(iterations=iterations)
    run_search(s, fake_eval, lambda s: write_history(d, s, atomic_write_text, "r1"), log=lambda m: None)
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

    s = tiny_search(iterations=3)
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
    assert load_history(d)["history"] == s.history


def test_files_from_an_older_version_are_refused_in_one_line(tmp_path):
    """No silent mapping of the project's own earlier files (0-based generations, no
    "first_generation" key): one line that says to rerun."""
    s = tiny_search()
    run_search(s, fake_eval, log=lambda m: None)
    old = s.state_dict()
    old.pop("first_generation")
    with pytest.raises(AutoSNNError, match="older version.*rerun") as e:
        tiny_search().load_state_dict(old)
    assert "\n" not in str(e.value)
    doc = {"lam": -0.08, "spike_norm": 1e5, "algorithm": "evolution", "generations": 3, "history": old["history"]}
    atomic_write_text(tmp_path / "search.json", json.dumps(doc))
    with pytest.raises(AutoSNNError, match="search.json was made by an older version"):
        load_history(tmp_path)


# ---------------------------------------------------------------------------------------------
# Progress and the chance-accuracy warning
# ---------------------------------------------------------------------------------------------

def test_progress_line_reports_rate_and_time_left():
    lines = []
    run_search(tiny_search(iterations=2), fake_eval, log=lines.append)
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
    s = make_search(net.backbone, SearchConfig(iterations=2, pool=3, topk=2, mutations=2, crossovers=1), 1e3,
               random.Random(0))
    lines = []
    run_search(s, lambda archs: evaluation.evaluate_archs(net, archs, lambda: [(x, y)]), log=lines.append,
               num_classes=4, val_images=8)
    assert all(r["acc"] == 0.25 for r in s.history)
    warnings = [ln for ln in lines if ln.startswith("warning")]
    assert len(warnings) == 2 and "3 of 3" in warnings[0] and "under-trained" in warnings[0]

    lines = []       # a healthy spread of accuracies: no warning
    run_search(tiny_search(), fake_eval, log=lines.append, num_classes=10, val_images=200)
    assert lines and not any("warning" in ln for ln in lines)


def test_chance_warning_counts_the_generation_not_the_history():
    """Generation 1 all at chance, generation 2 none: one warning, for generation 1 (counting the
    whole history, 6 of 12 records against a pool of 6, would warn again for generation 2)."""
    def first_at_chance(archs, calls=[]):
        calls.append(1)
        return [{"acc": 0.1 if len(calls) == 1 else 0.6, "spikes": 1e5, "neuron_spikes": 1e5} for _ in archs]

    lines = []
    run_search(tiny_search(iterations=2), first_at_chance, log=lines.append, num_classes=10, val_images=100)
    warnings = [ln for ln in lines if ln.startswith("warning")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: generation 1: 6 of 6")


def test_chance_warning_needs_more_than_half():
    def half_at_chance(archs):
        return [{"acc": 0.1 if i % 2 else 0.6, "spikes": 1e5, "neuron_spikes": 1e5} for i in range(len(archs))]

    lines = []
    run_search(tiny_search(iterations=1), half_at_chance, log=lines.append, num_classes=10, val_images=100)
    assert not any("warning" in ln for ln in lines)      # 3 of 6 is not more than half


# ---------------------------------------------------------------------------------------------
# Configuration checks
# ---------------------------------------------------------------------------------------------

def test_search_algo_option_replaces_search():
    p = config.build_parser()
    assert vars(p.parse_args(["--search-algo", "random"]))["search_algo"] == "random"
    assert "search" not in {f.name for f in dataclasses.fields(SearchConfig)}


def test_search_space_errors_are_autosnn_errors():
    for bad in (lambda: get_backbone("ResNet"), lambda: parse_arch("SRB_k5"),
                lambda: search_space.check_candidate("x")):
        with pytest.raises(AutoSNNError):
            bad()
    assert not hasattr(search_space.Backbone, "out_channels")


# ---------------------------------------------------------------------------------------------
# rerank / plot / export on the command line
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, words", [
    ('{"lam": -0.08, "spike_norm": 1}', 'no valid "history"'), ("{not json", "is damaged"), ("[]", "history"),
    ('{"history": [{"arch": "a"}]}', "history"), ('{"history": []}', "no evaluated architecture"),
])
def test_rerank_bad_search_json_names_the_file(tmp_path, capsys, content, words):
    (tmp_path / "search.json").write_text(content)
    assert runs.main(["rerank", str(tmp_path)]) == 2
    err = one_error_line(capsys)
    assert words in err and str(tmp_path / "search.json") in err


def test_rerank_still_ranks(tmp_path, capsys):
    d, s = finished_run(tmp_path)
    assert runs.main(["rerank", str(d), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[-1] for ln in lines[2:]] == [r["arch"] for r in s.topk()[:2]]


def test_export_prints_arch_and_a_retrain_command_train_accepts(tmp_path, capsys):
    d, s = finished_run(tmp_path)
    assert runs.main(["export", str(d)]) == 0
    out = capsys.readouterr().out
    best = s.best()
    assert f"architecture: {best['arch']}" in out and "best_arch.txt" in out
    assert f"generation {best['generation']}," in out and f"val acc {best['acc']:.4f}" in out
    cmd = shlex.split(out.splitlines()[-1])
    assert cmd[:2] == [files.python(), "train.py"] and shutil.which(cmd[0])   # the interpreter running this
    cfg, _ = config.make_config(vars(config.build_parser().parse_args(cmd[2:])))
    assert cfg.run.stage == "retrain" and cfg.retrain.arch == best["arch"]
    assert (cfg.run.dataset, cfg.run.backbone, cfg.run.T, cfg.run.n_train) == ("synthetic", "AutoSNN_16", 2, 64)
    assert cfg.run.data_root == "my data" and "--n-test" not in cmd    # 0 (unset) is left out
    # without best_arch.txt, the best record of search.json is the answer
    (d / "best_arch.txt").unlink()
    assert runs.main(["export", str(d)]) == 0
    assert f"--arch {best['arch']}" in capsys.readouterr().out
    # a retraining run of a named architecture, without any search
    (d / "search.json").unlink()
    cfg = json.loads((d / "config.json").read_text())
    cfg["retrain"]["arch"] = "AutoSNN"
    (d / "config.json").write_text(json.dumps(cfg))
    assert runs.main(["export", str(d)]) == 0
    out = capsys.readouterr().out
    assert "--arch SRB_k5-SRB_k5-skip_connect-SRB_k3-SRB_k5" in out and "config.json" in out


def test_export_errors_name_the_file(tmp_path, capsys):
    d, _ = finished_run(tmp_path)
    cases = [(tmp_path / "nope", "is not a folder")]
    empty = tmp_path / "empty"
    empty.mkdir()
    cases.append((empty, "no config.json"))
    for name, text, words in (("c1", "{oops", "config.json is damaged"), ("c2", "[]", "config.json is not a run configuration"),
                              ("c3", None, "no best_arch.txt or search.json")):
        f = tmp_path / name
        f.mkdir()
        (f / "config.json").write_text(text if text is not None else (d / "config.json").read_text())
        cases.append((f, words))
    (d / "best_arch.txt").write_text("SRB_k5-nonsense\n")
    cases.append((d, "best_arch.txt: bad block 'nonsense'"))
    for folder, words in cases:
        assert runs.main(["export", str(folder)]) == 2
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
    monkeypatch.setattr(plots, "atomic_write", lambda p, w: (written.append(p.name), real(p, w)))
    assert plots.plot_run(d, notes.append) == ["pareto.png", "curves.png"]
    assert written == ["pareto.png", "curves.png"] and "line 4 is damaged" in notes[0]
    assert (d / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in d.iterdir() if "tmp" in p.name]


def test_pareto_title_names_the_pick_that_chose_the_star():
    h = [{"arch": "a", "acc": 0.5, "spikes": 100.0, "fitness": 0.5}, {"arch": "b", "acc": 0.8, "spikes": 300.0,
                                                                     "fitness": 0.7}]
    doc = {"algorithm": "pareto", "pick": "knee", "lam": -0.08, "spike_norm": 9226.4, "history": h}
    title = plots.pareto_title(doc)
    assert title.startswith("pareto search, --pick knee\n") and "lambda" not in title
    assert "reference point: accuracy 0, 18,453 spikes" in title and "e+" not in title
    assert plots.pareto_title({**doc, "pick": "lambda"}).startswith("pareto search, --pick lambda, lambda = -0.08")
    assert plots.pareto_title({**doc, "algorithm": "evolution", "pick": "budget:200"}) == \
        "evolution search, --pick budget:200, lambda = -0.08"


def test_accuracy_panel_spans_0_to_1_with_a_chance_line(tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from matplotlib.axes import Axes
    rows = [{"stage": "supernet", "epoch": e, "loss": 0.09, "acc": a, "chance": 0.1, "spikes": 10.0}
            for e, a in ((1, 0.098), (2, 0.101))]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines, limits = [], []
    real_line, real_lim = Axes.axhline, Axes.set_ylim
    monkeypatch.setattr(Axes, "axhline", lambda ax, y, *a, **k: (lines.append(y), real_line(ax, y, *a, **k))[1])
    monkeypatch.setattr(Axes, "set_ylim", lambda ax, *a, **k: (limits.append(a), real_lim(ax, *a, **k))[1])
    assert plots.plot_run(tmp_path, lambda m: None) == ["curves.png"]
    assert lines == [0.1] and (0, 1) in limits


# ---------------------------------------------------------------------------------------------
# Parents, evaluation in eval mode, BN recalibration without host syncs
# ---------------------------------------------------------------------------------------------

def test_evolution_children_are_flips_of_the_topk_only():
    """Mutation only, mutation_prob 1 on a two-candidate space: a mutant is its parent with every
    position flipped, so the next pool is exactly the unseen flips of the topk fittest records (not
    of any generation-1 architecture), then random fill."""
    bb = get_backbone("AutoSNN_16", candidates=("skip_connect", "SCB_k3"))
    s = make_search(bb, SearchConfig(iterations=3, pool=8, topk=3, mutations=3, crossovers=0, mutation_prob=1.0,
                                tries=40), 1e5, random.Random(5))
    pool = s.propose()
    s.tell(pool, fake_eval(pool))
    flip = {"skip_connect": "SCB_k3", "SCB_k3": "skip_connect"}
    flips = {"-".join(flip[b] for b in r["arch"].split("-")) for r in s.topk()}
    others = {"-".join(flip[b] for b in r["arch"].split("-")) for r in s.history} - flips
    want = flips - s.seen()
    nxt = [str(a) for a in s.propose()]
    assert len(want) >= 2 and others - s.seen()            # the test can tell topk parents from others
    assert set(nxt[:len(want)]) == want


def eval_net():
    """A small super-network in train mode with non-trivial BN statistics. -> (net, x, y)."""
    torch.manual_seed(0)
    net = SpikingNetwork("AutoSNN_4", num_classes=4, T=2, v_th=0.4)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2
    y = torch.randint(0, 4, (8,), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for _ in range(3):
            net(x * 0.5 + 1, search_space.AUTOSNN)       # running stats away from this batch's own
    return net, x, y


def test_evaluation_runs_in_eval_mode_and_matches_the_plain_forward():
    """Both evaluators, called on a network left in train mode, give the eval-mode forward's numbers
    and leave the BN running statistics alone (a train-mode forward would use batch statistics and
    update them)."""
    archs = [search_space.AUTOSNN, parse_arch(["SCB_k3"] * 5), parse_arch(["skip_connect"] * 5)]
    net, x, y = eval_net()
    ref_net = eval_net()[0].eval()
    want = []
    with torch.no_grad():
        for a in archs:
            out, st = ref_net(x, a)
            want.append(((out.argmax(1) == y).sum().item() / len(y), st.summary()["spikes"]))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    pooled = evaluation.evaluate_pool(net, archs, [(x[:5], y[:5]), (x[5:], y[5:])])
    net.train()
    alone = [evaluation.evaluate_model(net.train(), [(x, y)], a) for a in archs]
    for (acc, spikes), p, m in zip(want, pooled, alone):
        assert p["acc"] == m["acc"] == acc
        assert p["spikes"] == pytest.approx(spikes) and m["spikes"] == pytest.approx(spikes)
    assert len({w[1] for w in want}) == len(archs)          # the architectures really differ
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert "silent_layers" in alone[0] and all(alone[0]["per_layer"][n] == 0 for n in alone[0]["silent_layers"])


def test_recalibrate_bn_reads_nothing_back_and_averages_cumulatively(monkeypatch):
    """torch's momentum=None reads num_batches_tracked with float() at every BN call; recalibrate_bn
    must not. The result is still the plain average of the batch statistics (compared here with
    torch's own cumulative mode)."""
    net, x, _ = eval_net()
    batches = [(x[i:i + 2] * (1 + i), None) for i in range(0, 8, 2)]
    child = net.child(search_space.AUTOSNN)
    assert count_syncs(monkeypatch, lambda: evaluation.recalibrate_bn(child, search_space.AUTOSNN, batches)) == 0
    ref = net.child(search_space.AUTOSNN)
    bns = [m for m in ref.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    ref.train()
    with torch.no_grad():
        for b, _ in batches:
            ref(b, search_space.AUTOSNN)
    for (k, v), (k2, w) in zip(child.state_dict().items(), ref.state_dict().items()):
        if "running" in k:
            assert torch.allclose(v, w, rtol=1e-5, atol=1e-6), k
    assert all(m.momentum == 0.1 for m in child.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))


# ---------------------------------------------------------------------------------------------
# Fitness and search mechanics (moved from test_pipeline.py)
# ---------------------------------------------------------------------------------------------

BIG = {"iterations": 4, "pool": 10, "topk": 5, "mutations": 5, "crossovers": 3}


def test_fitness_values():
    f = evolve.fitness
    assert f(0.9, 5000, 1000, 0.0) == 0.9
    assert f(0.5, 2000, 1000, -0.08) == pytest.approx(0.5 * math.exp(-0.08 * math.log(2)))   # (2000/1000)^-0.08
    assert f(0.5, 1000, 1000, -0.24) == pytest.approx(0.5)
    assert f(0.5, 500, 1000, -0.16) > 0.5 > f(0.5, 1500, 1000, -0.16)
    assert f(0.1, 0, 1000, -0.08) == 0.0
    with pytest.raises(AutoSNNError, match="lambda"):
        f(0.5, 100, 100, 0.1)


def test_more_negative_lambda_never_picks_more_spikes():
    rng = random.Random(0)
    for _ in range(200):
        history = [{"arch": str(i), "acc": rng.uniform(0.1, 0.95), "spikes": rng.uniform(1e4, 3e5)}
                   for i in range(30)]
        picks = [evolve.rerank(history, lam, 1e5, top=1)[0] for lam in (0.0, -0.08, -0.16, -0.24, -0.5)]
        spikes = [p["spikes"] for p in picks]
        assert all(a >= b for a, b in zip(spikes, spikes[1:]))
        assert picks[0]["acc"] == max(h["acc"] for h in history)


def test_mutation_probability_and_validity():
    s = tiny_search(mutation_prob=0.2)
    changed = []
    for _ in range(4000):
        child = s.mutate(search_space.AUTOSNN)
        parse_arch(str(child))
        changed.append(sum(a != b for a, b in zip(child, search_space.AUTOSNN)))
    assert sum(changed) / len(changed) == pytest.approx(5 * 0.2, abs=0.06)     # binomial(5, 0.2) mean
    assert changed.count(0) / len(changed) == pytest.approx(0.8 ** 5, abs=0.03)


def test_crossover_is_one_point():
    s = tiny_search()
    p1, p2 = parse_arch(["SCB_k3"] * 5), parse_arch(["SRB_k5"] * 5)
    cuts = set()
    for _ in range(400):
        c = s.crossover(p1, p2)
        k = c.count("SCB_k3")
        assert c == tuple(["SCB_k3"] * k + ["SRB_k5"] * (5 - k))
        cuts.add(k)
    assert cuts == {1, 2, 3, 4}


@pytest.mark.parametrize("algo", ["evolution", "random", "pareto"])
def test_every_algorithm_proposes_unseen_valid_architectures_at_the_same_budget(algo):
    s = tiny_search(search_algo=algo, **BIG)
    seen = set()
    while not s.done:
        pool = s.propose()
        strs = [str(a) for a in pool]
        assert len(pool) == 10 and len(set(strs)) == 10 and not seen & set(strs)
        for a in pool:
            parse_arch(str(a))
        seen |= set(strs)
        s.tell(pool, fake_eval(pool))
    assert len(s.history) == 40
    assert s.topk()[0]["fitness"] == max(h["fitness"] for h in s.history)


def test_search_state_roundtrip_continues_identically():
    a, b = tiny_search(**BIG), tiny_search(**BIG)
    for _ in range(2):
        pool = a.propose()
        a.tell(pool, fake_eval(pool))
    b.load_state_dict(json.loads(json.dumps(a.state_dict(), default=list)) | {"rng": a.rng.getstate()})
    for s in (a, b):
        run_search(s, fake_eval, log=lambda m: None)
    assert a.history == b.history


def test_small_space_exhausts_cleanly():
    bb = get_backbone("AutoSNN_16", candidates=("skip_connect", "SCB_k3"))      # 2^5 = 32 archs
    s = make_search(bb, SearchConfig(iterations=10, pool=10, topk=3, mutations=3, crossovers=3), 1e5, random.Random(0))
    run_search(s, fake_eval, log=lambda m: None)
    assert len(s.history) == len({h["arch"] for h in s.history}) == 32


def test_prefix_shared_pool_equals_one_by_one():
    net, x, y = eval_net()
    rng = random.Random(3)
    archs = [search_space.sample_arch(net.backbone, rng) for _ in range(10)] + [search_space.AUTOSNN]
    batches = [(x[:5], y[:5]), (x[5:], y[5:])]
    together = evaluation.evaluate_pool(net, archs, batches)
    for a, r in zip(archs, together):
        alone = evaluation.evaluate_pool(net, [a], batches)[0]
        assert alone["acc"] == r["acc"] and alone["spikes"] == r["spikes"]
        assert alone["neuron_spikes"] == r["neuron_spikes"] and alone["per_layer"] == r["per_layer"]
    assert len({r["spikes"] for r in together}) > 5
