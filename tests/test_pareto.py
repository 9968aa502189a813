"""Tests of pareto.py (non-dominated sorting, crowding distance, front, hypervolume, knee, --pick) on
hand-made points, and of the pareto search (--search-algo pareto): seeded, deterministic, resumable.
No training: evaluations come from a made-up evaluator."""
import json
import math
import random

import pytest

import pareto
import runs
from evolve import SearchConfig, run_search
from files import AutoSNNError
from pareto import crowding_distance, hypervolume, knee, make_search, nondominated_sort, pareto_front, pick
from plumbing import config
from plumbing.history import write_history
from search_space import get_backbone


def rec(name, acc, spikes, fitness=None, **kw):
    return {"arch": name, "acc": acc, "spikes": spikes, "fitness": acc if fitness is None else fitness, **kw}


# ---------------------------------------------------------------------------------------------
# Sorting and crowding on hand-made points (all objectives minimised)
# ---------------------------------------------------------------------------------------------

def test_nondominated_sort_with_ties_and_duplicates():
    pts = [(1, 5), (2, 2), (5, 1), (2, 2),      # front 0: a duplicate pair stays together
           (2, 5), (3, 3), (6, 1),              # front 1: (2,5) is dominated by (1,5) and (2,2) only
           (3, 5), (6, 6)]                      # front 2 and 3
    assert nondominated_sort(pts) == [[0, 1, 2, 3], [4, 5, 6], [7], [8]]
    # equal in one objective, better in the other: dominated
    assert nondominated_sort([(1, 1), (1, 2), (2, 1)]) == [[0], [1, 2]]
    assert nondominated_sort([(0, 0)] * 3) == [[0, 1, 2]]
    assert nondominated_sort([]) == []


def test_crowding_distance_by_hand():
    # objective 0 spans 0..4, objective 1 spans 0..8
    pts = [(0, 8), (1, 6), (2, 2), (4, 0)]
    d = crowding_distance(pts)
    assert d[0] == d[3] == math.inf
    assert d[1] == pytest.approx((2 - 0) / 4 + (8 - 2) / 8)
    assert d[2] == pytest.approx((4 - 1) / 4 + (6 - 0) / 8)


def test_crowding_distance_duplicates_and_flat_objective():
    # duplicates: the sort by (value, index) gives the first copy an end and the copy a zero gap
    d = crowding_distance([(0, 2), (1, 1), (1, 1), (2, 0)])
    assert d[0] == d[3] == math.inf
    assert d[1] == pytest.approx((1 - 0) / 2 + (2 - 1) / 2) and d[2] == pytest.approx((2 - 1) / 2 + (1 - 0) / 2)
    # an objective where all are equal adds nothing beyond the ends' infinity
    d = crowding_distance([(0, 5), (1, 5), (3, 5)])
    assert d[0] == d[2] == math.inf and d[1] == pytest.approx(3 / 3)
    assert crowding_distance([(1, 1)]) == [math.inf] and crowding_distance([]) == []


def test_survivors_take_whole_fronts_then_the_least_crowded():
    recs = [rec("a", 0.9, 100), rec("b", 0.8, 50), rec("c", 0.7, 40), rec("d", 0.75, 45),
            rec("e", 0.6, 100), rec("f", 0.5, 30)]
    # front 0: a, b, c, d, f (f has the fewest spikes); e is dominated by a
    # crowding in front 0: ends a (most accurate), f (fewest spikes) infinite; then b, d, c
    got = [(r["arch"], rank) for r, rank, _ in pareto.survivors(recs, 4)]
    assert got[:2] == [("a", 0), ("f", 0)]
    assert [g[1] for g in got] == [0, 0, 0, 0] and "e" not in [g[0] for g in got]
    # crowding of b, c, d: acc span 0.4, spikes span 70 (ordered f c d b a on both)
    crowd = {r["arch"]: c for r, _, c in pareto.survivors(recs, 6)}
    assert crowd["b"] == pytest.approx((0.9 - 0.75) / 0.4 + (100 - 45) / 70)
    assert crowd["d"] == pytest.approx((0.8 - 0.7) / 0.4 + (50 - 40) / 70)
    assert crowd["c"] == pytest.approx((0.75 - 0.5) / 0.4 + (45 - 30) / 70)
    assert [r["arch"] for r, _, _ in pareto.survivors(recs, 6)] == ["a", "f", "b", "c", "d", "e"]


