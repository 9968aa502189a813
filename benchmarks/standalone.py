"""What bench.py's --fidelity and --search-quality share: a finished run's super-network, data and
settings, an output folder that resumes only with the settings it was made with, and stand-alone
retraining of one architecture as a resumable unit.

A unit is one architecture trained from scratch with the run's retraining recipe for E epochs with
seed s (weights and data order seeded by the run's --seed + s, so seed 0 is the run's own retraining),
then tested: train.retrain_stage in its own folder, units/<arch>.seed<s>.e<E>/, checkpointed after every
epoch (child.pt) and finished when its results.json is written. Rerunning the same command continues
every unfinished unit where it stopped, bit for bit on a CPU with the same --threads. Several processes
may run the same command at once (e.g. one per core with --threads 1): each unit is claimed by one of
them (an flock on its .lock), the others take the next one or wait for it.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import train
from files import AutoSNNError, progress, read_json, remove_stale_temps
from plumbing.config import Config, Env, check_config
from plumbing.rundir import Run, environment, load_checkpoint, load_supernet, read_config, writing

# the options that define a stand-alone result besides the architecture, seed and epochs
POLL_S = 5          # how often a process waits for units that other processes are training
RECIPE = ("dataset", "data_root", "n_train", "n_test", "split_by", "cutout", "backbone", "T", "neuron", "tau0",
          "v_th", "batch_size", "retrain_lr", "optimizer", "seed")


@dataclass
class Loaded:
    """A finished run's configuration (flat options), data, device settings and super-network."""
    path: Path
    flat: dict
    cfg: Config
    ds: object
    env: Env
    net: torch.nn.Module
    ck: dict
    run_id: str

    def evaluator(self, bn_recalib: int | None = None):
        """evaluate(archs) -> records, as the run's search evaluates (train.search_evaluator)."""
        return train.search_evaluator(self.cfg, self.net, self.ds, self.env, bn_recalib)

    def recipe(self) -> dict:
        return {k: self.flat[k] for k in RECIPE}


def load_run(run_dir, threads: int, device: str, log=print) -> Loaded:
    """RUN's config.json and super-network (supernet.pt), its data, and an Env with `threads` and
    `device`. One-line AutoSNNError when RUN is not a run folder with a trained super-network."""
    path = Path(run_dir)
    flat, meta = read_config(path)
    ck = load_checkpoint(path / "supernet.pt", "supernet")
    flat = {**flat, "stage": "retrain", "threads": threads, "device": device, "supernet_path": "", "arch": "",
            "model": "", "inherit": False}
    cfg = Config.from_flat(flat)
    check_config(cfg)
    env = Env(cfg)
    ds = train.load_data(cfg, env)
    net = load_supernet(cfg, ck, ds, env.device, path / "supernet.pt")
    if ck["epoch"] < ck["config"]["supernet"]["supernet_epochs"]:
        log(f"note: the super-network of {path} stopped at epoch {ck['epoch']} of "
            f"{ck['config']['supernet']['supernet_epochs']}; measuring it as it is")
    return Loaded(path, flat, cfg, ds, env, net, ck, meta["run_id"])


@contextlib.contextmanager
def claimed(folder: Path, wait: bool):
    """Hold an exclusive flock on folder/.lock: yields True once held, or False at once when another
    process holds it and wait is False. Released on exit (also when the process dies)."""
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / ".lock", "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        f.close()


