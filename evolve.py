"""Spike-aware architecture search with a trained super-network (paper sec. 4 and 6).

Fitness of an architecture A, with its validation accuracy and spikes per image from the
super-network's weights:

    F(A) = acc(A) * (spikes(A) / spike_norm) ** lam,     lam <= 0   (lam = 0: plain accuracy)

The evolutionary search starts from `pool` random architectures; every generation keeps the
`topk` fittest of everything evaluated so far and proposes `mutations` mutants (each searched
position changes with probability `mutation_prob` to a different candidate), `crossovers`
one-point crossovers of two distinct parents, and random architectures to fill the pool. No
architecture is evaluated twice. `search_algo="random"` is the weight-sharing random-search
baseline: every pool is fresh random architectures, same budget.

Evaluation runs a whole pool per validation batch and computes every shared prefix (the stem and
each identical leading sequence of blocks) only once; it gives the same numbers as evaluating
each architecture alone (tested).

Generations are numbered from 1 everywhere (generation 1 = the initial random pool): in the
history records, search.json, pareto.csv, pareto.png, metrics.jsonl and the log. `Search.generation`
counts the generations completed, so right after a generation it equals that generation's number.

Re-rank a finished search under another fitness without evaluating anything again, redraw its
plots (needs matplotlib), or print the architecture found and the command that retrains it:

    python evolve.py rerank runs/X --lam -0.24
    python evolve.py rerank runs/X --spike-budget 60000
    python evolve.py rerank runs/X --by energy_uj --lam -0.1      # rank by the energy estimate
    python evolve.py plot runs/X
    python evolve.py export runs/X
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import random
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from autosnn import SpikeStats, SpikingNetwork, Trace, predict
from files import AutoSNNError, Parser, atomic_write, progress
from search_space import Arch, Backbone, parse_arch, resolve_arch, sample_arch


def fitness(acc: float, spikes: float, spike_norm: float, lam: float) -> float:
    """acc * (spikes / spike_norm) ** lam. A path that never spikes cannot classify: fitness 0
    (the formula would give infinity for lam < 0)."""
    if not (math.isfinite(lam) and lam <= 0):     # nan would make every fitness nan
        raise AutoSNNError(f"lambda must be <= 0 and finite (got {lam}): a positive one would reward spikes")
    if lam == 0:
        return acc
    if not (math.isfinite(spike_norm) and spike_norm > 0):
        raise AutoSNNError(f"the spike normaliser must be a finite number > 0 (got {spike_norm})")
    if spikes <= 0:
        return 0.0
    return acc * (spikes / spike_norm) ** lam


@dataclass
class SearchConfig:
    """Search settings; defaults are the paper's (20 iterations of 20 architectures, top 10)."""
    search_algo: str = field(default="evolution", metadata={
        "help": "evolution, or random (weight-sharing random search)"})
    iterations: int = field(default=20, metadata={"help": "search iterations (generations)"})
    pool: int = field(default=20, metadata={"help": "architectures evaluated per generation"})
    topk: int = field(default=10, metadata={"help": "fittest architectures kept as parents"})
    mutations: int = field(default=10, metadata={"help": "mutants per generation"})
    crossovers: int = field(default=10, metadata={"help": "crossover children per generation"})
    mutation_prob: float = field(default=0.2, metadata={"help": "per-position mutation probability"})
    lam: float = field(default=-0.08, metadata={"help": "fitness exponent lambda <= 0 (0: accuracy only)"})
    spike_norm: float = field(default=0.0, metadata={
        "help": "fitness spike normaliser (0: the super-network's last-epoch mean spikes per image)"})
    search_seed: int = field(default=99, metadata={"help": "seed of the search's random choices"})
    bn_recalib: int = field(default=0, metadata={
        "help": "training batches to re-estimate BN statistics before each evaluation (0: none, as the paper)"})
    tries: int = field(default=3, metadata={"help": "proposals per wanted child before giving up"})

    def check(self) -> None:
        """Raise AutoSNNError (naming the command-line option) for any value the search cannot use."""
        if self.search_algo not in ("evolution", "random"):
            raise AutoSNNError(f"unknown --search-algo {self.search_algo!r}; valid: evolution, random")
        for name, low in (("iterations", 1), ("pool", 1), ("topk", 1), ("mutations", 0), ("crossovers", 0),
                          ("bn_recalib", 0), ("tries", 1), ("search_seed", None)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or (low is not None and v < low):
                raise AutoSNNError(f"--{name.replace('_', '-')} must be an integer"
                                   + (f" >= {low}" if low is not None else "") + f" (got {v!r})")
        if not 0 <= self.mutation_prob <= 1:          # false for nan too
            raise AutoSNNError(f"--mutation-prob must be in [0, 1] (got {self.mutation_prob})")
        if not (math.isfinite(self.lam) and self.lam <= 0):
            raise AutoSNNError(f"lambda must be <= 0 and finite (got --lam {self.lam}): "
                               "a positive one would reward spikes")
        if not (math.isfinite(self.spike_norm) and self.spike_norm >= 0):
            raise AutoSNNError(f"--spike-norm must be a finite number >= 0 (0: the super-network's mean; "
                               f"got {self.spike_norm})")


class Search:
    """The search state: history of evaluated architectures and the random generator.

    propose() gives the next pool; tell() adds its evaluations. state_dict()/load_state_dict()
    checkpoint everything, so a resumed search proposes exactly what an uninterrupted one would.
    `generation` counts the completed generations; each record's "generation" is the 1-based number
    of the generation that evaluated it, so after tell() the newest records carry
    generation == self.generation.
    """

    def __init__(self, backbone: Backbone, cfg: SearchConfig, spike_norm: float, rng: random.Random):
        cfg.check()
        self.backbone, self.cfg, self.spike_norm, self.rng = backbone, cfg, float(spike_norm), rng
        self.generation = 0              # generations completed
        self.history: list[dict] = []    # one record per evaluated architecture, in order

    # --- bookkeeping -------------------------------------------------------------------------
    def seen(self) -> set:
        return {r["arch"] for r in self.history}

    def topk(self) -> list[dict]:
        """The `topk` fittest records so far (ties: earlier evaluation first)."""
        return sorted(self.history, key=lambda r: -r["fitness"])[: self.cfg.topk]

    @property
    def done(self) -> bool:
        return self.generation >= self.cfg.iterations

    def best(self) -> dict:
        return self.topk()[0]

    # --- proposing ---------------------------------------------------------------------------
    def _random(self, n: int, taken: set) -> list[Arch]:
        out = []
        for _ in range(n * self.cfg.tries * 10):
            if len(out) == n or len(taken) >= self.backbone.size:
                break
            a = sample_arch(self.backbone, self.rng)
            if str(a) not in taken:
                taken.add(str(a))
                out.append(a)
        return out

    def mutate(self, parent: Arch) -> Arch:
        """Each position independently, with probability mutation_prob, becomes a different candidate."""
        cands = self.backbone.candidates
        return Arch(self.rng.choice([c for c in cands if c != b]) if self.rng.random() < self.cfg.mutation_prob
                    else b for b in parent)

    def crossover(self, p1: Arch, p2: Arch) -> Arch:
        """One-point crossover at a uniform cut 1..n-1 of the searched positions: p1[:cut] + p2[cut:]."""
        cut = self.rng.randint(1, len(p1) - 1)
        return Arch(p1[:cut] + p2[cut:])

    def _children(self, n: int, make, taken: set) -> list[Arch]:
        out = []
        for _ in range(n * self.cfg.tries):
            if len(out) == n:
                break
            child = make()
            if str(child) not in taken:
                taken.add(str(child))
                out.append(child)
        return out

    def propose(self) -> list[Arch]:
        """The next pool of unseen architectures (fewer only if the space runs out)."""
        cfg, taken = self.cfg, self.seen()
        if self.generation == 0 or cfg.search_algo == "random":
            return self._random(cfg.pool, taken)
        parents = [parse_arch(r["arch"], self.backbone) for r in self.topk()]
        pool = self._children(cfg.mutations, lambda: self.mutate(self.rng.choice(parents)), taken)
        if len(parents) >= 2:
            pool += self._children(cfg.crossovers, lambda: self.crossover(*self.rng.sample(parents, 2)), taken)
        return pool + self._random(max(cfg.pool - len(pool), 0), taken)

    def tell(self, archs: list[Arch], results: list[dict]) -> None:
        """Record one generation: results[i] has acc, spikes, neuron_spikes (and anything else)."""
        self.generation += 1
        for a, r in zip(archs, results):
            rec = {"generation": self.generation, "arch": str(a), **r}
            rec["fitness"] = fitness(r["acc"], r["spikes"], self.spike_norm, self.cfg.lam)
            self.history.append(rec)

    def latest(self) -> list[dict]:
        """The records of the most recent generation."""
        return [r for r in self.history if r["generation"] == self.generation]

    def state_dict(self) -> dict:
        return {"generation": self.generation, "history": self.history, "rng": self.rng.getstate(),
                "spike_norm": self.spike_norm, "first_generation": 1}

    def load_state_dict(self, state: dict) -> None:
        self.generation, self.history = state["generation"], one_based(state)
        self.rng.setstate(state["rng"])
        self.spike_norm = state["spike_norm"]


def one_based(doc: dict) -> list[dict]:
    """doc["history"] with 1-based generations: files written before the numbering was unified
    (no "first_generation" key) counted from 0."""
    shift = 1 - doc.get("first_generation", 0)
    return [dict(r, generation=r["generation"] + shift) if shift and "generation" in r else r
            for r in doc["history"]]


def at_chance(records: list[dict], num_classes: int, val_images: int | None = None) -> list[dict]:
    """Records whose accuracy is chance, 1/num_classes, within one validation image (1/val_images;
    0.005 when the count is unknown). Many of them mean the super-network cannot tell paths apart."""
    tol = 1 / val_images if val_images else 0.005
    return [r for r in records if abs(r["acc"] - 1 / num_classes) <= tol + 1e-12]


def run_search(search: Search, evaluate, on_generation=None, log=print, num_classes: int | None = None,
               val_images: int | None = None) -> dict:
    """Evolve until the configured iterations are done. evaluate(archs) -> list of result dicts;
    on_generation(search) is called after each generation (checkpointing). Returns the best record.

    Logs one line per generation with evaluations/s and the estimated time left (from the rate of
    this call, so a resumed search re-estimates it). With num_classes (the dataset's; it cannot be
    inferred from accuracies), warns when more than half of a generation is at chance accuracy
    (see at_chance; val_images is the number of validation images)."""
    start, evaluated = time.perf_counter(), 0
    while not search.done:
        archs = search.propose()
        if not archs:
            log(f"search space exhausted after {len(search.history)} architectures")
            break
        t0 = time.perf_counter()
        search.tell(archs, evaluate(archs))
        now, evaluated = time.perf_counter(), evaluated + len(archs)
        rate = evaluated / max(now - start, 1e-9)
        done, total = search.generation * search.cfg.pool, search.cfg.iterations * search.cfg.pool
        best = search.best()
        log(f"generation {search.generation}/{search.cfg.iterations}: {len(archs)} evaluated in "
            f"{now - t0:.1f}s ({rate:.2f} evals/s), {progress(start, done, done - evaluated, total)}; "
            f"best fitness "
            f"{best['fitness']:.4f} acc {best['acc']:.4f} spikes {best['spikes']:.0f} {best['arch']}")
        if num_classes:
            tied = at_chance(search.latest(), num_classes, val_images)
            if 2 * len(tied) > len(archs):
                log(f"warning: generation {search.generation}: {len(tied)} of {len(archs)} architectures are "
                    f"at chance accuracy (1/{num_classes} = {1 / num_classes:.4f}); the super-network is "
                    f"probably under-trained (train it for more epochs) and this search cannot rank them")
        if on_generation is not None:
            on_generation(search)
    return search.best()


# ---------------------------------------------------------------------------------------------
# Evaluating architectures with the super-network's weights
# ---------------------------------------------------------------------------------------------

@torch.inference_mode()
def evaluate_pool(net: SpikingNetwork, archs: list, batches, energy: bool = True) -> list[dict]:
    """Accuracy and spikes per image of every architecture on the same batches, in eval mode.

    batches: iterable of (x [B, ...], y [B]). Walks the tree of shared prefixes depth-first: the
    stem runs once per batch, and a block runs once for all architectures that agree up to it.
    Returns one dict per arch: acc, spikes, neuron_spikes, per_layer (spikes per image per layer),
    and with `energy` the estimate of SpikeStats.energy() (sops, energy_uj, ann_energy_uj, ...).
    """
    net.eval()
    archs = [parse_arch(a, net.backbone) for a in archs]
    layouts = [net.layout(a) for a in archs]
    correct: list = [0] * len(archs)
    stats: list = [None] * len(archs)
    for x, y in batches:
        net.check_input(x)

        def descend(depth, h, trace, members):
            if depth == len(layouts[0]):
                out = net.head(h, trace).sum(0)
                hit = (predict(out) == y).sum()
                s = SpikeStats.from_trace(trace, x.shape[0], net.T, x.device)
                for i in members:
                    correct[i] = correct[i] + hit
                    stats[i] = s if stats[i] is None else stats[i] + s
                return
            groups: dict = {}
            for i in members:
                groups.setdefault(layouts[i][depth], []).append(i)
            for block, group in groups.items():
                branch = trace.copy() if len(groups) > 1 else trace
                descend(depth + 1, net.run_position(depth, h, block, branch), branch, group)

        trace = Trace(counting=net.neuron != "ann", energy=energy)
        descend(0, net.stem(net.stem.encode(x, net.T, trace), trace), trace, list(range(len(archs))))
    return [_result(c, s) for c, s in zip(correct, stats)]


def _result(correct, stats: SpikeStats) -> dict:
    """Plain numbers from device accumulators (one host sync)."""
    summary = stats.summary()
    out = {"acc": float(correct) / stats.batch, "spikes": summary["spikes"],
           "neuron_spikes": summary["neuron_spikes"], "per_layer": summary["per_layer"]}
    if stats.syn_names:
        out["energy"] = stats.energy()
    return out


@torch.inference_mode()
def evaluate_model(net, batches, arch=None, energy: bool = True) -> dict:
    """Accuracy, spikes and energy estimate of one network (a child, a super-network path with
    `arch`, or a hand-crafted baseline) in eval mode, through its plain forward."""
    net.eval()
    correct, stats = 0, None
    for x, y in batches:
        out, s = net(x, arch, energy=energy)
        correct = correct + (predict(out) == y).sum()
        stats = s if stats is None else stats + s
    return _result(correct, stats)


def recalibrate_bn(net: SpikingNetwork, arch, batches) -> None:
    """Re-estimate BN running statistics of one path as a cumulative average over `batches`
    (train-mode forwards, no gradient). Modifies `net`: use it on a child copy."""
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    with torch.no_grad():
        for x, _ in batches:
            net(x, arch)
    for m in bns:
        m.momentum = 0.1


def evaluate_archs(supernet: SpikingNetwork, archs: list, val_batches, recalib_batches=None) -> list[dict]:
    """Evaluate a pool with the super-network's weights, one flat record per architecture (acc,
    spikes, neuron_spikes, and the energy estimate's sops, energy_uj, ann_energy_uj).
    val_batches / recalib_batches: callables returning a fresh iterable of batches. With
    recalib_batches, each architecture becomes a child network (its path's weights) whose BN
    statistics are re-estimated first; otherwise the pool shares prefixes (evaluate_pool)."""
    if recalib_batches is None:
        results = evaluate_pool(supernet, archs, val_batches())
    else:
        results = []
        for a in archs:
            child = supernet.child(a)
            recalibrate_bn(child, a, recalib_batches())
            results += evaluate_pool(child, [a], val_batches())
    flat = []
    for r in results:
        row = {k: r[k] for k in ("acc", "spikes", "neuron_spikes")}
        if "energy" in r:
            row.update({k: r["energy"][k] for k in ("sops", "energy_uj", "ann_energy_uj")})
        flat.append(row)
    return flat


# ---------------------------------------------------------------------------------------------
# History, Pareto front, re-ranking
# ---------------------------------------------------------------------------------------------

def pareto_front(history: list[dict]) -> list[dict]:
    """Records not dominated in (higher acc, fewer spikes), sorted by spikes."""
    front = [r for r in history
             if not any(o["acc"] >= r["acc"] and o["spikes"] <= r["spikes"]
                        and (o["acc"] > r["acc"] or o["spikes"] < r["spikes"]) for o in history)]
    return sorted(front, key=lambda r: (r["spikes"], -r["acc"]))


def rerank(history: list[dict], lam: float, norm: float, budget: float | None = None, top: int = 10,
           by: str = "spikes") -> list[dict]:
    """The best `top` records under acc * (record[by] / norm) ** lam, optionally keeping only records
    with record[by] <= budget. `by` is "spikes" (the paper), "neuron_spikes", "sops" or "energy_uj"."""
    if not (math.isfinite(lam) and lam <= 0):
        raise AutoSNNError(f"lambda must be <= 0 and finite (got {lam})")
    if not (math.isfinite(norm) and norm > 0):
        raise AutoSNNError(f"the normaliser must be a finite number > 0 (got {norm})")
    if budget is not None and not budget >= 0:
        raise AutoSNNError(f"the budget must be a number >= 0 (got {budget})")
    if not isinstance(top, int) or top < 1:
        raise AutoSNNError(f"--top must be an integer >= 1 (got {top})")
    if any(by not in r for r in history):
        raise AutoSNNError(f"the search history has no {by!r} for every architecture")
    rows = [dict(r, fitness=fitness(r["acc"], r[by], norm, lam)) for r in history
            if budget is None or r[by] <= budget]
    return sorted(rows, key=lambda r: -r["fitness"])[:top]


def write_history(run_dir: Path, search: Search, atomic_write) -> None:
    """search.json (every evaluated architecture) and pareto.csv (the non-dominated set).
    atomic_write(path, text) writes one file."""
    records = search.history
    doc = {"lam": search.cfg.lam, "spike_norm": search.spike_norm, "algorithm": search.cfg.search_algo,
           "generations": search.generation, "first_generation": 1, "history": records}
    atomic_write(run_dir / "search.json", json.dumps(doc, indent=1))
    fields = ["generation", "arch", "acc", "spikes", "neuron_spikes", "fitness", "sops", "energy_uj"]
    atomic_write(run_dir / "pareto.csv", csv_text(fields, pareto_front(records)))


def csv_text(fields: list, rows: list[dict]) -> str:
    """CSV with a header row; missing values are empty."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def read_json(path: Path):
    """A JSON file's content; a missing, unreadable or damaged file is an AutoSNNError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AutoSNNError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AutoSNNError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    except json.JSONDecodeError as e:
        raise AutoSNNError(f"{path} is damaged (not valid JSON: {e.msg} at line {e.lineno})") from None


def load_history(run_dir: Path) -> dict:
    """search.json of a run folder, checked, with 1-based generations."""
    path = Path(run_dir) / "search.json"
    if not path.is_file():
        raise AutoSNNError(f"{path} not found: point at a run folder whose search stage has run")
    doc = read_json(path)
    h = doc.get("history") if isinstance(doc, dict) else None
    if not isinstance(h, list) or not all(isinstance(r, dict) and {"arch", "acc", "spikes", "fitness"} <= set(r)
                                          for r in h):
        raise AutoSNNError(f"{path} has no valid \"history\" list (arch, acc, spikes, fitness per record): "
                           "not a search result of this project")
    if not h:
        raise AutoSNNError(f"{path} holds no evaluated architecture")
    return {**doc, "history": one_based(doc)}


def plot_run(run_dir, log=print) -> list[str]:
    """Draw pareto.png (every evaluated architecture, the non-dominated front, the chosen one) from
    search.json and curves.png (loss, accuracy, spikes per epoch of each training stage) from
    metrics.jsonl. matplotlib is optional: without it, one line says so and nothing fails."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("note: no plots drawn (matplotlib is not installed: pip install matplotlib)")
        return []
    run_dir, written = Path(run_dir), []

    def save(fig, name):
        buf = io.BytesIO()                 # render first, so the file is written in one durable step
        fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        atomic_write(run_dir / name, lambda f: f.write(buf.getvalue()))
        written.append(name)

    if (run_dir / "search.json").is_file():
        doc = load_history(run_dir)
        h, front = doc["history"], pareto_front(doc["history"])
        best = max(h, key=lambda r: r["fitness"])
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        pts = ax.scatter([r["spikes"] for r in h], [r["acc"] for r in h], c=[r.get("generation", 1) for r in h],
                         s=14, cmap="viridis", label="evaluated")
        fig.colorbar(pts, ax=ax, label="generation (1 = initial random pool)")
        ax.plot([r["spikes"] for r in front], [r["acc"] for r in front], "-o", color="tab:red", ms=4,
                label="non-dominated")
        ax.scatter([best["spikes"]], [best["acc"]], marker="*", s=220, color="black", label="chosen", zorder=3)
        ax.set(xlabel="spikes per image (D_val)", ylabel="accuracy (D_val)",
               title=f"{doc.get('algorithm', 'evolution')} search, lambda = {doc.get('lam')}")
        ax.legend(loc="lower right", fontsize=8)
        save(fig, "pareto.png")
    rows = read_metrics(run_dir / "metrics.jsonl", log)
    stages = [s for s in ("supernet", "retrain") if any(r.get("stage") == s and "epoch" in r for r in rows)]
    if stages:
        fig, axes = plt.subplots(len(stages), 3, figsize=(12, 3.2 * len(stages)), squeeze=False)
        for row, stage in zip(axes, stages):
            # a row repeated by an interrupted run counts once (the last one written wins)
            ms = sorted({r["epoch"]: r for r in rows if r.get("stage") == stage and "epoch" in r}.values(),
                        key=lambda r: r["epoch"])
            ep = [r["epoch"] for r in ms]
            for ax, key, label in zip(row, ("loss", "acc", "spikes"), ("loss", "accuracy", "spikes per image")):
                ax.plot(ep, [r.get(key, math.nan) for r in ms], "-o", ms=3, label="train")
                test = [(r["epoch"], r["test_" + key]) for r in ms if "test_" + key in r]
                if test:
                    ax.plot(*zip(*test), "-s", ms=3, label="test")
                    ax.legend(fontsize=8)
                ax.set(xlabel="epoch", ylabel=label, title=f"{stage}: {label}")
        fig.tight_layout()
        save(fig, "curves.png")
    return written


def read_metrics(path: Path, log=print) -> list[dict]:
    """The rows of metrics.jsonl; a damaged line (a crash mid-append) is skipped with a note."""
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif line.strip():
            log(f"note: {path} line {i} is damaged and left out of the plots")
    return rows


# ---------------------------------------------------------------------------------------------
# Exporting the result of a run
# ---------------------------------------------------------------------------------------------

# Options that define the network and its data; retraining recipe options follow the run's config too.
EXPORT_KEYS = (("run", "dataset"), ("run", "data_root"), ("run", "split_by"), ("run", "backbone"), ("run", "T"),
               ("run", "neuron"), ("run", "tau0"), ("run", "v_th"), ("run", "batch_size"), ("run", "seed"),
               ("retrain", "retrain_epochs"), ("retrain", "retrain_lr"), ("retrain", "optimizer"))
OPTIONAL_KEYS = (("run", "n_train"), ("run", "n_test"), ("run", "cutout"))     # 0 means unset/off: left out


def export_run(run_dir) -> dict:
    """The architecture a run found and the command that retrains it from scratch with the run's
    settings: {"arch", "source" (the file it came from), "search" (its record, or None), "command"}."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AutoSNNError(f"{run_dir} is not a folder: give a run folder such as runs/<name>")
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise AutoSNNError(f"{run_dir} is not a run folder (no config.json in it)")
    cfg = read_json(cfg_path)
    missing = [f"{sec}.{k}" for sec, k in EXPORT_KEYS + OPTIONAL_KEYS
               if not isinstance(cfg, dict) or k not in (cfg.get(sec) or {})]
    if missing:
        raise AutoSNNError(f"{cfg_path} lacks {', '.join(missing[:3])}: not a configuration of this project")
    backbone = cfg["run"]["backbone"]
    record, arch_path, search_path = None, run_dir / "best_arch.txt", run_dir / "search.json"
    if search_path.is_file():
        record = max(load_history(run_dir)["history"], key=lambda r: r["fitness"])
    if arch_path.is_file():
        text, source = arch_path.read_text().strip(), arch_path
    elif record is not None:
        text, source = record["arch"], search_path
    elif cfg["retrain"].get("arch"):          # a --stage retrain run of a given architecture
        text, source = cfg["retrain"]["arch"], cfg_path
    else:
        raise AutoSNNError(f"{run_dir} holds no architecture (no best_arch.txt or search.json, and no "
                           f"retrain.arch in config.json): run the search stage first")
    try:
        arch = resolve_arch(text, backbone)
    except AutoSNNError as e:
        raise AutoSNNError(f"{source}: {e}") from None
    args = ["python", "train.py", "--stage", "retrain", "--arch", str(arch)]
    for sec, k in EXPORT_KEYS + OPTIONAL_KEYS:
        v = cfg[sec][k]
        if (sec, k) in OPTIONAL_KEYS and not v:
            continue
        args += ["--" + k.replace("_", "-"), str(v)]
    if record is not None and record["arch"] != str(arch):
        record = None
    return {"arch": str(arch), "source": str(source), "search": record, "command": shlex.join(args)}


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="evolve.py", description="Re-rank, plot or export a finished search.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{rerank,plot,export}")
    r = sub.add_parser("rerank", help="best architectures of a cached history under another fitness")
    r.add_argument("run", type=Path, help="run folder holding search.json")
    r.add_argument("--lam", type=float, default=None, help="lambda (default: the search's own)")
    r.add_argument("--by", default="spikes", choices=["spikes", "neuron_spikes", "sops", "energy_uj"],
                   help="the cost in the fitness (default spikes, as the paper; energy_uj: the estimate)")
    r.add_argument("--norm", "--spike-norm", dest="norm", type=float, default=None,
                   help="its normaliser (default: the search's spike_norm for spikes, else the median)")
    r.add_argument("--budget", "--spike-budget", dest="budget", type=float, default=None,
                   help="drop architectures whose cost is above this")
    r.add_argument("--top", type=int, default=10, help="how many to print (default 10)")
    pl = sub.add_parser("plot", help="redraw pareto.png and curves.png of a run folder")
    pl.add_argument("run", type=Path, help="run folder")
    ex = sub.add_parser("export", help="print the architecture found and the command that retrains it")
    ex.add_argument("run", type=Path, help="run folder")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:      # reported by the sub-command's parser, so that hints come from its own options
        parser._subparsers._group_actions[0].choices[args.cmd].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        if args.cmd == "plot":
            if not (args.run / "config.json").is_file():
                raise AutoSNNError(f"{args.run} is not a run folder (no config.json in it)")
            written = plot_run(args.run)
            print("wrote " + ", ".join(str(args.run / w) for w in written) if written else "nothing drawn")
        elif args.cmd == "export":
            print_export(export_run(args.run), args.run)
        else:
            print_rerank(args)
    except AutoSNNError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def print_export(res: dict, run_dir: Path) -> None:
    print(f"architecture: {res['arch']}   (from {res['source']})")
    if res["search"] is not None:
        r = res["search"]
        print(f"search: generation {r.get('generation', '?')}, val acc {r['acc']:.4f}, "
              f"spikes {r['spikes']:.0f}, fitness {r['fitness']:.4f}")
    print("retrain it from scratch with:")
    print("  " + res["command"])
    if (run_dir / "model.pt").is_file():
        print(f'the retrained network: SpikingNetwork.load("{run_dir}")   (from autosnn import SpikingNetwork)')