def test_tournament_prefers_rank_then_crowding():
    pool = [({"arch": "x"}, 0, 0.5), ({"arch": "y"}, 1, math.inf), ({"arch": "z"}, 0, 2.0)]
    wins = {"x": 0, "y": 0, "z": 0}
    rng = random.Random(0)
    for _ in range(600):
        wins[pareto.tournament(pool, rng)["arch"]] += 1
    # z beats both; x beats y; y never wins (it loses every pairing it is drawn into)
    assert wins["y"] == 0 and wins["z"] > wins["x"] > 0


# ---------------------------------------------------------------------------------------------
# Front, hypervolume, knee, --pick
# ---------------------------------------------------------------------------------------------

def test_pareto_front_drops_less_accurate_with_equal_spikes():
    h = [rec("a", 0.9, 100), rec("b", 0.8, 50), rec("c", 0.7, 60), rec("d", 0.9, 120),
         rec("e", 0.85, 100), rec("f", 0.8, 50)]                 # e: equal spikes to a, less accurate
    assert [r["arch"] for r in pareto_front(h)] == ["b", "f", "a"]   # f duplicates b's point: kept


def test_hypervolume_by_hand():
    # front (spikes, acc): (10, 0.5), (20, 0.7), (40, 0.9); reference (acc 0, spikes 50)
    # area = (20-10)*0.5 + (40-20)*0.7 + (50-40)*0.9 = 5 + 14 + 9 = 28
    h = [rec("a", 0.5, 10), rec("b", 0.7, 20), rec("c", 0.9, 40), rec("d", 0.6, 30)]   # d dominated
    assert hypervolume(h, 0.0, 50.0) == pytest.approx(28.0)
    # a higher accuracy reference and a point beyond the spike reference (adds nothing)
    assert hypervolume(h + [rec("e", 0.95, 60)], 0.5, 50.0) == pytest.approx(0 + 20 * 0.2 + 10 * 0.4)
    assert hypervolume([rec("a", 0.5, 60)], 0.0, 50.0) == 0.0


FRONT = [rec("lean", 0.50, 10, fitness=0.60), rec("knee", 0.80, 20, fitness=0.72),
         rec("mid", 0.85, 50, fitness=0.72), rec("rich", 0.90, 100, fitness=0.70),
         rec("bad", 0.70, 60, fitness=0.75)]          # dominated by knee: never picked, even at top fitness


def test_pick_rules_on_a_hand_made_front():
    # lambda: the largest fitness on the front; knee ties mid at 0.72 and is earlier
    assert pick(FRONT, "lambda")["arch"] == "knee"
    # knee: scaled spikes (x-10)/90, acc (y-0.5)/0.4; distance to the line (0,0)-(1,1) is |x-y|/sqrt2:
    # knee |0.111-0.75| = 0.639, mid |0.444-0.875| = 0.431
    assert knee(pareto_front(FRONT))["arch"] == "knee" and pick(FRONT, "knee")["arch"] == "knee"
    assert pick(FRONT, "budget:50")["arch"] == "mid"
    assert pick(FRONT, "budget:49.9")["arch"] == "knee"
    assert pick(FRONT, "budget:1e9")["arch"] == "rich"
    assert pick(FRONT, "budget:10")["arch"] == "lean"
    assert knee([FRONT[0]])["arch"] == "lean" and knee(FRONT[:2])["arch"] == "knee"


