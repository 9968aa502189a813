"""Ranking fidelity: does the super-network rank architectures as training them stand-alone does?

    python3 bench.py --fidelity runs/X --archs 12 --epochs 10                 # -> runs/X/fidelity/
    python3 bench.py --fidelity runs/X --archs 12 --epochs 10 --seeds 2       # a second seed: the noise ceiling
    python3 bench.py --fidelity runs/X --bn-recalib 8 --same-archs runs/X/fidelity --out runs/X/fidelity-bn8

1. A pool of --sample-pool distinct random architectures (default 4 x --archs; seeded by --sample-seed)
   is evaluated with the super-network on D_val exactly as the run's search evaluates (train.search_evaluator:
   with --bn-recalib > 0 each path's BN statistics are first re-estimated on that many training batches;
   default: the run's own --bn-recalib).
2. --archs of them are chosen spread over the super-network's accuracy and spikes: each pool member is
   placed at (its accuracy rank, its spike rank), both scaled to [0, 1], and the choice is the
   farthest-point (maximin) design in that square: first the most accurate, then repeatedly the member
   farthest from every one chosen so far (ties: pool order). It covers the corners and the middle of both
   rankings, not only the region a search would visit.
3. Each is retrained stand-alone for --epochs epochs with --seeds seeds (benchmarks/standalone.py: one
   resumable unit each, the run's retraining recipe, weights and data order fixed by the run's seed + s)
   and tested on the test set.
4. Report: Kendall's tau-b and Spearman's rho between the super-network's D_val figures and the
   stand-alone test figures (mean over seeds), for accuracy, spikes per image and the fitness
   acc * (spikes / spike_norm) ** lam (the run's lam and normaliser), each with a 95% bootstrap interval
   (--bootstrap resamples of the architectures, percentile method); the overlap of the top --top-k by
   each; where the super-network's favourite lands stand-alone; with 2+ seeds, tau between two seeds of
   stand-alone training (how well any ranking could agree). fidelity.json, fidelity.md, fidelity.png
   (with matplotlib).

--same-archs DIR measures another super-network (or other --bn-recalib) on the architectures of the
fidelity folder DIR and reuses its stand-alone units (they do not depend on the super-network), so a
change to the super-network costs one evaluation per architecture. Rerun the same command to continue.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchmarks.standalone import check_units_recipe, claimed, load_run, open_folder, say, train_units
from evaluation import distinct_archs, kendall_tau, mean_ranks, spearman_rho
from evolve import fitness
from files import AutoSNNError, read_json


@dataclass
class FidelityConfig:
    """bench.py --fidelity RUN: the options (flags are the names with dashes)."""
    archs: int = field(default=12, metadata={"help": "--fidelity: architectures retrained (>= 3)"})
    epochs: int = field(default=10, metadata={"help": "--fidelity: stand-alone training epochs of each"})
    seeds: int = field(default=1, metadata={"help": "--fidelity: training seeds per architecture "
                                                    "(--search-quality: search seeds, default 3)"})
    sample_pool: int = field(default=0, metadata={"help": "--fidelity: random architectures evaluated to "
                                                          "choose from (0: 4 x --archs)"})
    sample_seed: int = field(default=0, metadata={"help": "--fidelity: seed of that pool"})
    bn_recalib: int = field(default=-1, metadata={"help": "BN re-estimation batches per evaluated path "
                                                          "(-1: the run's --bn-recalib, as its search)"})
    same_archs: str = field(default="", metadata={"help": "--fidelity: a fidelity folder whose architectures "
                                                          "and stand-alone units to reuse"})
    top_k: int = field(default=3, metadata={"help": "--fidelity: size of the top sets compared"})
    bootstrap: int = field(default=2000, metadata={"help": "--fidelity: bootstrap resamples (0: no intervals)"})
    out: str = field(default="", metadata={"help": "output folder (default: RUN/fidelity, RUN/quality)"})

    def check(self, size: int) -> None:
        """One line per bad value; size: the search space's size."""
        def need(ok, name, what):
            if not ok:
                raise AutoSNNError(f"--{name.replace('_', '-')} must be {what} (got {getattr(self, name)!r})")
        need(3 <= self.archs <= size, "archs", f"an integer in 3..{size} (the search space)")
        need(self.epochs >= 1, "epochs", "an integer >= 1")
        need(self.seeds >= 1, "seeds", "an integer >= 1")
        need(self.sample_pool == 0 or self.archs <= self.sample_pool <= size, "sample_pool",
             f"0 or an integer in --archs..{size}")
        need(0 <= self.sample_seed < 2**63, "sample_seed", "an integer >= 0")
        need(self.bn_recalib >= -1, "bn_recalib", "an integer >= -1")
        need(1 <= self.top_k <= self.archs, "top_k", "an integer in 1..--archs")
        need(self.bootstrap >= 0, "bootstrap", "an integer >= 0")


