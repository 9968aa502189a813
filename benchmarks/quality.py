"""Do the searches beat random search? Evolution, random and pareto search on one trained super-network
at the same budget, paired by seed.

    python3 bench.py --search-quality runs/X --pool 10 --iterations 10 --seeds 3
    python3 bench.py --search-quality runs/X --seeds 6 --lam -0.16 --retrain-picks 10     # -> runs/X/quality/

Each algorithm runs --seeds times (search seeds 0, 1, ...) with --pool architectures x --iterations
generations (default: the run's --iterations; 3 with --quick); topk, mutations and crossovers are each
half the pool (the paper's proportions, 20: 10, 10, 10), fitness acc * (spikes / spike_norm) ** --lam
(default -0.08, the paper's; pareto uses it only to report fitness). Evaluation is the run's search
evaluation (train.search_evaluator; --bn-recalib overrides its BN re-estimation). Search seed s gives every
algorithm the same first generation (the same generator draws it), so the seeds pair the algorithms:
the comparison is of per-seed differences.

Per algorithm and seed:
  hypervolume    of the accuracy-spikes front of everything the search evaluated, against the reference
                 point (accuracy 0, 2 x the super-network's mean spikes per image);
  best fitness   the largest fitness it found;
  best acc @ B   the best accuracy within each of three spike budgets: the 25th, 50th and 75th
                 percentiles of the spikes of every architecture any of the searches evaluated;
  with --retrain-picks E: the architecture each search picks (evolution and random: the fittest;
                 pareto: --pick, default knee) retrained stand-alone for E epochs (benchmarks/standalone.py,
                 the run's seed), its test accuracy and spikes.
For each pair of algorithms: the mean and standard deviation of the per-seed differences and an exact
two-sided paired permutation test (sign flips of the differences; with S seeds the smallest attainable
p is 2 / 2**S, so 3 seeds can never reach 0.05 and 6 are the fewest that can), and one verdict line.
Evaluations are kept in OUT/evaluations.json and retrained picks as units, so rerunning continues;
a second process running the same command replays the searches from that file and shares the picks.
"""
from __future__ import annotations

import itertools
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchmarks.standalone import check_units_recipe, claimed, load_run, open_folder, say, train_units
from evolve import SearchConfig, check_lambda, parse_pick, run_search
from files import AutoSNNError, read_json
from pareto import hypervolume, make_search, pick

ALGOS = ("evolution", "random", "pareto")
PAIRS = (("pareto", "evolution"), ("evolution", "random"), ("pareto", "random"))
ALPHA = 0.05


@dataclass
class QualityConfig:
    """bench.py --search-quality RUN: the options (with bench.py's --pool and --quick)."""
    seeds: int = field(default=3, metadata={"help": "search seeds"})
    iterations: int = field(default=0, metadata={"help": "--search-quality: generations per search (0: the run's "
                                                         "--iterations)"})
    lam: float = field(default=-0.08, metadata={"help": "--search-quality: fitness exponent lambda <= 0 "
                                                        "(default -0.08, the paper's)"})
    pick: str = field(default="knee", metadata={"help": "--search-quality: the pareto search's pick for "
                                                        "--retrain-picks (lambda, knee[:F], budget:SPIKES)"})
    retrain_picks: int = field(default=0, metadata={"help": "--search-quality: retrain each search's pick for "
                                                            "this many epochs (0: off)"})
    bn_recalib: int = -1
    out: str = ""

    def check(self, pool: int) -> None:
        if not isinstance(pool, int) or pool < 2:
            raise AutoSNNError(f"--pool must be an integer >= 2 (got {pool!r})")
        for name, low in (("seeds", 1), ("iterations", 0), ("retrain_picks", 0), ("bn_recalib", -1)):
            if getattr(self, name) < low:
                raise AutoSNNError(f"--{name.replace('_', '-')} must be an integer >= {low} (got {getattr(self, name)})")
        check_lambda(self.lam)
        parse_pick(self.pick)


def sign_flip_p(d) -> float:
    """Exact two-sided paired permutation test of mean(d) = 0: the share of the 2**n sign patterns
    whose |mean| is at least the observed one (n <= 16; beyond, 2**16 seeded random patterns)."""
    d = np.asarray(d, float)
    n = len(d)
    if n == 0 or not np.any(d):
        return 1.0
    if n <= 16:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        signs = np.random.default_rng(0).choice((1.0, -1.0), (2**16, n))
    observed = abs(d.mean())
    return float(np.mean(np.abs(signs @ d / n) >= observed - 1e-12 * max(observed, 1.0)))


def paired(a: list, b: list) -> dict:
    """Per-seed differences a - b (seeds where either is undefined are left out), their mean, sd and p."""
    d = [x - y for x, y in zip(a, b) if x == x and y == y]
    return {"diffs": d, "mean": statistics.fmean(d) if d else float("nan"),
            "sd": statistics.stdev(d) if len(d) > 1 else 0.0, "p": sign_flip_p(d), "n": len(d)}


