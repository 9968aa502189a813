"""Which run each file of a run folder belongs to. Every file a run writes records its run id
(rundir.new_run_id): config.json, the checkpoints (supernet.pt, search.pt, child.pt), search.json and the
model files; the checkpoints also hold the configuration and the network's spec. Before a run is resumed,
every file present is checked against the configuration it resumes with:

    the same run id                    a file copied in from another run is refused, naming both files
    the same identity options          T, seed, the options that define the network and its data
                                       (IDENTITY_KEYS), as a hand-edited config.json would not
    the same architecture              child.pt and model.pt against best_arch.txt or --arch
    the same super-network             a search started from another run's supernet.pt: that file still
                                       holds the run it held (supernet_run in config.json)
    the same choice                    --resume --pick may choose again from a finished search, unless
                                       retraining the earlier choice has begun (child.pt)

A file without a run id was made by an older version: one line says so (rerun). A damaged search.json
or best_arch.txt is not compared: the resumed run writes it again.
"""
from __future__ import annotations

from pathlib import Path

from autosnn import read_model_file, run_arch
from files import AutoSNNError, python, read_json
from pareto import pick
from plumbing.config import MODEL_KEYS, Config, flag
from plumbing.rundir import CHECKPOINTS, OLDER, Where, flat_config, load_checkpoint
from plumbing.schema import check_search_doc


# Options a file's content depends on: they cannot differ between the files of one run
IDENTITY_KEYS = (*MODEL_KEYS, "seed", "search_seed", "search_algo", "lam")
MIXED = "a run folder holds the files of one run: remove the foreign file, or start a new run"


def same_run(path: Path, run_id, ref: Path, ref_id: str) -> None:
    if run_id is None:
        raise AutoSNNError(f"{path} records no run id: {OLDER}")
    if run_id != ref_id:
        raise AutoSNNError(f"{path} comes from run {run_id}, {ref} from run {ref_id}: {MIXED}")


def same_options(path: Path, saved: dict, ref: Path, values: dict) -> None:
    for k in IDENTITY_KEYS:
        if saved[k] != values[k]:
            raise AutoSNNError(f"{path} was made with {flag(k)} {saved[k]!r}, {ref} says {values[k]!r}: the files "
                               f"of {path.parent} disagree; {MIXED}")


def same_arch(path: Path, arch, want: tuple) -> None:
    if want[0] is not None and arch != want[0]:
        raise AutoSNNError(f"{path} holds the network {arch}, {want[1]} names {want[0]}: the files of "
                           f"{path.parent} disagree; {MIXED}")


def check_run_files(cfg: Config, where: Where) -> None:
    """Refuse to resume `where` (a resumed run folder) when its files do not all belong to the run
    `where.run_id` with the configuration `cfg` (module docstring). Changes nothing."""
    d, ref, values = where.path, where.source, cfg.flat()
    try:
        want = run_arch(d, {"run": {"backbone": values["backbone"]}, "retrain": {"arch": values["arch"]}})
    except AutoSNNError:
        want = (None, None)             # a damaged best_arch.txt: the search stage writes it again
    cks = {kind: load_checkpoint(d / name, kind) for kind, name in CHECKPOINTS.items() if (d / name).is_file()}
    for kind, ck in cks.items():
        path = d / CHECKPOINTS[kind]
        if path != ref:
            same_run(path, ck["run_id"], ref, where.run_id)
            same_options(path, flat_config(ck["config"], path), ref, values)
        if kind == "retrain":
            same_arch(path, ck["spec"].get("arch"), want)
    if "pick" in where.changed and {"search", "retrain"} <= set(cks):    # retraining began: the choice is made
        chosen, done = pick(cks["search"]["search"]["history"], cfg.search.pick)["arch"], cks["retrain"]["spec"]["arch"]
        if chosen != done:
            raise AutoSNNError(f"--pick {cfg.search.pick} chooses {chosen}, but {d / 'child.pt'} already retrains "
                               f"{done}, the earlier choice: resume without --pick, and retrain {chosen} in a new run "
                               f"({python()} train.py --stage retrain --arch {chosen} with this run's options)")
    for sub in sorted(d.glob("study/*/child.pt")):        # the study's variants: the same run
        same_run(sub, load_checkpoint(sub, "retrain")["run_id"], ref, where.run_id)
    if (d / "search.json").is_file():
        try:
            doc = read_json(d / "search.json")
            check_search_doc(doc, d / "search.json")
        except AutoSNNError:
            doc = None                  # damaged: the search stage writes it again from search.pt
        if doc is not None:
            same_run(d / "search.json", doc.get("run_id"), ref, where.run_id)
    for name in ("model.pt", "supernet_model.pt"):
        if (d / name).is_file():
            path, doc = read_model_file(d / name)              # the file itself: config.json may be rebuilt
            same_run(path, doc.get("run_id"), ref, where.run_id)
            if doc["spec"].get("T") != values["T"]:
                raise AutoSNNError(f"{path} holds a network of T {doc['spec'].get('T')}, {ref} says T {values['T']}: "
                                   f"the files of {d} disagree; {MIXED}")
            if name == "model.pt" and doc["spec"].get("kind") == "autosnn":
                same_arch(path, doc["spec"].get("arch"), want)
    check_supernet_input(cfg, where)


def check_supernet_input(cfg: Config, where: Where) -> None:
    """A run that started from another run's super-network (--supernet) resumes only from that run's."""
    path = Path(cfg.run.supernet_path) if cfg.run.supernet_path else None
    if path is None or where.supernet_run is None or not path.is_file():
        return                          # a missing --supernet file fails where the stage loads it
    ck = load_checkpoint(path, "supernet")
    if ck["run_id"] != where.supernet_run:
        raise AutoSNNError(f"--supernet {path} now holds the super-network of run {ck['run_id']}; {where.source} "
                           f"started from run {where.supernet_run}'s: put that file back, or start a new run")