def test_knee_ignores_the_barely_working_end_of_a_front():
    # A front whose cheap end is a network at chance (0.10) and one that barely works (0.34). Scaled
    # with the chance point, the farthest from the line is "poor" (distance 0.286 against 0.26 for
    # "ok" and "good"): the 34% pick a user would not make. Above half the best accuracy (0.34) the
    # line runs from poor to best and the farthest is "good": 66% at 60% of the best's spikes.
    front = [rec("junk", 0.10, 1), rec("poor", 0.34, 2), rec("ok", 0.60, 50), rec("good", 0.66, 60),
             rec("best", 0.68, 100)]
    assert knee(front)["arch"] == "poor"                       # no floor: the old rule's answer
    assert pick(front, "knee")["arch"] == "good"
    assert pick(front, "knee:0.5")["arch"] == "good"
    assert pick(front, "knee:0.85")["arch"] == "good"          # floor 0.578: the line runs from ok to best
    assert pick(front, "knee:0.9")["arch"] == "best"           # only good and best: the most accurate
    assert pick(front, "knee:0.01")["arch"] == "poor"


@pytest.mark.parametrize("rule, words", [
    ("budget:5", "the fewest is 10"), ("budget:-1", "budget:SPIKES"), ("budget:", "budget:SPIKES"),
    ("budget:abc", "budget:SPIKES"), ("budget:nan", "budget:SPIKES"), ("knees", "lambda, knee, knee:F"),
    ("", "lambda, knee, knee:F"), ("knee:0", "knee:F"), ("knee:1.5", "knee:F"), ("knee:nan", "knee:F"),
])
def test_bad_pick_is_one_line(rule, words):
    with pytest.raises(AutoSNNError, match=words) as e:
        pick(FRONT, rule)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kw, words", [
    ({"objectives": "acc,energy"}, "--objectives"), ({"objectives": "spikes"}, "--objectives"),
    ({"objectives": "acc,acc"}, "--objectives"), ({"objectives": "acc"}, "--objectives"),
    ({"pick": "budget"}, "--pick"), ({"pick": "knee "}, "--pick"), ({"search_algo": "nsga"}, "pareto"),
])
def test_search_config_rejects_bad_pareto_values(kw, words):
    with pytest.raises(AutoSNNError, match=words) as e:
        SearchConfig(**kw).check()
    assert "\n" not in str(e.value)


def test_train_cli_gets_the_new_options():
    args = vars(config.build_parser().parse_args(["--search-algo", "pareto", "--pick", "knee",
                                                  "--objectives", "acc,spikes,sops"]))
    assert (args["search_algo"], args["pick"], args["objectives"]) == ("pareto", "knee", "acc,spikes,sops")


# ---------------------------------------------------------------------------------------------
# The pareto search
# ---------------------------------------------------------------------------------------------

def tradeoff_eval(archs):
    """Made-up accuracy, spikes and sops from the architecture string: a real trade-off (more SRB
    blocks, more accuracy and more spikes) plus a deterministic spread."""
    out = []
    for a in archs:
        h = sum(ord(c) * (i + 1) for i, c in enumerate(str(a)))
        srb = str(a).count("SRB")
        out.append({"acc": 0.3 + 0.1 * srb + (h % 13) / 200, "spikes": 4e4 + 2e4 * srb + (h % 89) * 1e2,
                    "neuron_spikes": 4e4, "sops": 1e6 + (h % 31) * 1e4})
    return out


def pareto_search(seed=1, **kw):
    cfg = SearchConfig(**{"search_algo": "pareto", "iterations": 5, "pool": 8, "topk": 4, "mutations": 4,
                          "crossovers": 3, **kw})
    return make_search(get_backbone("AutoSNN_16"), cfg, 1e5, random.Random(seed))


def test_pareto_search_is_seeded_and_resumes_bit_identically():
    a, b = pareto_search(), pareto_search()
    for s in (a, b):
        run_search(s, tradeoff_eval, log=lambda m: None)
    assert a.history == b.history and len(a.history) == 40 and len({r["arch"] for r in a.history}) == 40
    assert a.rng.getstate() == b.rng.getstate()
    assert pareto_search(seed=2).propose() != pareto_search(seed=1).propose()
    # interrupted after generation 2, through a JSON round trip as search.pt/search.json would hold it
    c = pareto_search()
    for _ in range(2):
        pool = c.propose()
        c.tell(pool, tradeoff_eval(pool))
    d = pareto_search(seed=12345)
    state = json.loads(json.dumps(c.state_dict()))
    state["rng"] = c.rng.getstate()          # tuples: torch.save keeps them, JSON would not
    d.load_state_dict(state)
    run_search(d, tradeoff_eval, log=lambda m: None)
    assert d.history == a.history and pareto_front(d.history) == pareto_front(a.history)
    assert pick(d.history, d.cfg.pick) == pick(a.history, a.cfg.pick)


