"""The accuracy-spikes trade-off of a search: non-dominated sorting, crowding distance, NSGA-II
survivor and parent selection (ParetoSearch), the Pareto front, its 2-D hypervolume, and the rules
that pick one architecture from the front (--pick lambda | knee[:F] | budget:SPIKES) for every search.

Objectives are always minimised here: a record {acc, spikes, sops, ...} becomes the point
(-acc, spikes[, sops]) (see `point`). Point p dominates q when p is no worse in every objective
and better in at least one; equal points do not dominate each other (duplicates share a front).

Where this follows NSGA-II (Deb, Pratap, Agarwal, Meyarivan, IEEE TEVC 6(2), 2002) and where not:
  - follows: the fast non-dominated sort (sec. III-A), the crowding distance (sec. III-B: per
    objective, sort, boundary points infinite, inner points add the normalised gap between their
    neighbours), the crowded-comparison order (rank first, larger crowding second), survivors as
    whole fronts then the most crowded-apart of the last front, and binary tournament selection of
    parents by that order.
  - differs: survivors are chosen from everything evaluated so far (the search's history, an
    archive), not from the last parents + offspring only: an evaluation costs the same either way,
    and this keeps the search state = its history, as the paper's evolution does. Offspring come
    from this project's operators (per-position mutation, one-point crossover, random fill, no
    architecture evaluated twice), not SBX and polynomial mutation. Ties are broken by evaluation
    order so that a seeded search is reproducible bit for bit.
"""
from __future__ import annotations

import math
import random

from evolve import RandomSearch, Search, check_objectives, parse_pick
from files import AutoSNNError
from search_space import Arch, Backbone, parse_arch


def point(record: dict, names=("acc", "spikes")) -> tuple:
    """The record as a point to minimise: accuracy negated, costs as they are."""
    return tuple(-record[n] if n == "acc" else record[n] for n in names)


def dominates(p, q) -> bool:
    """p no worse than q everywhere and better somewhere (all objectives minimised)."""
    return all(a <= b for a, b in zip(p, q)) and any(a < b for a, b in zip(p, q))


def nondominated_sort(points: list) -> list[list[int]]:
    """Fronts of indices: front 0 is non-dominated, front 1 is non-dominated once front 0 is
    removed, and so on (Deb's fast non-dominated sort). Indices keep ascending order in a front."""
    n = len(points)
    beaten_by = [0] * n                   # how many points dominate i
    beats: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(points[i], points[j]):
                beats[i].append(j)
                beaten_by[j] += 1
            elif dominates(points[j], points[i]):
                beats[j].append(i)
                beaten_by[i] += 1
    fronts, current = [], [i for i in range(n) if beaten_by[i] == 0]
    while current:
        fronts.append(current)
        nxt = []
        for i in current:
            for j in beats[i]:
                beaten_by[j] -= 1
                if beaten_by[j] == 0:
                    nxt.append(j)
        current = sorted(nxt)
    return fronts


def crowding_distance(points: list) -> list[float]:
    """Crowding distance of each point of one front: for every objective, sort (ties by index),
    give the two ends infinity, and add to each inner point (next - previous) / (max - min).
    An objective on which all points are equal adds nothing."""
    n = len(points)
    dist = [0.0] * n
    if n == 0:
        return dist
    for m in range(len(points[0])):
        order = sorted(range(n), key=lambda i: (points[i][m], i))
        lo, hi = points[order[0]][m], points[order[-1]][m]
        dist[order[0]] = dist[order[-1]] = math.inf
        if hi == lo:
            continue
        for k in range(1, n - 1):
            i = order[k]
            dist[i] += (points[order[k + 1]][m] - points[order[k - 1]][m]) / (hi - lo)
    return dist


def crowded_order(points: list) -> list[tuple[int, int, float]]:
    """Every index as (index, rank, crowding), best first: lower rank, then larger crowding, then
    earlier index (evaluation order)."""
    out = []
    for rank, front in enumerate(nondominated_sort(points)):
        crowd = crowding_distance([points[i] for i in front])
        out += [(i, rank, c) for i, c in zip(front, crowd)]
    return sorted(out, key=lambda t: (t[1], -t[2], t[0]))


def survivors(records: list[dict], k: int, names=("acc", "spikes")) -> list[tuple[dict, int, float]]:
    """NSGA-II's environmental selection: the k best records by (rank, crowding), each with them."""
    order = crowded_order([point(r, names) for r in records])[:k]
    return [(records[i], rank, crowd) for i, rank, crowd in order]


def tournament(pool: list[tuple[dict, int, float]], rng: random.Random) -> dict:
    """Binary tournament by the crowded comparison: two distinct entrants drawn uniformly; the lower
    rank wins, then the larger crowding, then the first drawn."""
    if len(pool) == 1:
        return pool[0][0]
    a, b = rng.sample(range(len(pool)), 2)
    (_, ra, ca), (_, rb, cb) = pool[a], pool[b]
    return pool[b][0] if (rb, -cb) < (ra, -ca) else pool[a][0]


def pareto_front(records: list[dict], names=("acc", "spikes")) -> list[dict]:
    """Records no other record dominates in `names`, sorted by spikes then accuracy (best first)."""
    if not records:
        return []
    pts = [point(r, names) for r in records]
    front = [records[i] for i in nondominated_sort(pts)[0]]
    return sorted(front, key=lambda r: (r["spikes"], -r["acc"]))


