"""The verbs on a finished run folder: re-rank its search under another fitness (no evaluation
again), pick one architecture from its front, redraw its plots (needs matplotlib), or print the
architecture found and the command that retrains it (and write the retrained network as NIR).

    python3 runs.py rerank runs/X --lam -0.24
    python3 runs.py rerank runs/X --spike-budget 60000
    python3 runs.py rerank runs/X --by energy_uj --lam -0.1      # rank by the energy estimate
    python3 runs.py rerank runs/X --pick knee                    # one architecture of the front
    python3 runs.py plot runs/X
    python3 runs.py export runs/X
    python3 runs.py export runs/X --nir net.nir     # and the retrained network as a NIR graph (export/nir.py)
    python3 runs.py export runs/X --nir net.nir --reader snntorch    # with the dt and threshold snnTorch needs
    python3 runs.py export runs/X --nir net.nir --target dynapcnn    # refused if the chip cannot run it
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

from evolve import rerank
from export.nir import READERS, TARGETS
from files import AutoSNNError, Parser, check_writable, python, read_json
from pareto import pareto_front, pick
from plumbing.history import load_history
from plumbing.plots import plot_run
from search_space import resolve_arch


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
    from plumbing.rundir import OLDER, flat_config        # imports torch: only here
    flat_config(cfg, cfg_path)                            # every option there, each of its type
    if not isinstance(cfg.get("run_id"), str):
        raise AutoSNNError(f"{cfg_path} records no run id: {OLDER}")
    backbone = cfg["run"]["backbone"]
    record, arch_path, search_path, history = None, run_dir / "best_arch.txt", run_dir / "search.json", []
    if search_path.is_file():
        doc = load_history(run_dir)
        history = doc["history"]
        if doc["run_id"] != cfg["run_id"]:
            raise AutoSNNError(f"{search_path} comes from run {doc['run_id']}, {cfg_path} from run {cfg['run_id']}: "
                               f"a run folder holds the files of one run; remove the foreign file")
        if not arch_path.is_file():       # what train.py would have written: the search's --pick
            record = pick_or_say(history, doc.get("pick", "lambda"), search_path, run_dir)
    if arch_path.is_file():
        from autosnn import run_arch              # best_arch.txt, read and checked
        text, source = run_arch(run_dir, cfg)
        if history and text not in {r["arch"] for r in history}:
            raise AutoSNNError(f"{arch_path} names {text}, which {search_path} never evaluated: the files of "
                               f"{run_dir} disagree; delete {arch_path.name} ({python()} train.py --resume {run_dir} "
                               f"writes it again)")
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
    args = [python(), "train.py", "--stage", "retrain", "--arch", str(arch)]
    for sec, k in EXPORT_KEYS + OPTIONAL_KEYS:
        v = cfg[sec][k]
        if (sec, k) in OPTIONAL_KEYS and not v:
            continue
        args += ["--" + k.replace("_", "-"), str(v)]
    record = next((r for r in history if r["arch"] == str(arch)), None)
    return {"arch": str(arch), "source": str(source), "search": record, "command": shlex.join(args)}


def pick_or_say(history: list, rule: str, path: Path, run_dir: Path) -> dict:
    """pareto.pick, or one line that says how to choose when the rule chooses nothing."""
    try:
        return pick(history, rule)
    except AutoSNNError as e:
        raise AutoSNNError(f"{path}: --pick {rule} chooses nothing ({e}); see the front with {python()} runs.py rerank "
                           f"{run_dir} --pick knee, then choose with {python()} train.py --resume {run_dir} --pick RULE") \
            from None


def check_model(run_dir: Path):
    """The run's model.pt loaded with its checks (this run's network, finite weights), or None."""
    if not (run_dir / "model.pt").is_file():
        return None
    from autosnn import SpikingNetwork, read_model_file
    from baselines import load_model as load_baseline
    _, doc = read_model_file(run_dir)
    return (load_baseline if doc["spec"].get("kind") == "baseline" else SpikingNetwork.load)(run_dir)


def check_nir_target(path: Path, dt: float | None) -> None:
    """--nir FILE and --dt, before anything is built: a new or replaceable file in a writable folder."""
    import math
    if dt is not None and not (math.isfinite(dt) and dt > 0):
        raise AutoSNNError(f"--dt must be a finite number > 0 (got {dt})")
    if path.is_dir():
        raise AutoSNNError(f"--nir {path} is a folder; give a file name, e.g. {path / 'net.nir'}")
    check_writable(path.parent, f"--nir {path}")



# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="runs.py", description="Re-rank, plot or export a finished search.")
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
                   "under lambda, knee[:F] or budget:SPIKES (lambda: the search's own fitness)")
    pl = sub.add_parser("plot", help="redraw pareto.png and curves.png of a run folder")
    pl.add_argument("run", type=Path, help="run folder")
    ex = sub.add_parser("export", help="print the architecture found and the command that retrains it; "
                                       "with --nir, also write the retrained network as a NIR graph")
    ex.add_argument("run", type=Path, help="run folder")
    ex.add_argument("--nir", type=Path, default=None, metavar="FILE.nir",
                    help="write the run's retrained network (model.pt) to this NIR file (needs: pip install nir)")
    ex.add_argument("--reader", default=None, choices=list(READERS),
                    help="with --nir: the simulator that will run the file; the file gets the time step and "
                         "threshold it needs (table in docs/nir.md). Default: any reader that fires at "
                         "v > v_threshold, at --dt")
    ex.add_argument("--dt", type=float, default=None,
                    help="with --nir and no --reader: the time step the graph's time constants are in, "
                         "tau = dt / k (default 1)")
    ex.add_argument("--target", default=None, choices=list(TARGETS),
                    help="with --nir: refuse, naming the layers, a network this chip cannot run (IF neurons "
                         "only, no residual joins, no pooling before a neuron)")
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
            given = [o for o, v in (("--dt", args.dt), ("--reader", args.reader), ("--target", args.target))
                     if v is not None]
            if args.nir is None and given:
                raise AutoSNNError(f"{', '.join(given)}: only with --nir (how the NIR file is written); add --nir FILE.nir")
            if args.nir is not None:
                check_nir_target(args.nir, args.dt)
            res = export_run(args.run)
            check_model(args.run)
            if args.nir is not None:
                from export.nir import write_nir
                try:
                    write_nir(args.run, args.nir, dt=args.dt, reader=args.reader, target=args.target)
                except OSError as e:              # /proc, a full or read-only filesystem: the writer's own error
                    raise AutoSNNError(f"cannot write {args.nir}: {e.strerror or e}") from None
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