# ---------------------------------------------------------------------------------------------
# Choosing the architectures
# ---------------------------------------------------------------------------------------------

def spread(records: list[dict], n: int) -> list[int]:
    """Indices of n records spread over accuracy and spikes: the maximin design in the square of
    their (accuracy rank, spike rank) scaled to [0, 1], ties at their mean rank (module docstring, step 2)."""
    m = len(records)
    scale = max(m - 1, 1)
    pts = np.stack([(mean_ranks([r[k] for r in records]) - 1) / scale for k in ("acc", "spikes")], 1)
    first = max(range(m), key=lambda i: (records[i]["acc"], -records[i]["spikes"], -i))
    chosen = [first]
    dist = np.linalg.norm(pts - pts[first], axis=1)
    while len(chosen) < n:
        dist[chosen] = -1.0
        nxt = int(np.argmax(dist))             # first of the ties: pool order
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(pts - pts[nxt], axis=1))
    return chosen


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------

def bootstrap_interval(stat, x, y, resamples: int, seed: int = 0) -> list | None:
    """95% percentile interval of stat(x[idx], y[idx]) over `resamples` resamples of the pairs with
    replacement (resamples where stat is undefined, e.g. all values tied, are left out)."""
    if resamples == 0:
        return None
    x, y = np.asarray(x, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(resamples):
        idx = rng.integers(0, len(x), len(x))
        v = stat(x[idx], y[idx])
        if v == v:
            vals.append(v)
    if not vals:
        return None
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


def top_overlap(a, b, k: int) -> int:
    """How many of the k largest of a are among the k largest of b (ties: earlier index first)."""
    top = lambda v: set(sorted(range(len(v)), key=lambda i: (-v[i], i))[:k])
    return len(top(a) & top(b))


def agreement(sn, sa, resamples: int) -> dict:
    """tau, rho and their bootstrap intervals for paired lists (super-network, stand-alone)."""
    clean = lambda v: None if v != v else v
    return {"tau": clean(kendall_tau(sn, sa)), "tau_ci": bootstrap_interval(kendall_tau, sn, sa, resamples),
            "rho": clean(spearman_rho(sn, sa)), "rho_ci": bootstrap_interval(spearman_rho, sn, sa, resamples, 1)}


def report(rows: list[dict], seeds: int, lam: float, norm: float, top_k: int, resamples: int) -> dict:
    """rows: per architecture {arch, sn_acc, sn_spikes, sa: [per seed {test_acc, spikes}]} -> the figures."""
    for r in rows:
        r["sa_acc"] = float(np.mean([u["test_acc"] for u in r["sa"]]))
        r["sa_spikes"] = float(np.mean([u["spikes"] for u in r["sa"]]))
        r["sn_fitness"] = fitness(r["sn_acc"], r["sn_spikes"], norm, lam)
        r["sa_fitness"] = fitness(r["sa_acc"], r["sa_spikes"], norm, lam)
    col = lambda k: [r[k] for r in rows]
    out = {m: agreement(col("sn_" + m), col("sa_" + m), resamples) for m in ("acc", "spikes", "fitness")}
    n = len(rows)
    fav = max(range(n), key=lambda i: (rows[i]["sn_acc"], -i))
    order = sorted(range(n), key=lambda i: (-rows[i]["sa_acc"], i))
    out["top_k"] = {"k": top_k, "acc": top_overlap(col("sn_acc"), col("sa_acc"), top_k),
                    "fitness": top_overlap(col("sn_fitness"), col("sa_fitness"), top_k), "chance": top_k * top_k / n}
    out["favourite"] = {"arch": rows[fav]["arch"], "standalone_rank": order.index(fav) + 1,
                        "below_best": max(col("sa_acc")) - rows[fav]["sa_acc"]}
    if seeds >= 2:     # stand-alone against stand-alone: the ceiling of any ranking's agreement
        taus = [kendall_tau([r["sa"][a]["test_acc"] for r in rows], [r["sa"][b]["test_acc"] for r in rows])
                for a in range(seeds) for b in range(a + 1, seeds)]
        taus = [t for t in taus if t == t]
        out["seed_tau_acc"] = float(np.mean(taus)) if taus else None
    return out


# ---------------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------------

def fidelity(run_dir, fc: FidelityConfig, threads: int = 2, device: str = "cpu") -> dict:
    """The whole measurement (module docstring); resumable. Returns fidelity.json's contents."""
    run_dir = Path(run_dir)
    loaded = load_run(run_dir, threads, device, say)
    fc.check(loaded.net.backbone.size)
    out = Path(fc.out) if fc.out else run_dir / "fidelity"
    bn = loaded.cfg.search.bn_recalib if fc.bn_recalib == -1 else fc.bn_recalib
    # what the pool and the units depend on (the report's --top-k and --bootstrap may change on a rerun)
    settings = {**{k: v for k, v in asdict(fc).items() if k not in ("out", "top_k", "bootstrap")},
                "run": str(run_dir.resolve()), "supernet_epoch": loaded.ck["epoch"], "bn_recalib": bn, "device": device}
    source = None
    if fc.same_archs:
        source = Path(fc.same_archs)
        prev = read_json(source / "pool.json") if (source / "pool.json").is_file() else None
        if not isinstance(prev, dict) or "chosen" not in prev:
            raise AutoSNNError(f"--same-archs {source}: no pool.json of a fidelity study in it")
        prev_settings = read_json(source / "settings.json")
        for k in ("archs", "epochs"):       # units are kept per seed: another --seeds reuses those there are
            if prev_settings.get(k) != settings[k]:
                raise AutoSNNError(f"--same-archs {source} was made with --{k} {prev_settings.get(k)}, not "
                                   f"{settings[k]}: give the same")
    run = open_folder(out, settings, "a fidelity study", f"bench.py --fidelity {run_dir} ...")
    return _measure(loaded, fc, run, out, bn, source)


def _measure(loaded, fc: FidelityConfig, run, out: Path, bn: int, source: Path | None) -> dict:
    start = time.perf_counter()
    with claimed(out, wait=True):          # one process evaluates the pool; the others read it
        pool = _pool(loaded, fc, run, out, bn, source)
    by_arch = {r["arch"]: r for r in pool["records"]}
    units = (source or out) / "units"
    check_units_recipe(units, {**loaded.recipe(), "bench": "stand-alone retraining"}, run)
    results = train_units(loaded, units, [(a, s) for a in pool["chosen"] for s in range(fc.seeds)], fc.epochs)
    rows = []
    for a in pool["chosen"]:
        rec = by_arch[a]
        rows.append({"arch": a, "sn_acc": rec["acc"], "sn_spikes": rec["spikes"],
                     "sa": [results[a, s] for s in range(fc.seeds)]})
    norm = float(loaded.cfg.search.spike_norm or loaded.ck["spike_norm"])
    figures = report(rows, fc.seeds, loaded.cfg.search.lam, norm, fc.top_k, fc.bootstrap)
    c = loaded.cfg.run
    doc = {"run": str(loaded.path), "dataset": c.dataset, "backbone": c.backbone, "T": c.T,
           "supernet_epoch": loaded.ck["epoch"], "val_images": len(loaded.ds.search_split(
               loaded.cfg.supernet.train_portion)[1]), "test_images": len(loaded.ds.split("test")),
           "bn_recalib": bn, "archs": len(rows), "pool": len(pool["records"]), "epochs": fc.epochs,
           "seeds": fc.seeds, "lam": loaded.cfg.search.lam, "spike_norm": norm, "units": str(units),
           "threads": torch.get_num_threads(), "wall_s": time.perf_counter() - start,
           "figures": figures, "rows": rows}
    run.write_text(out / "fidelity.json", json.dumps(doc, indent=1))
    run.write_text(out / "fidelity.md", text(doc) + "\n")
    plot(doc, out, say)
    return doc


def _pool(loaded, fc: FidelityConfig, run, out: Path, bn: int, source: Path | None) -> dict:
    """pool.json: the evaluated pool and the chosen architectures (made once, then read)."""
    path = out / "pool.json"
    if path.is_file():
        return read_json(path)
    if source is not None:
        archs = read_json(source / "pool.json")["chosen"]
    else:
        size = fc.sample_pool or min(4 * fc.archs, loaded.net.backbone.size)
        archs = [str(a) for a in distinct_archs(loaded.net.backbone, size, random.Random(fc.sample_seed))]
    say(f"evaluating {len(archs)} architectures with the super-network on D_val"
        + (f" (BN re-estimated on {bn} batches each)" if bn else " (no BN re-estimation)"))
    t0 = time.perf_counter()
    records = [{"arch": a, **r} for a, r in zip(archs, loaded.evaluator(bn)(archs))]
    chosen = archs if source is not None else [archs[i] for i in spread(records, fc.archs)]
    pool = {"records": records, "chosen": chosen, "eval_s": time.perf_counter() - t0}
    run.write_text(path, json.dumps(pool, indent=1))
    return pool


def _ci(a: dict, key: str) -> str:
    v, ci = a[key], a[key + "_ci"]
    if v is None:
        return "undefined (tied)"
    return f"{v:+.2f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")


