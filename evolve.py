"""Spike-aware architecture search with a trained super-network (paper sec. 4 and 6).

Fitness of an architecture A, with its validation accuracy and spikes per image from the
super-network's weights:

    F(A) = acc(A) * (spikes(A) / spike_norm) ** lam,     lam <= 0   (lam = 0: plain accuracy)

The evolutionary search starts from `pool` random architectures; every generation keeps the
`topk` fittest of everything evaluated so far and proposes `mutations` mutants (each searched
position changes with probability `mutation_prob` to a different candidate), `crossovers`
one-point crossovers of two distinct parents, and random architectures to fill the pool. No
architecture is evaluated twice. `algorithm="random"` is the weight-sharing random-search
baseline: every pool is fresh random architectures, same budget.

Evaluation runs a whole pool per validation batch and computes every shared prefix (the stem and
each identical leading sequence of blocks) only once; it gives the same numbers as evaluating
each architecture alone (tested).

Re-rank a finished search under another fitness without evaluating anything again, or redraw
its plots (needs matplotlib):

    python evolve.py rerank runs/X --lam -0.24
    python evolve.py rerank runs/X --spike-budget 60000
    python evolve.py rerank runs/X --by energy_uj --lam -0.1      # rank by the energy estimate
    python evolve.py plot runs/X
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import random
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from autosnn import SpikeStats, SpikingNetwork, Trace, predict
from search_space import Arch, Backbone, parse_arch, sample_arch


def fitness(acc: float, spikes: float, spike_norm: float, lam: float) -> float:
    """acc * (spikes / spike_norm) ** lam. A path that never spikes cannot classify: fitness 0
    (the formula would give infinity for lam < 0)."""
    if lam > 0:
        raise ValueError(f"lambda must be <= 0 (got {lam}): a positive lambda would reward spikes")
    if lam == 0:
        return acc
    if spikes <= 0:
        return 0.0
    return acc * (spikes / spike_norm) ** lam


@dataclass
class SearchConfig:
    """Search settings; defaults are the paper's (20 iterations of 20 architectures, top 10)."""
    search: str = field(default="evolution", metadata={"help": "evolution, or random (weight-sharing random search)"})
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
        if self.search not in ("evolution", "random"):
            raise ValueError(f"unknown search algorithm {self.search!r}; valid: evolution, random")
        if min(self.iterations, self.pool, self.topk) < 1 or min(self.mutations, self.crossovers) < 0:
            raise ValueError("search sizes must be positive (iterations, pool, topk >= 1)")
        if not 0 <= self.mutation_prob <= 1:
            raise ValueError(f"mutation probability must be in [0, 1] (got {self.mutation_prob})")
        if self.lam > 0:
            raise ValueError(f"lambda must be <= 0 (got {self.lam})")
        if self.spike_norm < 0 or self.bn_recalib < 0 or self.tries < 1:
            raise ValueError("spike_norm and bn_recalib must be >= 0, tries >= 1")


class Search:
    """The search state: history of evaluated architectures and the random generator.

    propose() gives the next pool; tell() adds its evaluations. state_dict()/load_state_dict()
    checkpoint everything, so a resumed search continues exactly.
    """

    def __init__(self, backbone: Backbone, cfg: SearchConfig, spike_norm: float, rng: random.Random):
        cfg.check()
        self.backbone, self.cfg, self.spike_norm, self.rng = backbone, cfg, float(spike_norm), rng
        self.generation = 0
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
        if self.generation == 0 or cfg.search == "random":
            return self._random(cfg.pool, taken)
        parents = [parse_arch(r["arch"], self.backbone) for r in self.topk()]
        pool = self._children(cfg.mutations, lambda: self.mutate(self.rng.choice(parents)), taken)
        if len(parents) >= 2:
            pool += self._children(cfg.crossovers, lambda: self.crossover(*self.rng.sample(parents, 2)), taken)
        return pool + self._random(max(cfg.pool - len(pool), 0), taken)

    def tell(self, archs: list[Arch], results: list[dict]) -> None:
        """Record one generation: results[i] has acc, spikes, neuron_spikes (and anything else)."""
        for a, r in zip(archs, results):
            rec = {"generation": self.generation, "arch": str(a), **r}
            rec["fitness"] = fitness(r["acc"], r["spikes"], self.spike_norm, self.cfg.lam)
            self.history.append(rec)
        self.generation += 1

    def state_dict(self) -> dict:
        return {"generation": self.generation, "history": self.history, "rng": self.rng.getstate(),
                "spike_norm": self.spike_norm}

    def load_state_dict(self, state: dict) -> None:
        self.generation, self.history = state["generation"], list(state["history"])
        self.rng.setstate(state["rng"])
        self.spike_norm = state["spike_norm"]


