"""Plots of a run folder: pareto.png (the search's accuracy-spikes trade-off) and curves.png (loss,
accuracy and spikes per epoch of each training stage; for a watched super-network also its fixed
paths on D_val and how their ranking changed). matplotlib is optional and imported here only.

    python3 runs.py plot runs/X          # redraw both
"""
from __future__ import annotations

import io
import math
from pathlib import Path

from files import AutoSNNError, atomic_write
from pareto import hypervolume, pareto_front, pick
from plumbing.history import load_history
from plumbing.schema import read_metrics_row


def plot_run(run_dir, log=print) -> list[str]:
    """Draw pareto.png from search.json and curves.png from metrics.jsonl; returns the names written.

    pareto.png: every evaluated architecture coloured by its generation (discrete colours, integer
    ticks), the front of everything evaluated up to each generation in that generation's colour,
    the final front in black, and the architecture the search's --pick chose. For a pareto search the
    title gives the final front's hypervolume against (accuracy 0, 2 x spike_norm spikes per image).
    Without matplotlib, one line says so and nothing fails."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import BoundaryNorm, ListedColormap
        from matplotlib.ticker import MaxNLocator
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
        h = doc["history"]
        gens = sorted({r.get("generation", 1) for r in h})
        last = gens[-1]
        # one colour per generation number 1..last, bounds between integers: ticks sit on colours
        cmap = ListedColormap(plt.get_cmap("viridis")(
            [i / max(last - 1, 1) for i in range(last)]))
        norm = BoundaryNorm([g + 0.5 for g in range(last + 1)], last)
        fig, ax = plt.subplots(figsize=(6.8, 4.8))
        pts = ax.scatter([r["spikes"] for r in h], [r["acc"] for r in h], c=[r.get("generation", 1) for r in h],
                         s=14, cmap=cmap, norm=norm, alpha=0.6, label="evaluated")
        bar = fig.colorbar(pts, ax=ax, label="generation (1 = initial random pool)")
        bar.locator = MaxNLocator(integer=True)
        bar.update_ticks()
        for g in gens[:-1]:
            f = pareto_front([r for r in h if r.get("generation", 1) <= g])
            ax.step([r["spikes"] for r in f], [r["acc"] for r in f], where="post", color=cmap(norm(g)), lw=1)
        front = pareto_front(h)
        ax.step([r["spikes"] for r in front], [r["acc"] for r in front], "-o", where="post", color="black",
                ms=3, lw=1.5, label=f"front after generation {last}")
        rule = doc.get("pick", "lambda")
        try:
            chosen = pick(h, rule)
        except AutoSNNError as e:          # e.g. a budget below every point: the plot still helps
            log(f"note: pareto.png marks no chosen architecture: {e}")
        else:
            ax.scatter([chosen["spikes"]], [chosen["acc"]], marker="*", s=220, color="tab:red",
                       label=f"chosen (--pick {rule})", zorder=3)
        ax.set(xlabel="spikes per image on D_val (count)", ylabel="accuracy on D_val (fraction)",
               title=pareto_title(doc))
        ax.legend(loc="lower right", fontsize=8)
        save(fig, "pareto.png")
    rows = read_metrics(run_dir / "metrics.jsonl", log)
    stages = [s for s in ("supernet", "retrain") if any(r.get("stage") == s and "epoch" in r for r in rows)]
    if stages:
        watched = any("val_acc" in r for r in rows)         # a 4th column: the watched paths' ranking
        fig, axes = plt.subplots(len(stages), 3 + watched, figsize=(12 + 4 * watched, 3.2 * len(stages)),
                                 squeeze=False)
        for row, stage in zip(axes, stages):
            # a row repeated by an interrupted run counts once (the last one written wins)
            ms = sorted({r["epoch"]: r for r in rows if r.get("stage") == stage and "epoch" in r}.values(),
                        key=lambda r: r["epoch"])
            ep = [r["epoch"] for r in ms]
            for ax, key, label in zip(row, ("loss", "acc", "spikes"),
                                      ("loss (mean per image)", "accuracy (fraction)", "spikes per image (count)")):
                ax.plot(ep, [r.get(key, math.nan) for r in ms], "-o", ms=3, label="train")
                test = [(r["epoch"], r["test_" + key]) for r in ms if "test_" + key in r]
                if test:
                    ax.plot(*zip(*test), "-s", ms=3, label="test")
                    ax.legend(fontsize=8)
                val = [r for r in ms if "val_" + key in r]
                if val:       # the watched paths: mean and +- one standard deviation over them
                    e, m, sd = ([r[k] for r in val] for k in ("epoch", "val_" + key, f"val_{key}_sd"))
                    n = len(val[0]["val_path_acc"])
                    ax.plot(e, m, "-^", ms=3, label=f"D_val, {n} fixed paths")
                    ax.fill_between(e, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)], alpha=0.2)
                    ax.legend(fontsize=8)
                if key == "acc":                   # the whole range, and chance: noise must not look like learning
                    chance = next((r["chance"] for r in ms if isinstance(r.get("chance"), (int, float))), None)
                    if chance is not None:
                        ax.axhline(chance, color="grey", ls="--", lw=1, label=f"chance ({chance:.3g})")
                        ax.legend(fontsize=8)
                    ax.set_ylim(0, 1)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set(xlabel="epoch", ylabel=label, title=f"{stage}: {label.split(' (')[0]}")
            if watched:
                ax = row[3]
                taus = [(r["epoch"], r["val_tau"]) for r in ms if r.get("val_tau") is not None]
                if stage != "supernet" or not taus:
                    ax.axis("off")
                    continue
                ax.plot(*zip(*taus), "-o", ms=3)
                ax.axhline(0, color="0.7", lw=0.8)
                ax.set(xlabel="epoch", ylabel="Kendall tau", ylim=(-1.05, 1.05),
                       title="supernet: ranking of the fixed paths\nagainst the previous evaluation")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.tight_layout()
        save(fig, "curves.png")
    return written


def pareto_title(doc: dict) -> str:
    """pareto.png's title from search.json: the algorithm, the --pick rule that chose the star, lambda
    where it acts (the lambda pick, and the evolution's parents), and a pareto search's hypervolume."""
    rule, algorithm = doc.get("pick", "lambda"), doc.get("algorithm", "evolution")
    title = f"{algorithm} search, --pick {rule}"
    if rule == "lambda" or algorithm == "evolution":
        title += f", lambda = {doc.get('lam')}"
    norm_spikes = doc.get("spike_norm")
    if algorithm == "pareto" and isinstance(norm_spikes, (int, float)) and norm_spikes > 0:
        hv = hypervolume(doc["history"], 0.0, 2 * norm_spikes)
        title += (f"\nfront hypervolume {hv:,.0f} (accuracy x spikes; reference point: accuracy 0, "
                  f"{2 * norm_spikes:,.0f} spikes)")
    return title


def read_metrics(path: Path, log=print) -> list[dict]:
    """The rows of metrics.jsonl; a damaged line (a crash mid-append, binary garbage, a count that is no
    integer: plumbing/schema.py) is skipped with a note."""
    if not path.is_file():
        return []
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as e:
        raise AutoSNNError(f"cannot read {path}: {e.strerror or e}") from None
    rows = []
    for i, line in enumerate(lines, 1):
        row, why = read_metrics_row(line)
        if why is None:
            rows.append(row)
        elif line.strip():
            log(f"note: {path} line {i} is damaged ({why}) and left out of the plots")
    return rows