def text(doc: dict) -> str:
    """The report as Markdown: settings, the agreement table, top-k, the favourite, per architecture."""
    f = doc["figures"]
    lines = [f"Ranking fidelity of {doc['run']}'s super-network (epoch {doc['supernet_epoch']}; {doc['dataset']}, "
             f"{doc['backbone']}, T={doc['T']}): {doc['archs']} architectures chosen from {doc['pool']} evaluated on "
             f"{doc['val_images']} D_val images (BN re-estimation batches: {doc['bn_recalib']}), each retrained "
             f"stand-alone {doc['epochs']} epochs x {doc['seeds']} seed(s) and tested on {doc['test_images']} images.",
             "", "| super-network (D_val) vs stand-alone (test) | Kendall tau-b [95% CI] | Spearman rho [95% CI] |",
             "|---|---|---|"]
    for m, label in (("acc", "accuracy"), ("spikes", "spikes per image"),
                     ("fitness", f"fitness (lambda {doc['lam']}, spike_norm {doc['spike_norm']:.0f})")):
        lines.append(f"| {label} | {_ci(f[m], 'tau')} | {_ci(f[m], 'rho')} |")
    t, fav = f["top_k"], f["favourite"]
    lines += ["", f"Top-{t['k']} overlap: accuracy {t['acc']} of {t['k']}, fitness {t['fitness']} of {t['k']} "
                  f"(chance: {t['chance']:.2f}). The super-network's most accurate ({fav['arch']}) ranks "
                  f"{fav['standalone_rank']} of {doc['archs']} stand-alone, {fav['below_best']:.4f} below the best."]
    if "seed_tau_acc" in f:
        s = f["seed_tau_acc"]
        lines.append(f"Stand-alone seed against seed, accuracy: tau {'undefined' if s is None else f'{s:+.2f}'} "
                     f"(the ceiling for any ranking at this training budget).")
    lines += ["", "| architecture | super-net acc | stand-alone acc | super-net spikes | stand-alone spikes |",
              "|---|---|---|---|---|"]
    for r in sorted(doc["rows"], key=lambda r: -r["sn_acc"]):
        lines.append(f"| {r['arch']} | {r['sn_acc']:.4f} | {r['sa_acc']:.4f} | {r['sn_spikes']:.0f} | "
                     f"{r['sa_spikes']:.0f} |")
    return "\n".join(lines)