def test_pareto_search_parents_are_survivors(monkeypatch):
    """Every tournament runs among the topk survivors by (rank, crowding) of everything evaluated
    (for the second parent of a crossover: less the first), and every mutant is the flip of a winner
    (mutation_prob 1 on a two-candidate space flips every position)."""
    bb = get_backbone("AutoSNN_16", candidates=("skip_connect", "SCB_k3"))
    s = make_search(bb, SearchConfig(search_algo="pareto", iterations=3, pool=6, topk=3, mutations=3, crossovers=2,
                                mutation_prob=1.0, tries=40), 1e5, random.Random(3))
    pool = s.propose()
    s.tell(pool, tradeoff_eval(pool))
    elite = {r["arch"] for r, _, _ in pareto.survivors(s.history, 3)}
    entrants, winners = [], []
    real = pareto.tournament

    def spy(pool, rng):
        entrants.append({r["arch"] for r, _, _ in pool})
        winners.append(real(pool, rng)["arch"])
        return next(r for r, _, _ in pool if r["arch"] == winners[-1])

    monkeypatch.setattr(pareto, "tournament", spy)
    nxt = s.propose()
    assert entrants and entrants[0] == elite and all(e <= elite and len(e) >= 2 for e in entrants)
    seconds = [(w, e) for w, e in zip(winners, entrants[1:]) if len(e) == len(elite) - 1]
    assert seconds and all(w not in e for w, e in seconds)        # two distinct parents per crossover
    flip = {"skip_connect": "SCB_k3", "SCB_k3": "skip_connect"}
    assert str(nxt[0]) == "-".join(flip[b] for b in winners[0].split("-"))


def test_pareto_search_with_sops_and_without():
    s = pareto_search(objectives="acc,spikes,sops", iterations=3)
    run_search(s, tradeoff_eval, log=lambda m: None)
    assert len(s.history) == 24
    lines = []
    run_search(pareto_search(iterations=2), tradeoff_eval, log=lines.append)
    assert "; front of " in lines[-1]
    t = pareto_search(objectives="acc,spikes,sops")
    pool = t.propose()
    with pytest.raises(AutoSNNError, match="no 'sops'.*acc,spikes"):
        t.tell(pool, [{k: v for k, v in r.items() if k != "sops"} for r in tradeoff_eval(pool)])


def test_chosen_follows_pick_and_lambda_default_is_the_fittest():
    s = pareto_search(iterations=3, lam=-0.24)
    run_search(s, tradeoff_eval, log=lambda m: None)
    assert pick(s.history, s.cfg.pick) == s.best()                    # no fitness tie here
    front = pareto_front(s.history)
    s.cfg.pick = "knee"
    assert pick(s.history, s.cfg.pick) == knee(front)
    s.cfg.pick = f"budget:{front[1]['spikes']}"
    assert pick(s.history, s.cfg.pick) == front[1] and pick(s.history, s.cfg.pick)["spikes"] < max(r["spikes"] for r in front)
    s.cfg.pick = f"budget:{front[0]['spikes'] / 2}"
    with pytest.raises(AutoSNNError, match="raise the budget"):
        pick(s.history, s.cfg.pick)