def open_folder(out: Path, settings: dict, what: str, resume_hint: str) -> Run:
    """The output folder `out`, created or reopened (not locked: several processes may share it).
    settings.json records the settings it was made with; another setting on a rerun is one line (the
    folder would mix two studies)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AutoSNNError(f"{out} is a file; --out must be a folder")
    run = Run(out, environment(torch.device(settings.get("device", "cpu"))))
    with claimed(out, wait=True):
        remove_stale_temps(out)
        path = out / "settings.json"
        if path.is_file():
            saved = read_json(path)
            diff = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k) and k != "device")
            if diff:
                k = diff[0]
                raise AutoSNNError(f"{out} holds {what} made with {k} = {saved.get(k)!r}, not {settings.get(k)!r}; "
                                   f"rerun with its settings to continue it ({resume_hint}), or give another --out")
        else:
            run.write_text(path, json.dumps(settings, indent=1))
    return run


def unit_name(arch: str, seed: int, epochs: int) -> str:
    return f"{arch}.seed{seed}.e{epochs}"


def check_units_recipe(folder: Path, recipe: dict, run: Run) -> None:
    """units/recipe.json: the retraining recipe every unit in `folder` was made with."""
    path = folder / "recipe.json"
    if path.is_file():
        saved = read_json(path)
        diff = sorted(k for k in set(saved) | set(recipe) if saved.get(k) != recipe.get(k))
        if diff:
            raise AutoSNNError(f"{folder} holds units retrained with {diff[0]} = {saved.get(diff[0])!r}, not "
                               f"{recipe.get(diff[0])!r}: another run's recipe; give another --out")
    else:
        with writing(folder):
            folder.mkdir(parents=True, exist_ok=True)
        run.write_text(path, json.dumps(recipe, indent=1))


def unit_result(folder: Path, arch: str, seed: int, epochs: int) -> dict | None:
    """The finished unit's results (test_acc, spikes, neuron_spikes, params), or None."""
    path = folder / unit_name(arch, seed, epochs) / "results.json"
    if not path.is_file():
        return None
    res = read_json(path)
    if not isinstance(res, dict) or res.get("arch") != arch or res.get("epochs") != epochs:
        raise AutoSNNError(f"{path} is not the result of {arch} after {epochs} epochs: the units folder is damaged; "
                           f"delete {path.parent} to retrain it")
    return {k: res[k] for k in ("test_acc", "spikes", "neuron_spikes", "params")}


def retrain_unit(loaded: Loaded, folder: Path, arch: str, seed: int, epochs: int) -> None:
    """Train `arch` stand-alone (see the module docstring) in folder/<unit>/, resuming its checkpoint;
    the unit's log goes to its own log.txt only. The caller holds the unit's claim."""
    name = unit_name(arch, seed, epochs)      # its files record the run it came from and the unit
    sub = Run(folder / name, environment(loaded.env.device), run_id=f"{loaded.run_id}/{name}")
    remove_stale_temps(sub.path)
    sub.printing = False
    cfg = Config.from_flat({**loaded.flat, "arch": arch, "retrain_epochs": epochs, "eval_every": epochs,
                            "seed": loaded.flat["seed"] + seed})
    train.retrain_stage(cfg, loaded.ds, sub, loaded.env, arch)


def train_units(loaded: Loaded, folder: Path, units: list, epochs: int) -> dict:
    """Every (arch, seed) of `units` trained for `epochs` (those finished before are read): this
    process trains each unit no other process has claimed, then waits for the others' (and takes
    over a unit whose process died). One progress line per unit trained here. Returns
    {(arch, seed): unit_result}."""
    units = list(dict.fromkeys(units))
    done = lambda u: unit_result(folder, u[0], u[1], epochs) is not None
    first, start = sum(map(done, units)), time.perf_counter()
    while True:
        left = [u for u in units if not done(u)]
        if not left:
            return {u: unit_result(folder, u[0], u[1], epochs) for u in units}
        trained = False
        for a, s in left:
            with claimed(folder / unit_name(a, s, epochs), wait=False) as mine:
                if not mine or done((a, s)):
                    continue
                t0 = time.perf_counter()
                retrain_unit(loaded, folder, a, s, epochs)
                trained = True
            res, n = unit_result(folder, a, s, epochs), sum(map(done, units))
            say(f"[{n}/{len(units)}] {a} seed {s}: test acc {res['test_acc']:.4f}, spikes {res['spikes']:.0f} "
                f"({time.perf_counter() - t0:.0f}s) | {progress(start, n, first, len(units))}")
        if not trained:
            time.sleep(POLL_S)        # the rest are being trained by other processes


def say(msg: str) -> None:
    """A progress line on stderr (stdout carries the report, or the JSON)."""
    print(msg, file=sys.stderr, flush=True)