def verdict(name_a: str, name_b: str, metric: str, pr: dict, fmt: str = ".4g") -> str:
    """One plain line: 'pareto vs evolution, hypervolume: +12 +- 40 (3 paired seeds, p = 0.75): not
    distinguishable at 3 seeds (the smallest p they can give is 0.25)'."""
    n = pr["n"]
    if n == 0:
        return f"{name_a} vs {name_b}, {metric}: no seed where both are defined"
    head = f"{name_a} vs {name_b}, {metric}: {pr['mean']:+{fmt}} +- {pr['sd']:{fmt}} ({n} paired seeds, p = {pr['p']:.3g})"
    if pr["p"] <= ALPHA:
        return head + f": {name_a if pr['mean'] > 0 else name_b} is better (p <= {ALPHA})"
    floor = 2 / 2**n
    return head + f": not distinguishable at {n} seeds" + (
        f" (the smallest p {n} seeds can give is {floor:.3g})" if floor > ALPHA else "")


def search_quality(run_dir, qc: QualityConfig, pool: int, quick: bool = False, threads: int = 2,
                   device: str = "cpu") -> dict:
    """The comparison (module docstring); resumable. Returns quality.json's contents."""
    run_dir = Path(run_dir)
    qc.check(pool)
    loaded = load_run(run_dir, threads, device, say)
    iterations = 3 if quick else (qc.iterations or loaded.cfg.search.iterations)
    bn = loaded.cfg.search.bn_recalib if qc.bn_recalib == -1 else qc.bn_recalib
    out = Path(qc.out) if qc.out else run_dir / "quality"
    settings = {**asdict(qc), "out": None, "iterations": iterations, "pool": pool, "bn_recalib": bn,
                "run": str(run_dir.resolve()), "supernet_epoch": loaded.ck["epoch"], "device": device}
    run = open_folder(out, settings, "a search comparison", f"bench.py --search-quality {run_dir} ...")
    start = time.perf_counter()
    with claimed(out, wait=True):       # the searches: one process; another replays them from evaluations.json
        runs = _searches(loaded, qc, run, out, pool, iterations, bn)
    return _compare(loaded, qc, run, out, pool, iterations, bn, runs, start)


def _searches(loaded, qc: QualityConfig, run, out: Path, pool: int, iterations: int, bn: int) -> dict:
    """{(algorithm, seed): the search's history}, every evaluation kept in OUT/evaluations.json."""
    net = loaded.net
    norm = float(loaded.ck["spike_norm"])
    cache_path = out / "evaluations.json"
    cache = read_json(cache_path) if cache_path.is_file() else {}
    evaluate_new = loaded.evaluator(bn)

    def evaluate(archs):
        new = [a for a in archs if str(a) not in cache]
        for a, res in zip(new, evaluate_new(new) if new else []):
            cache[str(a)] = res
        return [cache[str(a)] for a in archs]

    half = pool // 2
    runs = {}
    for algo in ALGOS:
        for seed in range(qc.seeds):
            cfg = SearchConfig(search_algo=algo, iterations=iterations, pool=pool, topk=half, mutations=half,
                               crossovers=half, lam=qc.lam, search_seed=seed)
            s = make_search(net.backbone, cfg, norm, random.Random(seed))
            t0, before = time.perf_counter(), len(cache)
            run_search(s, evaluate, log=lambda line: None)
            runs[algo, seed] = s.history
            run.write_text(cache_path, json.dumps(cache))
            say(f"{algo} seed {seed}: {len(s.history)} evaluated ({len(cache) - before} new, "
                f"{time.perf_counter() - t0:.0f}s); {len(cache)} distinct so far")
    return runs