def plot(doc: dict, out: Path, log=print) -> None:
    """fidelity.png: super-network against stand-alone, accuracy and spikes (matplotlib, optional)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("note: no fidelity.png drawn (matplotlib is not installed: pip install matplotlib)")
        return
    import io

    from files import atomic_write
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, m, label in zip(axes, ("acc", "spikes"), ("accuracy", "spikes per image")):
        x = [r["sn_" + m] for r in doc["rows"]]
        key = "test_acc" if m == "acc" else "spikes"
        for r in doc["rows"]:
            vals = [u[key] for u in r["sa"]]
            ax.plot([r["sn_" + m]] * len(vals), vals, "-", color="0.7", lw=1)
        ax.scatter(x, [r["sa_" + m] for r in doc["rows"]], s=22, color="tab:blue", zorder=3)
        a = doc["figures"][m]
        ax.set(xlabel=f"super-network, D_val ({label})", ylabel=f"stand-alone, test ({label})",
               title=f"{label}: Kendall tau {_ci(a, 'tau')}")
    fig.suptitle(f"ranking fidelity: {doc['archs']} architectures, {doc['epochs']} epochs x {doc['seeds']} seed(s)"
                 + (" (grey: the seeds' range)" if doc["seeds"] > 1 else ""), fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(out / "fidelity.png", lambda f: f.write(buf.getvalue()))