def print_rerank(args) -> None:
    doc = load_history(args.run)
    path = args.run / "search.json"
    h = doc["history"]
    if any(args.by not in r for r in h):
        raise AutoSNNError(f"{path} has no {args.by!r} for every architecture")
    lam = doc.get("lam") if args.lam is None else args.lam
    norm = args.norm
    if norm is None and args.by == "spikes":
        norm = doc.get("spike_norm")
    elif norm is None:
        norm = statistics.median(r.get(args.by, 0) for r in h)
    if not isinstance(lam, (int, float)) or not isinstance(norm, (int, float)):
        raise AutoSNNError(f"{path} has no usable lam/spike_norm: give --lam and --norm")
    if args.norm is None and not norm > 0:
        raise AutoSNNError(f"the {args.by} normaliser from {path} is {norm}: give --norm")
    rows = rerank(h, lam, norm, args.budget, args.top, args.by)
    if not rows:
        least = min(r[args.by] for r in h)
        raise AutoSNNError(f"no architecture in {path} has {args.by} <= {args.budget:.6g} "
                           f"(the least is {least:.6g}): raise --budget")
    print(f"lambda {lam}, cost {args.by}, normaliser {norm:.6g}"
          + (f", budget {args.budget:.6g}" if args.budget is not None else ""))
    print(f"{'fitness':>8} {'acc':>7} {args.by:>12}  arch")
    for row in rows:
        print(f"{row['fitness']:8.4f} {row['acc']:7.4f} {row[args.by]:12.6g}  {row['arch']}")


if __name__ == "__main__":
    sys.exit(main())
