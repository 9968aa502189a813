"""Spike-aware evolutionary search with a trained super-network: the paper's fitness and evolution.

Fitness of an architecture A, with its validation accuracy and spikes per image from the
super-network's weights:

    F(A) = acc(A) * (spikes(A) / spike_norm) ** lam,     lam <= 0   (lam = 0: plain accuracy)

Three search algorithms share one budget (`pool` x `iterations` evaluations), one random generator,
the operators below and the rule that no architecture is evaluated twice. Generation 1 is `pool`
random architectures for all three.
  evolution  (Search) the paper's: every later generation takes the `topk` fittest of everything
             evaluated as parents and proposes `mutations` mutants (each searched position changes
             with probability `mutation_prob` to a different candidate), `crossovers` one-point
             crossovers of two distinct parents, and random architectures to fill the pool.
  random     (RandomSearch) the weight-sharing random-search baseline: every pool is fresh random
             architectures.
  pareto     (pareto.ParetoSearch) NSGA-II over accuracy and spikes: the same operators, other parents.
Every record keeps its fitness, so any algorithm's history can be re-ranked (`rerank`). The
architecture to retrain is pareto.pick(history, --pick): lambda (the fittest: the paper's choice),
knee[:F], or budget:SPIKES.

Evaluation (evaluation.py) runs a whole pool per validation batch and computes every shared prefix
once. Generations are numbered from 1 everywhere (generation 1 = the initial random pool):
`Search.generation` counts the generations completed, so right after a generation it equals that
generation's number. The command-line verbs on a finished search (rerank, plot, export) are runs.py's.
"""
from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass, field

from files import AutoSNNError, progress
from search_space import Arch, Backbone, parse_arch, sample_arch


ALGORITHMS = ("evolution", "random", "pareto")
OBJECTIVES = ("acc", "spikes", "sops")          # acc is maximised, the costs minimised


# At lambda = -10, halving the spikes weighs as much as multiplying the accuracy by 1024: far past any
# trade-off the paper considers (-0.08 .. -0.24), and the bound keeps (spikes / spike_norm) ** lambda finite
# for any spike ratio a run produces (its overflow is still caught in `fitness`).
LAMBDA_MIN = -10.0


def check_lambda(lam, option: str = "--lam") -> None:
    """The one rule for lambda: a finite number in [LAMBDA_MIN, 0] (nan would make every fitness nan; a
    positive one would reward spikes; a huge negative one would overflow the fitness)."""
    if not (isinstance(lam, (int, float)) and math.isfinite(lam) and LAMBDA_MIN <= lam <= 0):
        raise AutoSNNError(f"lambda must be <= 0 and finite, at least {LAMBDA_MIN:g} (got {option} {lam}): a "
                           f"positive one would reward spikes, one below {LAMBDA_MIN:g} ranks by spikes alone")


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
    try:
        return acc * (spikes / spike_norm) ** lam
    except OverflowError:       # a ratio near 0 under a bounded lambda: the largest float keeps the order
        return acc * sys.float_info.max if acc > 0 else 0.0


def check_objectives(text: str) -> tuple:
    """'acc,spikes' -> ("acc", "spikes"). acc and at least one cost, each once, all known."""
    names = tuple(n.strip() for n in str(text).split(","))
    bad = [n for n in names if n not in OBJECTIVES]
    if bad or len(set(names)) != len(names) or "acc" not in names or len(names) < 2:
        raise AutoSNNError(f"--objectives {text!r} is not a list of distinct objectives with acc and a cost "
                           f"(valid names: {', '.join(OBJECTIVES)}; e.g. acc,spikes or acc,spikes,sops)")
    return names


KNEE_FLOOR = 0.5      # --pick knee ignores front points below this fraction of the best accuracy


def parse_pick(text: str) -> tuple[str, float | None]:
    """'lambda' | 'knee[:F]' | 'budget:SPIKES' -> (rule, None | the knee's accuracy floor F | the budget)."""
    text = str(text)
    if text in ("lambda", "knee"):
        return text, KNEE_FLOOR if text == "knee" else None
    for rule, ok in (("budget", lambda v: v >= 0), ("knee", lambda v: 0 < v <= 1)):
        if text.startswith(rule + ":"):
            try:
                value = float(text[len(rule) + 1:])
            except ValueError:
                value = math.nan
            if math.isfinite(value) and ok(value):
                return rule, value
    raise AutoSNNError(f"--pick {text!r} is not lambda, knee, knee:F (a fraction in (0, 1]) or budget:SPIKES "
                       f"(a number >= 0, spikes per image, e.g. budget:60000)")


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
                "knee (of the front at or above half the best accuracy; knee:F: above F x the best), or "
                "budget:SPIKES (the most accurate with at most SPIKES spikes per image)"})
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
        if self.generation == 0:
            return self._random(cfg.pool, taken)
        parents = [parse_arch(r["arch"], self.backbone) for r in self.topk()]
        pool = self._children(cfg.mutations, lambda: self.mutate(self.rng.choice(parents)), taken)
        if len(parents) >= 2:
            pool += self._children(cfg.crossovers, lambda: self.crossover(*self.rng.sample(parents, 2)), taken)
        return pool + self._random(max(cfg.pool - len(pool), 0), taken)

    def tell(self, archs: list[Arch], results: list[dict]) -> None:
        """Record one generation: results[i] has acc, spikes, neuron_spikes (and anything else;
        sops when it is an objective)."""
        self.generation += 1
        for a, r in zip(archs, results):
            rec = {"generation": self.generation, "arch": str(a), **r}
            rec["fitness"] = fitness(r["acc"], r["spikes"], self.spike_norm, self.cfg.lam)
            self.history.append(rec)

    def latest(self) -> list[dict]:
        """The records of the most recent generation."""
        return [r for r in self.history if r["generation"] == self.generation]

    def note(self) -> str:
        """Anything the generation's log line should add (ParetoSearch: the size of its front)."""
        return ""

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


class RandomSearch(Search):
    """The weight-sharing random-search baseline (the paper's "WS + random search"): every generation
    is `pool` fresh random architectures never evaluated before; same budget and bookkeeping."""

    def propose(self) -> list[Arch]:
        return self._random(self.cfg.pool, self.seen())


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
            + search.note())
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