def test_rerank_pick_and_export_on_a_pareto_search(tmp_path, capsys):
    from files import atomic_write_text
    d = tmp_path / "run"
    d.mkdir()
    cfg = config.Config.from_flat({"dataset": "synthetic", "backbone": "AutoSNN_16", "T": 2, "n_train": 64})
    atomic_write_text(d / "config.json", json.dumps({**cfg.to_dict(), "run_id": "r1"}))
    s = pareto_search(iterations=3, pick="knee")
    run_search(s, tradeoff_eval, lambda s: write_history(d, s, atomic_write_text, "r1"), log=lambda m: None)
    doc = json.loads((d / "search.json").read_text())
    assert (doc["algorithm"], doc["pick"], doc["objectives"]) == ("pareto", "knee", "acc,spikes")
    want = knee(pareto_front(s.history))
    assert runs.main(["export", str(d)]) == 0           # no best_arch.txt: the search's own pick
    assert f"--arch {want['arch']}" in capsys.readouterr().out
    assert runs.main(["rerank", str(d), "--pick", "budget:1e12"]) == 0
    most = max(pareto_front(s.history), key=lambda r: r["acc"])
    assert most["arch"] in capsys.readouterr().out.splitlines()[1]
    assert runs.main(["rerank", str(d), "--pick", "budget:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "raise the budget" in err


@pytest.mark.slow
def test_train_runs_a_pareto_search_end_to_end(tmp_path, monkeypatch, capsys):
    """train.py --search-algo pareto on tiny synthetic data: the search stage runs NSGA-II, records
    its settings in search.json, and retrains an architecture of the evaluated history; bench.py
    --search-quality then compares the three algorithms on its super-network."""
    import train
    monkeypatch.setattr(train, "plot_run", lambda *args, **kwargs: [])
    argv = ["--dataset", "synthetic", "--n-train", "64", "--n-test", "16", "--backbone", "AutoSNN_4", "--T", "2",
            "--batch-size", "32", "--eval-batch-size", "64", "--supernet-epochs", "1", "--retrain-epochs", "1",
            "--iterations", "3", "--pool", "4", "--topk", "2", "--mutations", "2", "--crossovers", "1",
            "--log-every", "0", "--device", "cpu", "--search-algo", "pareto", "--pick", "knee",
            "--out", str(tmp_path), "--name", "p"]
    assert train.main(argv) == 0
    d = tmp_path / "p"
    doc = json.loads((d / "search.json").read_text())
    assert (doc["algorithm"], doc["pick"], doc["generations"]) == ("pareto", "knee", 3)
    assert len({r["arch"] for r in doc["history"]}) == len(doc["history"]) == 12
    best = (d / "best_arch.txt").read_text().strip()
    assert best == knee(pareto_front(doc["history"]))["arch"]       # train.py retrains --pick's choice
    # bench.py --search-quality on that super-network: every algorithm gets the same budget
    import bench
    capsys.readouterr()
    assert bench.main(["--search-quality", str(d), "--pool", "4", "--seeds", "2", "--quick", "--json",
                       "--threads", "0"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["reference"] == {"acc": 0.0, "spikes": 2 * res["spike_norm"]} and len(res["budgets"]) == 3
    for algo in ("evolution", "random", "pareto"):
        hv = res["metrics"]["hypervolume"][algo]
        assert res["evaluated"][algo] == [12, 12] and len(hv) == 2
        assert all(0 <= v <= res["reference"]["spikes"] for v in hv)
    assert bench.main(["--search-quality", str(tmp_path), "--pool", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a run folder" in err and len(err.splitlines()) == 1


def test_pareto_survivors_use_every_objective(monkeypatch):
    """With --objectives acc,spikes,sops the tournaments run among the 3-objective survivors, which
    here differ from the accuracy-spikes ones."""
    s = pareto_search(objectives="acc,spikes,sops", pool=12, topk=4)
    pool = s.propose()
    s.tell(pool, tradeoff_eval(pool))
    three = {r["arch"] for r, _, _ in pareto.survivors(s.history, 4, ("acc", "spikes", "sops"))}
    two = {r["arch"] for r, _, _ in pareto.survivors(s.history, 4)}
    assert three != two
    entrants = []
    real = pareto.tournament
    monkeypatch.setattr(pareto, "tournament", lambda pool, rng: (entrants.append({r["arch"] for r, _, _ in pool}),
                                                                 real(pool, rng))[1])
    s.propose()
    assert entrants[0] == three