def hypervolume(records: list[dict], ref_acc: float, ref_spikes: float) -> float:
    """Area of the accuracy x spikes plane that the records dominate, bounded by the reference point
    (ref_acc, ref_spikes): accuracy above ref_acc, spikes below ref_spikes. Units: accuracy x spikes
    per image. Records outside the reference box add nothing."""
    inside = [r for r in pareto_front(records) if r["acc"] > ref_acc and r["spikes"] < ref_spikes]
    area = 0.0
    for r, nxt in zip(inside, inside[1:] + [None]):      # spikes ascending, accuracy ascending
        right = ref_spikes if nxt is None else nxt["spikes"]
        area += (right - r["spikes"]) * (r["acc"] - ref_acc)
    return area


def knee(front: list[dict], floor: float = 0.0) -> dict:
    """The knee of a 2-D accuracy-spikes front: of its points with accuracy >= floor x the best
    accuracy, with both axes scaled to [0, 1] over those points, the one farthest from the straight
    line between the fewest-spikes and the most-accurate ends (ties: the more accurate, then fewer
    spikes). Fewer than three such points: the most accurate.

    Why the floor (--pick knee uses 0.5, evolve.KNEE_FLOOR): a front's cheap end is often networks
    that barely work (near chance, a few spikes, e.g. a path whose layers are almost silent). With
    them in the scaling, the line's low end sits at chance, and the farthest point becomes the first
    network that works at all (a 34%-accurate one was picked this way), not the bend a reader sees
    among the usable networks. Half the best accuracy keeps every network worth considering."""
    best = max(r["acc"] for r in front)
    front = [r for r in front if r["acc"] >= floor * best]
    lo, hi = min(front, key=lambda r: (r["spikes"], -r["acc"])), max(front, key=lambda r: (r["acc"], -r["spikes"]))
    ds = (hi["spikes"] - lo["spikes"]) or 1.0
    da = (hi["acc"] - lo["acc"]) or 1.0

    def distance(r):                   # |cross product| / length, in the scaled plane
        x, y = (r["spikes"] - lo["spikes"]) / ds, (r["acc"] - lo["acc"]) / da
        x1, y1 = (hi["spikes"] - lo["spikes"]) / ds, (hi["acc"] - lo["acc"]) / da
        return abs(x1 * y - y1 * x) / (math.hypot(x1, y1) or 1.0)

    return max(front, key=lambda r: (round(distance(r), 12), r["acc"], -r["spikes"]))


def pick(records: list[dict], rule: str) -> dict:
    """One record of the accuracy-spikes front of `records` under --pick `rule`:
      lambda         the largest "fitness" (the paper's, with the search's lambda); ties: earlier
      knee[:F]       knee() of the front with accuracy >= F x the best (F: 0.5 by default)
      budget:SPIKES  the most accurate with spikes <= SPIKES; ties: fewer spikes
    The fittest record under lambda <= 0 is on the front already; looking only at the front
    changes the answer only for a tie in fitness with a record that dominates it."""
    kind, value = parse_pick(rule)
    front = pareto_front(records)
    if not front:
        raise AutoSNNError("no evaluated architecture to pick from")
    if kind == "knee":
        return knee(front, value)
    if kind == "budget":
        under = [r for r in front if r["spikes"] <= value]
        if not under:
            raise AutoSNNError(f"no architecture has spikes per image <= {value:.6g} (the fewest is "
                               f"{front[0]['spikes']:.6g}): raise the budget in --pick budget:SPIKES")
        return max(under, key=lambda r: (r["acc"], -r["spikes"]))
    order = {id(r): i for i, r in enumerate(records)}
    return max(front, key=lambda r: (r["fitness"], -order[id(r)]))


# ---------------------------------------------------------------------------------------------
# The multi-objective search
# ---------------------------------------------------------------------------------------------

class ParetoSearch(Search):
    """NSGA-II's offspring on the search's operators: the `topk` survivors of everything evaluated by
    (rank, crowding) over --objectives, parents by binary tournament among them, then the same
    mutants, crossovers of two distinct parents and random fill as evolve.Search."""

    @property
    def objectives(self) -> tuple:
        return check_objectives(self.cfg.objectives)

    def propose(self) -> list[Arch]:
        if self.generation == 0:
            return super().propose()
        cfg, taken = self.cfg, self.seen()
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

    def tell(self, archs: list[Arch], results: list[dict]) -> None:
        missing = [n for n in self.objectives if any(n not in r for r in results)]
        if missing:
            raise AutoSNNError(f"the evaluations carry no {missing[0]!r} (energy counting is off): "
                               f"use --objectives acc,spikes")
        super().tell(archs, results)

    def note(self) -> str:
        return f"; front of {len(pareto_front(self.history))}"


SEARCHES = {"evolution": Search, "random": RandomSearch, "pareto": ParetoSearch}


def make_search(backbone: Backbone, cfg, spike_norm: float, rng: random.Random) -> Search:
    """The search --search-algo names (cfg: evolve.SearchConfig)."""
    cfg.check()
    return SEARCHES[cfg.search_algo](backbone, cfg, spike_norm, rng)
