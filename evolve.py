"""Spike-aware architecture search with a trained super-network (paper sec. 4 and 6).

Fitness of an architecture A, with its validation accuracy and spikes per image from the
super-network's weights:

    F(A) = acc(A) * (spikes(A) / spike_norm) ** lam,     lam <= 0   (lam = 0: plain accuracy)

Three search algorithms share one budget (`pool` x `iterations` evaluations), one random generator,
the operators below and the rule that no architecture is evaluated twice. Generation 1 is `pool`
random architectures for all three.
  evolution  the paper's: every later generation takes the `topk` fittest of everything evaluated
             as parents and proposes `mutations` mutants (each searched position changes with
             probability `mutation_prob` to a different candidate), `crossovers` one-point crossovers
             of two distinct parents, and random architectures to fill the pool.
  random     the weight-sharing random-search baseline: every pool is fresh random architectures.
  pareto     NSGA-II (see pareto.py for where it follows Deb et al. 2002 and where not): the
             `topk` survivors by (non-domination rank, crowding distance) over --objectives
             (accuracy up; spikes, and optionally synaptic operations, down), parents drawn from them
             by binary tournament, then the same mutants, crossovers and random fill.
Every record keeps its fitness, so any algorithm's history can be re-ranked. The architecture to
retrain is Search.chosen(): --pick lambda (the fittest of the accuracy-spikes front: the paper's
choice), knee, or budget:SPIKES (the most accurate within a spike budget).

Evaluation (evaluation.py) runs a whole pool per validation batch and computes every shared prefix
once. Generations are numbered from 1 everywhere (generation 1 = the initial random pool):
`Search.generation` counts the generations completed, so right after a generation it equals that
generation's number.

Re-rank a finished search under another fitness without evaluating anything again, pick from its
front, redraw its plots (needs matplotlib), or print the architecture found and the command that
retrains it:

    python evolve.py rerank runs/X --lam -0.24
    python evolve.py rerank runs/X --spike-budget 60000
    python evolve.py rerank runs/X --by energy_uj --lam -0.1      # rank by the energy estimate
    python evolve.py rerank runs/X --pick knee                    # one architecture of the front
    python evolve.py plot runs/X
    python evolve.py export runs/X
    python evolve.py export runs/X --nir net.nir     # and the retrained network as a NIR graph (nir_export.py)
"""
from __future__ import annotations

import argparse
import math
import random
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from evaluation import evaluate_archs, evaluate_model, evaluate_pool, recalibrate_bn  # noqa: F401 (re-exported)
from files import AutoSNNError, Parser, progress
from pareto import (check_objectives, csv_text, load_history, parse_pick, pareto_front, pick,  # noqa: F401
                    read_json, survivors, tournament, write_history)
from plots import plot_run, read_metrics  # noqa: F401 (re-exported: train.py and the tests use them from here)
from search_space import Arch, Backbone, parse_arch, resolve_arch, sample_arch

ALGORITHMS = ("evolution", "random", "pareto")


def check_lambda(lam, option: str = "--lam") -> None:
    """The one rule for lambda: a finite number <= 0 (nan would make every fitness nan; a positive
    one would reward spikes)."""
    if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam <= 0):
        raise AutoSNNError(f"lambda must be <= 0 and finite (got {option} {lam}): a positive one would reward spikes")


