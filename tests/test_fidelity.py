"""Ranking fidelity and the search comparison (benchmarks/fidelity.py, benchmarks/quality.py,
evaluation.kendall_tau / spearman_rho): the statistics on hand-made rankings, the choice of
architectures, a fidelity study that resumes bit for bit, and one line for bad input."""
import math

import numpy as np
import pytest
import torch

import bench
import train
from benchmarks import fidelity as fid
from benchmarks.quality import QualityConfig, paired, search_quality, sign_flip_p, verdict
from conftest import TINY, no_plots
from evaluation import kendall_tau, spearman_rho


# ---------------------------------------------------------------------------------------------
# Rank statistics on hand-made rankings
# ---------------------------------------------------------------------------------------------

def test_tau_and_rho_identical_reversed_and_one_swap():
    x = [0.1, 0.5, 0.3, 0.9]
    assert kendall_tau(x, x) == 1.0 and spearman_rho(x, x) == pytest.approx(1.0)
    assert kendall_tau(x, [-v for v in x]) == -1.0 and spearman_rho(x, [-v for v in x]) == pytest.approx(-1.0)
    # 1 2 3 4 against 1 3 2 4: 5 concordant pairs, 1 discordant -> (5 - 1) / 6; rho = 1 - 6*2/(4*15)
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert spearman_rho([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # only the order matters
    assert kendall_tau([1, 2, 3, 4], [10, 300, 200, 4000]) == pytest.approx(4 / 6)


def test_tau_b_and_rho_with_ties():
    # x = 1 2 2 3, y = 1 2 3 3: 4 concordant, 0 discordant, one pair tied in x, one in y:
    # tau-b = 4 / sqrt((6 - 1)(6 - 1)) = 0.8 (tau-a would be 4/6)
    assert kendall_tau([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(0.8)
    # mean ranks x 1 2.5 2.5 4, y 1 2 3.5 3.5: Pearson of the ranks = 3.75 / 4.5
    assert spearman_rho([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(3.75 / 4.5)
    # a pair tied on both sides counts in neither numerator nor n1/n2 alone: tau-b of x with itself is 1
    assert kendall_tau([1, 1, 2], [1, 1, 2]) == pytest.approx(1.0)
    # constant side: no ranking to compare
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3])) and math.isnan(spearman_rho([2, 2], [1, 3]))
    with pytest.raises(ValueError, match="equally long"):
        kendall_tau([1, 2], [1, 2, 3])


def test_tau_b_matches_a_counting_reference_on_random_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.integers(0, 4, 9), rng.integers(0, 4, 9)
        c = d = tx = ty = 0
        for i in range(9):
            for j in range(i + 1, 9):
                a, b = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
                c += a * b > 0
                d += a * b < 0
                tx += a == 0
                ty += b == 0
        n0 = 36
        want = (c - d) / math.sqrt((n0 - tx) * (n0 - ty)) if tx < n0 and ty < n0 else math.nan
        got = kendall_tau(x, y)
        assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want)


def test_bootstrap_interval_and_top_overlap():
    x = np.arange(12.0)
    y = x + np.random.default_rng(1).normal(0, 3, 12)
    ci = fid.bootstrap_interval(kendall_tau, x, y, 500)
    assert ci[0] <= kendall_tau(x, y) <= ci[1] and ci == fid.bootstrap_interval(kendall_tau, x, y, 500)
    assert fid.bootstrap_interval(kendall_tau, x, x, 200) == [1.0, 1.0]
    assert fid.bootstrap_interval(kendall_tau, x, y, 0) is None
    assert fid.top_overlap([5, 4, 3, 2, 1], [1, 2, 3, 4, 5], 2) == 0
    assert fid.top_overlap([5, 4, 3, 2, 1], [4, 5, 1, 2, 3], 2) == 2


def test_spread_covers_both_rankings():
    # accuracy and spikes independent over a 5 x 5 grid: the design takes the most accurate first,
    # then the corner farthest from it, and never the same record twice
    recs = [{"acc": a / 10, "spikes": 100 + s} for a in range(5) for s in range(5)]
    chosen = fid.spread(recs, 5)
    assert len(set(chosen)) == 5 and chosen[0] == 20      # acc 0.4 with the fewest spikes
    corners = {(recs[i]["acc"], recs[i]["spikes"]) for i in chosen}
    assert {(0.0, 104), (0.4, 104), (0.0, 100)} <= corners      # the other three corners
    assert chosen == [20, 4, 0, 24, 12]                           # ... and the centre; corner ties: pool order
    assert fid.spread(recs, 5) == chosen                          # deterministic


# ---------------------------------------------------------------------------------------------
# The paired comparison
# ---------------------------------------------------------------------------------------------

def test_sign_flip_test_by_hand():
    assert sign_flip_p([1, 2, 3]) == 2 / 8              # all one sign: the two extreme patterns of 8
    assert sign_flip_p([1, -1]) == 1.0 and sign_flip_p([0, 0, 0]) == 1.0
    assert sign_flip_p([3, 1, 2, 1, 2, 1]) == 2 / 64
    # sums of +-3 +-1 +-1: 5 3 3 1 -1 -3 -3 -5; 6 of 8 reach |3|, the observed 3 + 1 - 1
    assert sign_flip_p([3, 1, -1]) == pytest.approx(6 / 8)


def test_verdict_lines():
    line = verdict("pareto", "evolution", "hypervolume", paired([5.0, 7.0, 6.0], [4.0, 4.0, 4.0]))
    assert line.startswith("pareto vs evolution, hypervolume: +2 +- 1 (3 paired seeds, p = 0.25)")
    assert "not distinguishable at 3 seeds (the smallest p 3 seeds can give is 0.25)" in line
    six = paired([1.0] * 6, [0.0, 0.5, 0.2, 0.1, 0.3, 0.4])
    assert verdict("a", "b", "m", six).endswith("a is better (p <= 0.05)")
    assert "b is better" in verdict("a", "b", "m", paired([0.0] * 6, [1.0] * 6))


# ---------------------------------------------------------------------------------------------
# On a tiny trained super-network
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fid")
    mp = pytest.MonkeyPatch()
    mp.setattr(train, "plot_run", no_plots)
    try:
        assert train.main(TINY + ["--stage", "supernet", "--watch-every", "0", "--out", str(out), "--name", "r"]) == 0
    finally:
        mp.undo()
    return out / "r"


def units_state(folder):
    return {p.parent.name: torch.load(p, weights_only=True)["model"] for p in sorted(folder.glob("*/child.pt"))}


OPTS = dict(archs=3, epochs=2, sample_pool=5, bootstrap=50)


@pytest.mark.slow
def test_fidelity_resumes_bit_identically(tiny_run, tmp_path, monkeypatch):
    a = fid.fidelity(tiny_run, fid.FidelityConfig(**OPTS, out=str(tmp_path / "a")), threads=1)
    assert len(a["rows"]) == 3 and a["pool"] == 5 and (tmp_path / "a" / "fidelity.md").is_file()
    # killed during the second epoch of the second unit (its first epoch is checkpointed), then rerun
    real, calls = train.train_epoch, [0]

    def dies(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(train, "train_epoch", dies)
    with pytest.raises(KeyboardInterrupt):
        fid.fidelity(tiny_run, fid.FidelityConfig(**OPTS, out=str(tmp_path / "b")), threads=1)
    units = tmp_path / "b" / "units"
    assert len(list(units.glob("*/results.json"))) == 1
    assert torch.load(next(p for p in units.glob("*/child.pt") if not (p.parent / "results.json").exists()),
                      weights_only=True)["epoch"] == 1
    monkeypatch.setattr(train, "train_epoch", real)
    b = fid.fidelity(tiny_run, fid.FidelityConfig(**OPTS, out=str(tmp_path / "b")), threads=1)
    assert a["rows"] == b["rows"] and a["figures"] == b["figures"]
    ua, ub = units_state(tmp_path / "a" / "units"), units_state(units)
    assert ua.keys() == ub.keys() and len(ua) == 3
    for name in ua:
        for k in ua[name]:
            assert torch.equal(ua[name][k], ub[name][k]), (name, k)
    # the same architectures for another evaluation reuse every unit: nothing is trained again
    monkeypatch.setattr(train, "train_epoch", lambda *a, **k: pytest.fail("retrained a finished unit"))
    c = fid.fidelity(tiny_run, fid.FidelityConfig(**{**OPTS, "bn_recalib": 1}, out=str(tmp_path / "c"),
                                                  same_archs=str(tmp_path / "a")), threads=1)
    assert [r["arch"] for r in c["rows"]] == [r["arch"] for r in a["rows"]] and c["bn_recalib"] == 1
    assert [r["sa"] for r in c["rows"]] == [r["sa"] for r in a["rows"]]
    # a second seed on the same architectures trains only the new seed's units
    monkeypatch.setattr(train, "train_epoch", real)
    d = fid.fidelity(tiny_run, fid.FidelityConfig(**{**OPTS, "seeds": 2}, out=str(tmp_path / "d"),
                                                  same_archs=str(tmp_path / "a")), threads=1)
    assert [r["sa"][:1] for r in d["rows"]] == [r["sa"] for r in a["rows"]] and len(d["rows"][0]["sa"]) == 2
    assert len(units_state(tmp_path / "a" / "units")) == 6 and "seed_tau_acc" in d["figures"]


@pytest.mark.parametrize("argv, words", [
    (["--archs", "2"], "--archs must be an integer in 3..3125"),
    (["--epochs", "0"], "--epochs must be an integer >= 1"),
    (["--sample-pool", "2"], "--sample-pool must be 0 or an integer in --archs..3125"),
    (["--top-k", "13"], "--top-k must be an integer in 1..--archs"),
    (["--lam", "-0.1"], "--lam is not an option of --fidelity"),
    (["--same-archs", "nowhere"], "no pool.json"),
])
def test_fidelity_bad_input_is_one_line(tiny_run, capsys, argv, words):
    capsys.readouterr()
    assert bench.main(["--fidelity", str(tiny_run), "--threads", "1"] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err


@pytest.mark.slow
def test_fidelity_refuses_a_folder_of_other_settings_and_a_non_run(tiny_run, tmp_path, capsys):
    out = tmp_path / "o"
    fid.fidelity(tiny_run, fid.FidelityConfig(archs=3, epochs=1, sample_pool=3, bootstrap=0, out=str(out)), threads=1)
    capsys.readouterr()
    assert bench.main(["--fidelity", str(tiny_run), "--archs", "3", "--epochs", "2", "--sample-pool", "3",
                       "--out", str(out), "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "made with epochs = 1, not 2" in err and len(err.splitlines()) == 1
    assert bench.main(["--fidelity", str(tmp_path), "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a run folder" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_search_quality_pairs_seeds_and_resumes_from_its_evaluations(tiny_run, tmp_path, monkeypatch):
    qc = QualityConfig(seeds=2, iterations=2, retrain_picks=1, out=str(tmp_path / "q"))
    doc = search_quality(tiny_run, qc, pool=4, threads=1)
    assert set(doc["comparisons"]["hypervolume"]) == {"pareto vs evolution", "evolution vs random", "pareto vs random"}
    hv = doc["metrics"]["hypervolume"]
    assert doc["comparisons"]["hypervolume"]["pareto vs evolution"]["diffs"] == [p - e for p, e in
                                                                                  zip(hv["pareto"], hv["evolution"])]
    assert len(doc["picks"]) == 6 and "pick: test acc" in doc["metrics"]
    assert any(v.startswith("pareto vs evolution, hypervolume:") for v in doc["verdicts"])
    # rerun: every architecture comes from evaluations.json and every pick from its unit
    import benchmarks.standalone as sa
    monkeypatch.setattr(sa.train, "search_evaluator", lambda *a, **k: lambda archs: pytest.fail("evaluated again"))
    monkeypatch.setattr(train, "train_epoch", lambda *a, **k: pytest.fail("retrained again"))
    again = search_quality(tiny_run, qc, pool=4, threads=1)
    assert again["metrics"] == doc["metrics"] and again["picks"] == doc["picks"]


def test_units_claimed_by_another_process_are_waited_for_then_taken_over(tiny_run, tmp_path, monkeypatch):
    """train_units skips a unit another process holds, trains the rest, waits, and trains the held
    one itself once its claim is released without a result (that process died)."""
    import threading

    import benchmarks.standalone as sa
    monkeypatch.setattr(sa, "POLL_S", 0.05)
    loaded = sa.load_run(tiny_run, 1, "cpu", lambda m: None)
    folder = tmp_path / "units"
    units = [("SCB_k3-SCB_k3-SCB_k3-SCB_k3-SCB_k3", 0), ("skip_connect-SRB_k3-SCB_k5-SRB_k5-skip_connect", 0)]
    trained, real = [], sa.retrain_unit
    monkeypatch.setattr(sa, "retrain_unit", lambda ld, f, a, s, e: (trained.append(a), real(ld, f, a, s, e))[1])
    out = {}
    with sa.claimed(folder / sa.unit_name(*units[0], 1), wait=False) as mine:
        assert mine
        t = threading.Thread(target=lambda: out.update(sa.train_units(loaded, folder, units, 1)))
        t.start()
        for _ in range(600):
            if sa.unit_result(folder, *units[1], 1) is not None:
                break
            t.join(0.1)
        assert trained == [units[1][0]] and t.is_alive()         # the free one done; waiting for the held one
    t.join(120)
    assert not t.is_alive() and trained == [units[1][0], units[0][0]] and set(out) == set(units)
