"""The run folder: which one (new, or resumed from its saved configuration), and everything written
into it: config.json, log.txt, metrics.jsonl, checkpoints and model files, one-time warnings.

    where = resolve(given)            # cfg validated, folder chosen; nothing written yet
    run = Run.open(cfg, where, env)   # creates (or locks and tidies) the folder; rank 0 alone writes

Every file is written through files.atomic_write (temp file, fsync, rename); checkpoints are
serialised in memory first, so a full disk is an OSError of the write, which is reported as one
line. A lock (flock on .lock) refuses a second process on the same folder. A Run that does not
write (ranks other than 0 under torchrun, dist.py) logs, saves and writes nothing, so the stages
call it without guards. A closed stdout (`train.py | head -1`) stops the printing, not the run.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import platform
import random
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import autosnn
from files import AutoSNNError, atomic_write, atomic_write_text, create_folder, csv_text, remove_stale_temps
from formats.npz import path_of as npz_path
from plumbing import dist
from plumbing.config import (FIELDS, MODEL_KEYS, SECTIONS, Config, check_config, check_out, flag, make_config,
                              unused_options)
from plumbing.schema import check_search_doc, read_metrics_row


CHECKPOINTS = {"supernet": "supernet.pt", "search": "search.pt", "retrain": "child.pt"}
# what each kind of checkpoint holds (train.fit and train.search_stage write them)
_TRAINED = ("model", "optimizer", "epoch", "history", "data_gen", "rng", "config", "spec", "wall_s", "run_id")
CHECKPOINT_KEYS = {"supernet": (*_TRAINED, "path_rng", "spike_norm", "num_classes", "input_shape"),
                   "search": ("search", "rng", "config", "wall_s", "run_id"),
                   "retrain": (*_TRAINED, "scheduler")}
OLDER = "made by an older version of this project; rerun"
# What --resume may change (the rest comes from config.json): how the run executes, and --pick, which
# chooses from a finished search (a pick that matched nothing must not be a dead end).
RESUME_MAY_CHANGE = {"device", "threads", "compile", "log_every", "pick"}
# --resume RUN --supernet-epochs N / --retrain-epochs N continue a stage to N epochs (never fewer)
EXTENDABLE = {"supernet_epochs": ("all", "supernet"), "retrain_epochs": ("all", "retrain", "study")}
# what a search and a retraining wrote: made with the old super-network, set aside when it trains on
DOWNSTREAM = ("search.pt", "search.json", "pareto.csv", "best_arch.txt", "pareto.png", "child.pt", "model.pt",
              "results.json")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def new_run_id() -> str:
    """A new run's identity: its start time and 8 random hex digits (two runs started in the same second
    differ). Recorded in config.json and in every checkpoint, history and model file of the run."""
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(4)


@dataclass
class Where:
    """The run folder a command line resolved to. rebuilt: the configuration when config.json had to be
    rebuilt from a checkpoint (written once the folder is locked); supernet: a given --supernet's checkpoint.
    run_id: the run's identity, recorded in every file of its folder (plumbing/identity.py); supernet_run:
    the run id of the super-network it started from, when that is another run's; source: the file the
    configuration came from; changed: the options --resume changed ({option: (before, now)}); extended:
    {option: (old, new)} for a resume that extends a stage (see check_extension); notes: options given
    that the run does not read (config.unused_options), logged once."""
    path: Path
    new: bool
    preset: str = ""
    supernet: dict | None = None
    rebuilt: dict | None = None
    run_id: str = ""
    supernet_run: str | None = None
    source: Path | None = None
    changed: dict = field(default_factory=dict)
    extended: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def resolve(given: dict) -> tuple[Config, Where]:
    """Options (a parsed command line) -> the validated configuration and its run folder. A resumed run
    takes its configuration from the folder; a new one checks --supernet's checkpoint against the
    options that define the super-network. Creates nothing."""
    if "resume" in given:
        run_dir = Path(given.pop("resume"))
        saved, meta = read_config(run_dir)
        extra = set(given) - RESUME_MAY_CHANGE - set(EXTENDABLE)
        if extra:
            raise AutoSNNError(f"--resume takes its options from {run_dir}/config.json; drop "
                               + ", ".join(flag(k) if k in FIELDS else "--" + k.replace("_", "-")
                                           for k in sorted(extra)))
        cfg = Config.from_flat({**saved, **given})
        with naming(meta["source"], given):
            check_config(cfg)
        extended = check_extension(saved, given, run_dir)
        changed = {k: (saved[k], v) for k, v in given.items() if saved[k] != v and k not in extended}
        return cfg, Where(run_dir, False, rebuilt=cfg.to_dict() if meta["rebuilt"] else None, run_id=meta["run_id"],
                          supernet_run=meta["supernet_run"], source=meta["source"], changed=changed,
                          extended=extended, notes=unused_options(cfg, given))
    supernet_ck, typed = None, set(given)
    if given.get("supernet_path") and given.get("stage") in ("search", "retrain"):
        supernet_ck = load_checkpoint(Path(given["supernet_path"]), "supernet")
        saved = flat_config(supernet_ck["config"], given["supernet_path"])
        for k in MODEL_KEYS:
            if k in given and given[k] != saved[k]:
                raise AutoSNNError(f"{flag(k)} {given[k]} does not match the super-network checkpoint "
                                   f"{given['supernet_path']} ({k} = {saved[k]})")
            given[k] = saved[k]
    with naming(given.get("supernet_path"), typed):
        cfg, preset = make_config(given)
    r = cfg.run
    if r.stage == "search" and supernet_ck is None:
        raise AutoSNNError("--stage search needs --supernet runs/<name>/supernet.pt")
    if r.stage == "retrain" and not (cfg.retrain.arch or cfg.retrain.model):
        raise AutoSNNError("--stage retrain needs --arch (an architecture string or a name such as AutoSNN) "
                           "or --model (a hand-crafted baseline)")
    if cfg.retrain.inherit and (r.stage != "retrain" or supernet_ck is None):
        raise AutoSNNError("--inherit is for --stage retrain and needs --supernet runs/<name>/supernet.pt")
    label = npz_path(r.dataset).stem if npz_path(r.dataset) else r.dataset       # npz:PATH: no '/' in the name
    run_dir = check_out(r.out, r.name or f"{r.stage}-{label}-{time.strftime('%Y%m%d-%H%M%S')}")
    if run_dir.exists() or run_dir.is_symlink():
        raise AutoSNNError(f"{run_dir} already exists; continue it with --resume {run_dir} or choose --name")
    return cfg, Where(run_dir, True, preset, supernet_ck, run_id=new_run_id(),
                      supernet_run=supernet_ck["run_id"] if supernet_ck is not None else None,
                      notes=unused_options(cfg, typed))


@contextlib.contextmanager
def naming(source, typed):
    """A configuration error about an option the user did not type came from the file `source` (a resumed
    run's config.json, a --supernet checkpoint): the one line names that file."""
    try:
        yield
    except AutoSNNError as e:
        if source is None or any(flag(k) in str(e) for k in typed if k in FIELDS):
            raise
        raise AutoSNNError(f"{source}: {e}") from None


def check_extension(saved: dict, given: dict, run_dir: Path) -> dict:
    """{option: (saved, new)} for each of --supernet-epochs / --retrain-epochs that a resume raises.

    A stage extended from E to N epochs ends exactly where a run started with N would (bit for bit on a
    CPU with the same --threads), because nothing in it depends on the planned number of epochs: Adam
    at a constant learning rate, data order and paths drawn epoch by epoch from generators saved in
    the checkpoint, evaluations that leave weights and generators alone. The schedules that do depend
    on it (SGD's learning-rate steps at 50% and 75% of --retrain-epochs, --supernet-schedule cosine)
    are refused. What does
    differ: evaluations logged at the old last epoch (test accuracy, the watched paths) that a straight
    run makes only on its --eval-every / --watch-every grid. A longer super-network invalidates the
    search and retraining made with the old one: Run.open sets their files aside (superseded/)."""
    out = {}
    for k, stages in EXTENDABLE.items():
        if k not in given or given[k] == saved[k]:
            continue
        if given[k] < saved[k]:
            raise AutoSNNError(f"{flag(k)} {given[k]}: --resume can only extend a stage, and {run_dir} plans "
                               f"{saved[k]} epochs")
        if saved["stage"] not in stages:
            raise AutoSNNError(f"{flag(k)}: the run {run_dir} (--stage {saved['stage']}) has no such stage to extend")
        if k == "retrain_epochs" and saved["optimizer"] == "sgd":
            raise AutoSNNError(f"{flag(k)}: an SGD retraining steps its learning rate at 50% and 75% of its "
                               f"epochs, so it cannot be extended to equal a longer run; start a new run")
        if k == "supernet_epochs" and saved["supernet_schedule"] != "constant":
            raise AutoSNNError(f"{flag(k)}: a {saved['supernet_schedule']} learning rate is scheduled over the "
                               f"planned epochs, so it cannot be extended to equal a longer run; start a new run")
        out[k] = (saved[k], given[k])
    return out


def flat_config(sections, where) -> dict:
    """A saved configuration ({section: {option: value}}) -> {option: value}, every option present with
    the type of its default. Errors name `where`."""
    if not isinstance(sections, dict) or not all(isinstance(sections.get(k), dict) for k, _ in SECTIONS):
        raise AutoSNNError(f"{where} is not a run configuration (expected the sections "
                           f"{', '.join(k for k, _ in SECTIONS)})")
    flat = {k: v for key, _ in SECTIONS for k, v in sections[key].items()}
    unknown, missing = sorted(set(flat) - set(FIELDS)), sorted(set(FIELDS) - set(flat))
    if unknown or missing:
        raise AutoSNNError(f"{where} " + (f"has unknown options {', '.join(unknown)}" if unknown else
                                          f"lacks the options {', '.join(missing)}") + f": {OLDER}")
    for k, v in flat.items():
        want = type(FIELDS[k].default)
        ok = v is None if FIELDS[k].default is None else (
            isinstance(v, (int, float)) and not isinstance(v, bool) if want is float else isinstance(v, want))
        if not ok and not (FIELDS[k].default is None and isinstance(v, bool)):
            raise AutoSNNError(f"{where}: option {k} = {v!r} has the wrong type")
    return flat


def read_config(run_dir: Path) -> tuple[dict, dict]:
    """The saved configuration of a run folder as a flat dict, and {"run_id", "supernet_run", "source" (the
    file it came from), "rebuilt" (whether that is a checkpoint: config.json missing, damaged, incomplete
    or of an older version; every checkpoint holds the config and the run id)}."""
    path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise AutoSNNError(f"{run_dir} is not a run folder (no such folder)")
    try:
        if not path.is_file():
            raise AutoSNNError(f"{run_dir} is not a run folder (no config.json in it)")
        try:
            saved = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise AutoSNNError(f"{path} is not valid JSON ({e}); it is damaged") from None
        except OSError as e:
            raise AutoSNNError(f"{path} cannot be read ({e.strerror or e})") from None
        flat = flat_config(saved, path)
        if not isinstance(saved.get("run_id"), str):
            raise AutoSNNError(f"{path} records no run id: {OLDER}")
        return flat, {"run_id": saved["run_id"], "supernet_run": saved.get("supernet_run"), "source": path,
                      "rebuilt": False}
    except AutoSNNError:
        for kind, name in CHECKPOINTS.items():
            if (run_dir / name).is_file():
                ck = load_checkpoint(run_dir / name, kind)
                return flat_config(ck["config"], run_dir / name), {
                    "run_id": ck["run_id"], "supernet_run": ck.get("supernet_run"), "source": run_dir / name,
                    "rebuilt": True}
        raise


def load_checkpoint(path: Path, kind: str) -> dict:
    """A checkpoint of `kind` (supernet, search, retrain), loaded with weights_only=True."""
    path = Path(path)
    if path.is_dir():
        raise AutoSNNError(f"{path} is a folder; give the {CHECKPOINTS[kind]} inside it")
    if not path.exists():
        raise AutoSNNError(f"checkpoint {path} not found")
    if not path.is_file():
        raise AutoSNNError(f"{path} is not a regular file (a device, a pipe?); give the {CHECKPOINTS[kind]} of a run")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:       # truncated, foreign, or pickled objects weights_only refuses
        raise AutoSNNError(f"{path} is not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(ck, dict) or "config" not in ck:
        raise AutoSNNError(f"{path} is not a checkpoint of this project")
    if "kind" not in ck or not isinstance(ck.get("run_id"), str):     # checkpoints without a run id: older
        raise AutoSNNError(f"{path} was {OLDER}")
    if ck["kind"] != kind:
        raise AutoSNNError(f"{path} is a {ck['kind']} checkpoint, not a {kind} one "
                           f"(expected a {CHECKPOINTS[kind]})")
    missing = sorted(k for k in CHECKPOINT_KEYS[kind] if k not in ck)
    if missing:
        raise AutoSNNError(f"{path} lacks {', '.join(missing)}: it is damaged, or was {OLDER}")
    if "epoch" in ck and not (isinstance(ck["epoch"], int) and ck["epoch"] >= 0):
        raise AutoSNNError(f"{path} is damaged (epoch {ck['epoch']!r}); delete it to start its stage again")
    if kind == "search":
        state = ck["search"]
        if not isinstance(state, dict) or not {"generation", "history", "rng", "spike_norm"} <= set(state):
            raise AutoSNNError(f"{path} holds no search state; it is damaged: rerun the search stage")
        check_search_doc({"history": state["history"]}, path, fix="rerun the search stage")
    return ck


def load_state(obj, state: dict, path: Path) -> None:
    """load_state_dict with a file-naming error when the checkpoint belongs to another network."""
    try:
        obj.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
        first = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
        raise AutoSNNError(f"{path} does not fit this run's network ({first[:160]})") from None


def load_supernet(cfg: Config, ck: dict, ds, device, where) -> autosnn.SpikingNetwork:
    """The super-network of checkpoint `ck` (read from `where`), checked against this run's data."""
    if ck["num_classes"] != ds.num_classes or tuple(ck["input_shape"]) != tuple(ds.input_shape):
        raise AutoSNNError(f"the super-network checkpoint {where} has {ck['num_classes']} classes and input "
                           f"{tuple(ck['input_shape'])}; this run needs {ds.num_classes} and "
                           f"{tuple(ds.input_shape)}")
    r = cfg.run
    net = autosnn.SpikingNetwork(r.backbone, ds.num_classes, None, r.T, ds.input_shape, r.neuron, r.tau0, r.v_th)
    load_state(net, ck["model"], where)
    return net.to(device)


def rng_states() -> dict:
    """The global generators the project draws from: Python's and torch's CPU generator (weight
    init). Data order, augmentation, path sampling and the search have their own generators, saved
    beside this. Nothing draws from the CUDA generator, so its state is not saved."""
    return {"random": random.getstate(), "torch": torch.get_rng_state()}


def set_rng_states(s: dict) -> None:
    random.setstate(s["random"])
    torch.set_rng_state(s["torch"])


class WriteError(AutoSNNError):
    """A file of the run folder could not be written; the folder stays resumable."""


@contextlib.contextmanager
def writing(path: Path):
    """Any failed write (full disk, read-only folder, a folder where a file should be): one line."""
    try:
        yield
    except WriteError:
        raise
    except AutoSNNError as e:               # files.atomic_write's own line (a full disk)
        raise WriteError(str(e)) from None
    except OSError as e:
        why = "no space left on device" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
        raise WriteError(f"cannot write {path}: {why}") from None


class Run:
    """The run folder: log lines (stdout + log.txt), metrics.jsonl, atomic files, one-time warnings,
    and the wall time of each stage. `writes` is False on ranks other than 0: they keep quiet."""

    def __init__(self, path: Path, env: dict | None = None, started: str | None = None, writes: bool = True,
                 run_id: str | None = None, supernet_run: str | None = None):
        self.path, self.writes, self.warned, self.wall = Path(path), writes, set(), {}
        self.env, self.started = env or {}, started or now()
        self.printing, self._lock = True, None
        self.id, self.supernet_run = run_id, supernet_run

    def stamp(self) -> dict:
        """What every checkpoint of the run records about its identity (plumbing/identity.py)."""
        return {"run_id": self.id, "supernet_run": self.supernet_run}

    @classmethod
    def open(cls, cfg: Config, where: Where, device: torch.device) -> Run:
        """Create the folder with its config.json in one step (new run), or lock and tidy it (resume)."""
        env = environment(device)
        run = cls(where.path, env, writes=dist.is_main(), run_id=where.run_id, supernet_run=where.supernet_run)
        if not run.writes:
            return run
        ids = {"run_id": where.run_id, "supernet_run": where.supernet_run}
        if where.new:
            doc = {**cfg.to_dict(), **ids, "preset": where.preset, "environment": env, "started": run.started}
            create_folder(where.path, {"config.json": json.dumps(doc, indent=1)})
        run.lock()
        if where.rebuilt is not None:
            run.write_text(where.path / "config.json", json.dumps({**where.rebuilt, **ids, "rebuilt": now()},
                                                                  indent=1))
            run.log(f"config.json was missing, damaged, incomplete or of an older version: rebuilt from "
                    f"{where.source.name}")
        elif not where.new:
            run.warn_threads()
            if where.changed:        # what --resume changed is the run's configuration from now on
                doc = json.loads((where.path / "config.json").read_text())
                run.write_text(where.path / "config.json", json.dumps({**doc, **cfg.to_dict()}, indent=1))
                run.log("resumed with " + ", ".join(f"{flag(k)} {v!r} (was {b!r})" for k, (b, v) in
                                                    sorted(where.changed.items())) + "; config.json updated")
        if where.extended:
            run.extend(cfg, where.extended)
        for note in where.notes:
            run.warn(("unused", note), note)
        remove_stale_temps(where.path)
        return run

    def extend(self, cfg: Config, extended: dict) -> None:
        """Record a resume that extends stages (rundir.check_extension) in config.json; when the
        super-network trains on, move what the old one's search and retraining wrote into
        superseded/supernet-<old>-epochs/ first, so that both run again (a kill in between: the same
        command redoes the rest)."""
        if "supernet_epochs" in extended:
            old = extended["supernet_epochs"][0]
            aside = self.path / "superseded" / f"supernet-{old}-epochs"
            moved = [n for n in DOWNSTREAM if (self.path / n).exists()]
            if moved:
                with writing(aside):
                    aside.mkdir(parents=True, exist_ok=True)
                    for n in moved:
                        os.replace(self.path / n, aside / n)
                self.log(f"the search and retraining of the {old}-epoch super-network are set aside in {aside} "
                         f"({', '.join(moved)}); they run again")
        try:
            doc = json.loads((self.path / "config.json").read_text())
        except (OSError, ValueError):
            doc = {}
        doc = {**(doc if isinstance(doc, dict) else {}), **cfg.to_dict()}
        doc["extended"] = list(doc.get("extended") or []) + [
            {"option": k, "from": a, "to": b, "time": now()} for k, (a, b) in extended.items()]
        self.write_text(self.path / "config.json", json.dumps(doc, indent=1))
        self.log("extending " + ", ".join(f"{flag(k)} from {a} to {b}" for k, (a, b) in extended.items()))

    def lock(self) -> None:
        """Hold .lock (flock) until close(): a second process on this folder stops with one line."""
        import fcntl
        path = self.path / ".lock"
        with writing(path):
            f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            pid = f.read().strip() or "?"
            f.close()
            raise AutoSNNError(f"{self.path} is in use by another process (pid {pid}); wait for it to "
                               f"finish, or stop it") from None
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock = f

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()          # releases the flock
            self._lock = None

    def warn_threads(self) -> None:
        """On a CPU, a resume continues bit-identically only with the thread count the run began with."""
        try:
            before = json.loads((self.path / "config.json").read_text())["environment"]["threads"]
        except (OSError, ValueError, KeyError, TypeError):
            return
        if before != torch.get_num_threads() and self.env.get("device") == "cpu":
            self.warn("threads", f"this run began with {before} threads and continues with "
                                 f"{torch.get_num_threads()}: results will differ in the last bits from an "
                                 f"uninterrupted run (--threads {before} keeps them identical)")

    def _append(self, name: str, text: str) -> None:
        """Appends are not atomic: a kill can leave a partial last line, which cut_metrics drops."""
        with writing(self.path / name), open(self.path / name, "a") as f:
            f.write(text)

    def log(self, msg: str) -> None:
        if not self.writes:
            return
        self._append("log.txt", msg + "\n")
        if self.printing:
            try:
                print(msg, flush=True)
            except (OSError, ValueError):     # stdout closed: keep training, stop printing
                self.printing = False
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no error at exit

    def note(self, msg: str) -> None:
        """A line for log.txt only (the caller prints it where it belongs, e.g. stderr)."""
        if self.writes:
            self._append("log.txt", msg + "\n")

    def warn(self, key, msg: str) -> None:
        """Log `msg` the first time `key` is seen in this process."""
        if key not in self.warned:
            self.warned.add(key)
            self.log("warning: " + msg)

    def metrics(self, **row) -> None:
        if self.writes:
            self._append("metrics.jsonl", json.dumps({"time": now(), **row}) + "\n")

    def cut_metrics(self, stage: str, key: str, upto: int) -> None:
        """Drop rows of `stage` past the checkpoint (row[key] > upto) and any partial line: a kill
        between a row's append and its checkpoint's save must not leave that row twice. A damaged
        row (binary garbage, not a JSON object, a count that is no integer) is dropped with a warning."""
        path = self.path / "metrics.jsonl"
        if not self.writes or not path.exists():
            return
        with writing(path):
            lines = path.read_bytes().split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        keep, dropped = [], []
        for i, line in enumerate(lines, 1):
            row, why = read_metrics_row(line)
            if why is not None:
                dropped.append(f"{i} ({why})")
            elif not (row.get("stage") == stage and row.get(key, 0) > upto):
                keep.append(line.decode())
        if dropped:
            self.warn(("metrics", path), f"{path}: dropped damaged line(s) {', '.join(dropped[:5])}"
                                         + (f" and {len(dropped) - 5} more" if len(dropped) > 5 else ""))
        if len(keep) != len(lines):
            self.write_text(path, "".join(x + "\n" for x in keep))

    def write_text(self, path: Path, text: str) -> None:
        if self.writes:
            with writing(path):
                atomic_write_text(path, text)

    def write_table(self, stem: str, rows: list[dict], head: str, tail: list[str]) -> str:
        """rows as stem.csv and as a Markdown table in stem.md between `head` and the `tail` lines.
        Returns the Markdown."""
        keys = list(rows[0])
        self.write_text(self.path / f"{stem}.csv", csv_text(keys, rows))
        fmt = {"test_acc": "{:.4f}", "spikes": "{:.0f}", "neuron_spikes": "{:.0f}", "params": "{:,}",
               "energy_uj": "{:.2f}", "ann_energy_uj": "{:.2f}"}
        md = [head, "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        md += ["| " + " | ".join(fmt.get(k, "{}").format(x[k]) if x[k] is not None else "-" for k in keys) + " |"
               for x in rows]
        md = "\n".join(md + [""] + tail)
        self.write_text(self.path / f"{stem}.md", md + "\n")
        return md

    def save(self, obj, name: str) -> None:
        """A checkpoint, serialised in memory, then written atomically: a crash never leaves half of
        one, and a full disk is the write's OSError (torch's own writer would hide it)."""
        if self.writes:
            buf = io.BytesIO()
            torch.save(obj, buf)
            with writing(self.path / name):
                atomic_write(self.path / name, lambda f: f.write(buf.getbuffer()))

    def save_network(self, net, name: str) -> None:
        """The weights-only model file (autosnn.save_model) that SpikingNetwork.load reads."""
        if self.writes:
            with writing(self.path / name):
                autosnn.save_model(net, self.path / name, run_id=self.id)

    def sub(self, name: str) -> Run:
        """A run folder inside this one (the study's variants), sharing warnings and environment."""
        sub = Run(self.path / name, self.env, self.started, self.writes, self.id, self.supernet_run)
        if self.writes:
            with writing(sub.path):
                sub.path.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(sub.path)
        sub.warned, sub.printing = self.warned, self.printing
        return sub


def environment(device: torch.device) -> dict:
    """What produced the run: versions, git commit of this code, the resolved device, CPU threads."""
    commit = None
    try:
        here = Path(__file__).resolve().parent.parent      # the repository root
        res = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        if res.returncode == 0:
            commit = res.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            commit += "-dirty" if dirty else ""      # uncommitted changes: the commit alone is not the code
    except (OSError, subprocess.SubprocessError):
        pass
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
        except OSError:
            pass
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "git_commit": commit, "device": str(device), "device_name": name, "host": platform.node(),
            "threads": torch.get_num_threads()}