def fitness(acc: float, spikes: float, spike_norm: float, lam: float) -> float:
    """acc * (spikes / spike_norm) ** lam. A path that never spikes cannot classify: fitness 0
    (the formula would give infinity for lam < 0)."""
    check_lambda(lam, "lambda")
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
        "help": "evolution (the paper's), random (weight-sharing random search) or pareto (NSGA-II)"})
    iterations: int = field(default=20, metadata={"help": "search iterations (generations)"})
    pool: int = field(default=20, metadata={"help": "architectures evaluated per generation"})
    topk: int = field(default=10, metadata={"help": "architectures kept as parents (pareto: NSGA-II survivors)"})
    mutations: int = field(default=10, metadata={"help": "mutants per generation"})
    crossovers: int = field(default=10, metadata={"help": "crossover children per generation"})
    mutation_prob: float = field(default=0.2, metadata={"help": "per-position mutation probability"})
    lam: float = field(default=-0.08, metadata={"help": "fitness exponent lambda <= 0 (0: accuracy only)"})
    spike_norm: float = field(default=0.0, metadata={
        "help": "fitness spike normaliser (0: the super-network's last-epoch mean spikes per image)"})
    objectives: str = field(default="acc,spikes", metadata={
        "help": "pareto search objectives: acc,spikes or acc,spikes,sops (synaptic operations)"})
    pick: str = field(default="lambda", metadata={
        "help": "architecture to retrain from the accuracy-spikes front: lambda (the fittest under --lam), "
                "knee, or budget:SPIKES (the most accurate with at most SPIKES spikes per image)"})
    search_seed: int = field(default=99, metadata={"help": "seed of the search's random choices"})
    bn_recalib: int = field(default=0, metadata={
        "help": "training batches to re-estimate BN statistics before each evaluation (0: none, as the paper)"})
    tries: int = field(default=3, metadata={"help": "proposals per wanted child before giving up"})

    def check(self) -> None:
        """Raise AutoSNNError (naming the command-line option) for any value the search cannot use."""
        if self.search_algo not in ALGORITHMS:
            raise AutoSNNError(f"unknown --search-algo {self.search_algo!r}; valid: {', '.join(ALGORITHMS)}")
        for name, low in (("iterations", 1), ("pool", 1), ("topk", 1), ("mutations", 0), ("crossovers", 0),
                          ("bn_recalib", 0), ("tries", 1), ("search_seed", None)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or (low is not None and v < low):
                raise AutoSNNError(f"--{name.replace('_', '-')} must be an integer"
                                   + (f" >= {low}" if low is not None else "") + f" (got {v!r})")
        if not 0 <= self.mutation_prob <= 1:          # false for nan too
            raise AutoSNNError(f"--mutation-prob must be in [0, 1] (got {self.mutation_prob})")
        check_lambda(self.lam)
        if not (math.isfinite(self.spike_norm) and self.spike_norm >= 0):
            raise AutoSNNError(f"--spike-norm must be a finite number >= 0 (0: the super-network's mean; "
                               f"got {self.spike_norm})")
        check_objectives(self.objectives)
        parse_pick(self.pick)


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
        if cfg.search_algo == "pareto":
            return self._propose_pareto(taken)
        parents = [parse_arch(r["arch"], self.backbone) for r in self.topk()]
        pool = self._children(cfg.mutations, lambda: self.mutate(self.rng.choice(parents)), taken)
        if len(parents) >= 2:
            pool += self._children(cfg.crossovers, lambda: self.crossover(*self.rng.sample(parents, 2)), taken)
        return pool + self._random(max(cfg.pool - len(pool), 0), taken)

    def _propose_pareto(self, taken: set) -> list[Arch]:
        """NSGA-II's offspring: the `topk` survivors of everything evaluated by (rank, crowding) over
        the objectives, parents by binary tournament among them, then this project's mutants,
        crossovers of two distinct parents and random fill."""
        cfg = self.cfg
        elite = survivors(self.history, cfg.topk, self.objectives)

        def parent(entrants) -> Arch:
            return parse_arch(tournament(entrants, self.rng)["arch"], self.backbone)

        def cross() -> Arch:
            p1 = parent(elite)
            p2 = parent([e for e in elite if e[0]["arch"] != str(p1)])
            return self.crossover(p1, p2)

        pool = self._children(cfg.mutations, lambda: self.mutate(parent(elite)), taken)
        if len(elite) >= 2:
            pool += self._children(cfg.crossovers, cross, taken)
        return pool + self._random(max(cfg.pool - len(pool), 0), taken)

    @property
    def objectives(self) -> tuple:
        return check_objectives(self.cfg.objectives)

    def tell(self, archs: list[Arch], results: list[dict]) -> None:
        """Record one generation: results[i] has acc, spikes, neuron_spikes (and anything else;
        sops when it is an objective)."""
        missing = [n for n in self.objectives if self.cfg.search_algo == "pareto" and any(n not in r for r in results)]
        if missing:
            raise AutoSNNError(f"the evaluations carry no {missing[0]!r} (energy counting is off): "
                               f"use --objectives acc,spikes")
        self.generation += 1
        for a, r in zip(archs, results):
            rec = {"generation": self.generation, "arch": str(a), **r}
            rec["fitness"] = fitness(r["acc"], r["spikes"], self.spike_norm, self.cfg.lam)
            self.history.append(rec)

    def chosen(self) -> dict:
        """The record of the architecture to retrain, by --pick (pareto.pick) on the accuracy-spikes
        front of everything evaluated. --pick lambda is the paper's choice, the fittest."""
        return pick(self.history, self.cfg.pick)

    def latest(self) -> list[dict]:
        """The records of the most recent generation."""
        return [r for r in self.history if r["generation"] == self.generation]

    def state_dict(self) -> dict:
        return {"generation": self.generation, "history": self.history, "rng": self.rng.getstate(),
                "spike_norm": self.spike_norm, "first_generation": 1}

    def load_state_dict(self, state: dict) -> None:
        if state.get("first_generation") != 1:
            raise AutoSNNError("the search checkpoint was made by an older version of this project: "
                               "rerun the search stage in a new folder")
        self.generation, self.history = state["generation"], state["history"]
        self.rng.setstate(state["rng"])
        self.spike_norm = state["spike_norm"]


def at_chance(records: list[dict], num_classes: int, val_images: int | None = None) -> list[dict]:
    """Records whose accuracy is chance, 1/num_classes, within one validation image (1/val_images;
    0.005 when the count is unknown). Many of them mean the super-network cannot tell paths apart."""
    tol = 1 / val_images if val_images else 0.005
    return [r for r in records if abs(r["acc"] - 1 / num_classes) <= tol + 1e-12]


def run_search(search: Search, evaluate, on_generation=None, log=print, num_classes: int | None = None,
               val_images: int | None = None) -> dict:
    """Search until the configured iterations are done. evaluate(archs) -> list of result dicts;
    on_generation(search) is called after each generation (checkpointing). Returns the fittest
    record (search.best(); the one to retrain is search.chosen()).

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
            f"{best['fitness']:.4f} acc {best['acc']:.4f} spikes {best['spikes']:.0f} {best['arch']}"
            + (f"; front of {len(pareto_front(search.history))}" if search.cfg.search_algo == "pareto" else ""))
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
# Re-ranking a history
# ---------------------------------------------------------------------------------------------

def rerank(history: list[dict], lam: float, norm: float, budget: float | None = None, top: int = 10,
           by: str = "spikes") -> list[dict]:
    """The best `top` records under acc * (record[by] / norm) ** lam, optionally keeping only records
    with record[by] <= budget. `by` is "spikes" (the paper), "neuron_spikes", "sops" or "energy_uj"."""
    check_lambda(lam)
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
    settings: {"arch", "source" (the file it came from), "search" (its record in search.json, or None),
    "command"}. The architecture is best_arch.txt's, else the search's --pick from search.json, else
    the run's --arch."""
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
    record, arch_path, search_path, history = None, run_dir / "best_arch.txt", run_dir / "search.json", []
    if search_path.is_file():
        doc = load_history(run_dir)
        history = doc["history"]
        if not arch_path.is_file():       # what train.py would have written: the search's --pick
            record = pick(history, doc.get("pick", "lambda"))
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
    record = next((r for r in history if r["arch"] == str(arch)), None)
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
    r.add_argument("--pick", default=None, help="instead: the one architecture of the accuracy-spikes front "
                   "under lambda, knee or budget:SPIKES (lambda: the search's own fitness)")
    pl = sub.add_parser("plot", help="redraw pareto.png and curves.png of a run folder")
    pl.add_argument("run", type=Path, help="run folder")
    ex = sub.add_parser("export", help="print the architecture found and the command that retrains it; "
                                       "with --nir, also write the retrained network as a NIR graph")
    ex.add_argument("run", type=Path, help="run folder")
    ex.add_argument("--nir", type=Path, default=None, metavar="FILE.nir",
                    help="write the run's retrained network (model.pt) to this NIR file (needs: pip install nir)")
    ex.add_argument("--dt", type=float, default=1.0,
                    help="with --nir: the time step the graph's time constants are in, tau = dt / k (default 1)")
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
            res = export_run(args.run)
            if args.nir is not None:
                from nir_export import write_nir          # needs the nir package: imported only here
                write_nir(args.run, args.nir, dt=args.dt)
            print_export(res, args.run)
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
    if args.pick is not None:
        r = pick(h, args.pick)
        print(f"--pick {args.pick} on the front of {len(pareto_front(h))} of {len(h)} architectures:")
        print(f"{r['arch']}   (generation {r.get('generation', '?')}, val acc {r['acc']:.4f}, "
              f"spikes {r['spikes']:.0f}, fitness {r['fitness']:.4f})")
        return
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