def run_search(search: Search, evaluate, on_generation=None, log=print) -> dict:
    """Evolve until the configured iterations are done. evaluate(archs) -> list of result dicts;
    on_generation(search) is called after each generation (checkpointing). Returns the best record."""
    while not search.done:
        archs = search.propose()
        if not archs:
            log(f"search space exhausted after {len(search.history)} architectures")
            break
        search.tell(archs, evaluate(archs))
        best = search.best()
        log(f"generation {search.generation}/{search.cfg.iterations}: {len(archs)} evaluated, "
            f"best fitness {best['fitness']:.4f} acc {best['acc']:.4f} spikes {best['spikes']:.0f} {best['arch']}")
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
    if any(by not in r for r in history):
        raise ValueError(f"the search history has no {by!r} for every architecture")
    rows = [dict(r, fitness=fitness(r["acc"], r[by], norm, lam)) for r in history
            if budget is None or r[by] <= budget]
    return sorted(rows, key=lambda r: -r["fitness"])[:top]


def write_history(run_dir: Path, search: Search, atomic_write) -> None:
    """search.json (every evaluated architecture) and pareto.csv (the non-dominated set)."""
    records = search.history
    doc = {"lam": search.cfg.lam, "spike_norm": search.spike_norm, "algorithm": search.cfg.search,
           "generations": search.generation, "history": records}
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


def load_history(run_dir: Path) -> dict:
    path = Path(run_dir) / "search.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: point at a run folder whose search stage has run")
    return json.loads(path.read_text())


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
        tmp = run_dir / (name + ".tmp")
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        tmp.replace(run_dir / name)
        written.append(name)

    if (run_dir / "search.json").is_file():
        doc = load_history(run_dir)
        h, front = doc["history"], pareto_front(doc["history"])
        best = max(h, key=lambda r: r["fitness"])
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        pts = ax.scatter([r["spikes"] for r in h], [r["acc"] for r in h], c=[r["generation"] for r in h],
                         s=14, cmap="viridis", label="evaluated")
        fig.colorbar(pts, ax=ax, label="generation")
        ax.plot([r["spikes"] for r in front], [r["acc"] for r in front], "-o", color="tab:red", ms=4,
                label="non-dominated")
        ax.scatter([best["spikes"]], [best["acc"]], marker="*", s=220, color="black", label="chosen", zorder=3)
        ax.set(xlabel="spikes per image (D_val)", ylabel="accuracy (D_val)",
               title=f"{doc['algorithm']} search, lambda = {doc['lam']}")
        ax.legend(loc="lower right", fontsize=8)
        save(fig, "pareto.png")
    metrics = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    stages = [s for s in ("supernet", "retrain") if any(r["stage"] == s for r in rows)]
    if stages:
        fig, axes = plt.subplots(len(stages), 3, figsize=(12, 3.2 * len(stages)), squeeze=False)
        for row, stage in zip(axes, stages):
            ms = [r for r in rows if r["stage"] == stage]
            ep = [r["epoch"] for r in ms]
            for ax, key, label in zip(row, ("loss", "acc", "spikes"), ("loss", "accuracy", "spikes per image")):
                ax.plot(ep, [r[key] for r in ms], "-o", ms=3, label="train")
                test = [(r["epoch"], r["test_" + key]) for r in ms if "test_" + key in r]
                if test:
                    ax.plot(*zip(*test), "-s", ms=3, label="test")
                    ax.legend(fontsize=8)
                ax.set(xlabel="epoch", ylabel=label, title=f"{stage}: {label}")
        fig.tight_layout()
        save(fig, "curves.png")
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="evolve.py", description="Re-rank or plot a finished search.")
    sub = p.add_subparsers(dest="cmd", required=True)
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
    args = p.parse_args(argv)
    if args.cmd == "plot":
        if not (args.run / "config.json").is_file():
            print(f"error: {args.run} is not a run folder (no config.json in it)", file=sys.stderr)
            return 2
        written = plot_run(args.run)
        print("wrote " + ", ".join(str(args.run / w) for w in written) if written else "nothing drawn")
        return 0
    try:
        doc = load_history(args.run)
        h, lam, norm = doc["history"], doc["lam"] if args.lam is None else args.lam, args.norm
        if norm is None:
            norm = doc["spike_norm"] if args.by == "spikes" else statistics.median(r.get(args.by, 0) for r in h)
        rows = rerank(h, lam, norm, args.budget, args.top, args.by)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"lambda {lam}, cost {args.by}, normaliser {norm:.6g}"
          + (f", budget {args.budget:.6g}" if args.budget is not None else ""))
    print(f"{'fitness':>8} {'acc':>7} {args.by:>12}  arch")
    for row in rows:
        print(f"{row['fitness']:8.4f} {row['acc']:7.4f} {row[args.by]:12.6g}  {row['arch']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