def _compare(loaded, qc: QualityConfig, run, out: Path, pool: int, iterations: int, bn: int, runs: dict,
             start: float) -> dict:
    norm = float(loaded.ck["spike_norm"])
    every = sorted(h["spikes"] for hist in runs.values() for h in hist)
    budgets = [every[int(q * (len(every) - 1))] for q in (0.25, 0.5, 0.75)]
    ref = 2 * norm
    metrics = {}           # metric -> algo -> per-seed values
    for algo in ALGOS:
        hists = [runs[algo, s] for s in range(qc.seeds)]
        metrics.setdefault("hypervolume", {})[algo] = [hypervolume(h, 0.0, ref) for h in hists]
        metrics.setdefault("best fitness", {})[algo] = [max(r["fitness"] for r in h) for h in hists]
        for b in budgets:
            metrics.setdefault(f"best acc @ {b:.0f} spikes", {})[algo] = [
                max((r["acc"] for r in h if r["spikes"] <= b), default=float("nan")) for h in hists]
    picks = {}
    if qc.retrain_picks:
        units = out / "units"
        check_units_recipe(units, {**loaded.recipe(), "bench": "stand-alone retraining"}, run)
        chosen = {(a, s): (qc.pick if a == "pareto" else "lambda") for a in ALGOS for s in range(qc.seeds)}
        chosen = {k: (rule, pick(runs[k], rule)) for k, rule in chosen.items()}
        say(f"retraining the {len({r['arch'] for _, r in chosen.values()})} distinct picks for {qc.retrain_picks} epochs")
        res = train_units(loaded, units, [(r["arch"], 0) for _, r in chosen.values()], qc.retrain_picks)
        for k, (rule, rec) in chosen.items():
            picks[k] = {"arch": rec["arch"], "rule": rule, "val_acc": rec["acc"], "val_spikes": rec["spikes"],
                        **res[rec["arch"], 0]}
        metrics["pick: test acc"] = {a: [picks[a, s]["test_acc"] for s in range(qc.seeds)] for a in ALGOS}
        metrics["pick: test spikes"] = {a: [picks[a, s]["spikes"] for s in range(qc.seeds)] for a in ALGOS}
    comparisons = {m: {f"{a} vs {b}": paired(v[a], v[b]) for a, b in PAIRS} for m, v in metrics.items()}
    verdicts = [verdict(a, b, m, comparisons[m][f"{a} vs {b}"]) for m in ("hypervolume", "best fitness")
                + (("pick: test acc",) if qc.retrain_picks else ()) for a, b in PAIRS]
    c = loaded.cfg.run
    doc = {"run": str(loaded.path), "dataset": c.dataset, "backbone": c.backbone, "T": c.T,
           "supernet_epoch": loaded.ck["epoch"], "val_images": len(loaded.ds.search_split(
               loaded.cfg.supernet.train_portion)[1]), "pool": pool, "iterations": iterations, "seeds": qc.seeds,
           "lam": qc.lam, "bn_recalib": bn, "spike_norm": norm, "reference": {"acc": 0.0, "spikes": ref},
           "budgets": budgets, "distinct_archs_evaluated": len({h["arch"] for hist in runs.values() for h in hist}),
           "evaluated": {a: [len(runs[a, s]) for s in range(qc.seeds)] for a in ALGOS}, "retrain_picks": qc.retrain_picks,
           "device": str(loaded.env.device), "threads": torch.get_num_threads(),
           "wall_s": time.perf_counter() - start, "metrics": metrics, "comparisons": comparisons,
           "verdicts": verdicts, "picks": [{"algorithm": a, "seed": s, **p} for (a, s), p in picks.items()]}
    run.write_text(out / "quality.json", json.dumps(doc, indent=1))
    run.write_text(out / "quality.md", text(doc) + "\n")
    return doc


def text(doc: dict) -> str:
    """The comparison as Markdown: settings, per-algorithm means, paired differences, verdicts."""
    def ms(xs):
        xs = [x for x in xs if x == x]
        return f"{statistics.fmean(xs):.4g} +- {statistics.pstdev(xs):.2g}" if xs else "-"

    lines = [f"Search comparison on {doc['run']}'s super-network (epoch {doc['supernet_epoch']}; {doc['dataset']}, "
             f"{doc['backbone']}, T={doc['T']}, {doc['val_images']} D_val images, BN re-estimation batches "
             f"{doc['bn_recalib']}): {doc['pool']} x {doc['iterations']} evaluations per search, seeds "
             f"0..{doc['seeds'] - 1}, lambda {doc['lam']}, {doc['distinct_archs_evaluated']} distinct architectures "
             f"evaluated in all. Hypervolume reference: accuracy 0, {doc['reference']['spikes']:.6g} spikes per "
             f"image (2 x the super-network's mean).", "",
             "| metric (mean +- sd over seeds) | " + " | ".join(ALGOS) + " |", "|---|" + "---|" * len(ALGOS)]
    for m, v in doc["metrics"].items():
        lines.append(f"| {m} | " + " | ".join(ms(v[a]) for a in ALGOS) + " |")
    lines += ["", "| paired difference (mean +- sd, exact permutation p) | " + " | ".join(
        f"{a} - {b}" for a, b in PAIRS) + " |", "|---|" + "---|" * len(PAIRS)]
    for m, comp in doc["comparisons"].items():
        lines.append(f"| {m} | " + " | ".join(
            f"{c['mean']:+.4g} +- {c['sd']:.2g} (p {c['p']:.2g})" if c["n"] else "-" for c in comp.values()) + " |")
    lines += [""] + doc["verdicts"]
    if doc["picks"]:
        lines += ["", f"Picks retrained {doc['retrain_picks']} epochs (the run's seed):", "",
                  "| algorithm | seed | rule | architecture | D_val acc | test acc | test spikes |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {p['algorithm']} | {p['seed']} | {p['rule']} | {p['arch']} | {p['val_acc']:.4f} | "
                  f"{p['test_acc']:.4f} | {p['spikes']:.0f} |" for p in doc["picks"]]
    return "\n".join(lines)
