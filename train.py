"""AutoSNN pipeline: super-network training, spike-aware evolutionary search, retraining.

    python train.py --dataset synthetic --dry-run       # the whole pipeline on CPU in seconds
    python train.py --dataset cifar10 --download        # all three stages, short schedule
    python train.py --dataset cifar10 --preset paper    # the paper's budget (600 epochs, 20x20 search)
    python train.py --stage search --supernet runs/X/supernet.pt --lam -0.16
    python train.py --stage retrain --arch SRB_k5-SRB_k5-skip_connect-SRB_k3-SRB_k5 --dataset cifar100
    python train.py --resume runs/X                     # continue wherever it stopped

Stages (paper sec. 5-7):
  supernet  train the weight-sharing super-network on D_train (first 80% of the training set), one
            uniformly sampled path per batch; log the mean spikes per image of the sampled paths.
  search    evolutionary search on D_val (last 20%) with the super-network's weights and fitness
            acc * (spikes / spike_norm) ** lam; spike_norm defaults to the last epoch's mean spikes.
  retrain   train the found (or given) architecture from scratch on the full training set and
            report the final-epoch test accuracy, spikes per image and parameters.

Everything goes to runs/<name>/: config.json, log.txt, metrics.jsonl, supernet.pt, supernet_model.pt,
search.pt, search.json, pareto.csv, best_arch.txt, child.pt, model.pt, results.json.
Every option is validated (and the dataset loaded) before the run folder exists; the folder appears
at once with its config.json, so a crash leaves either nothing or a run that --resume continues.
Every file is written through files.atomic_write (temp file, fsync, rename). Checkpoints are written
after every epoch and every search generation and carry the RNG states the project draws from, so on
a CPU --resume continues bit-identically. On a GPU that needs at least --deterministic and the same
card and software versions (not checked by the tests, which run on a CPU). The configuration is one
dataclass per stage below; the command line is generated from them.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import itertools
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

try:        # Ctrl-C while torch loads: a line, not a traceback
    import numpy as np
    import torch
    import torch.nn.functional as F

    import autosnn
    import dist
    from autosnn import E_AC, E_MAC, NEURONS, SpikingNetwork, count_parameters, predict, rate_loss
    from baselines import BASELINES, HandcraftedSNN
    from data import DATASETS, load_dataset
    from evolve import (Search, SearchConfig, csv_text, evaluate_archs, evaluate_model, plot_run, run_search,
                        write_history)
    from files import AutoSNNError, Parser, atomic_write, atomic_write_text, create_folder, remove_stale_temps, progress
    from search_space import check_candidate, get_backbone, resolve_arch, sample_arch
except KeyboardInterrupt:
    print("\ninterrupted while loading; nothing was saved", file=sys.stderr)
    raise SystemExit(130) from None

STAGES = ("all", "supernet", "search", "retrain", "study")
AMP = ("fp32", "bf16")


def opt(default, help, **meta):
    """A config field with its help text. meta: model=True (defines the super-network and its data),
    flag="--x" (command-line name when it differs from the field's)."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class RunConfig:
    """What to run, on which data and model, on which device. Defaults are the paper's."""
    stage: str = opt("all", f"stage to run: {', '.join(STAGES)}")
    dataset: str = opt("cifar10", f"one of {', '.join(DATASETS)}", model=True)
    data_root: str = opt("./data", "dataset folder", model=True)
    download: bool = opt(False, "download CIFAR/SVHN if missing")
    n_train: int = opt(0, "synthetic data: training images (0: the dataset's own number)", model=True)
    n_test: int = opt(0, "synthetic data: test images (0: the dataset's own number)", model=True)
    split_by: str = opt("number", "event data: frames of equal event number or equal 'time'", model=True)
    cutout: int = opt(0, "cutout square size in training (0 = off; at most the image side)")
    backbone: str = opt("AutoSNN_16", "AutoSNN_<C> (= SNN_1 of width C) or SNN_<1-4>[_<C>]", model=True)
    T: int = opt(8, "time steps", model=True)
    neuron: str = opt("plif", f"one of {', '.join(NEURONS)} ('ann': ReLU, T=1, lambda=0, cross-entropy)",
                      model=True)
    tau0: float = opt(2.0, "initial membrane time constant (PLIF) / fixed one (LIF), > 1", model=True)
    v_th: float = opt(1.0, "firing threshold, > 0", model=True)
    batch_size: int = opt(96, "training batch size")
    eval_batch_size: int = opt(0, "evaluation batch size (0: 768 on a GPU as the paper, 256 on a CPU, "
                                  "measured faster there)")
    seed: int = opt(2022, "seed of weights, data order, augmentation and path sampling")
    device: str = opt("", "cpu, cuda, cuda:1, ... ('': cuda when available)")
    threads: int = opt(0, "CPU threads for torch (0: torch's choice)")
    deterministic: bool = opt(False, "bit-reproducible CUDA runs: deterministic cuDNN/cuBLAS algorithms, "
                                     "no TF32 (slower); CPU runs are reproducible without it")
    amp: str = opt("fp32", "fp32, or bf16: convolutions and classifier under bf16 autocast (membranes, "
                           "BN statistics and spike counts stay fp32)")
    compile: bool = opt(None, "torch.compile the network (default: on for CUDA, off for CPU)")
    out: str = opt("runs", "parent folder of run folders")
    name: str = opt("", "run folder name, inside --out ('': <stage>-<dataset>-<time>)")
    supernet_path: str = opt("", "super-network checkpoint (supernet.pt) for --stage search or --inherit",
                             flag="--supernet")
    log_every: int = opt(100, "batches between progress lines (0 = per epoch only)")
    activation_checkpointing: bool = opt(False, "recompute block activations in backward: less training "
                                                "memory for large T, ~1/3 more compute, same results on a CPU")


@dataclass
class SupernetConfig:
    """Super-network training (paper sec. 5)."""
    supernet_epochs: int = opt(600, "super-network training epochs")
    supernet_lr: float = opt(1e-3, "Adam learning rate")
    train_portion: float = opt(0.8, "fraction of the training set used as D_train (rest: D_val)", model=True)


@dataclass
class RetrainConfig:
    """Retraining the found architecture (paper sec. 7)."""
    arch: str = opt("", "architecture to retrain ('': the search's best); a string or a name "
                        "such as AutoSNN")
    retrain_epochs: int = opt(600, "retraining epochs")
    retrain_lr: float = opt(1e-3, "learning rate")
    optimizer: str = opt("adam", "adam, or sgd (momentum 0.9, wd 3e-4, lr x0.1 at 50% and 75%)")
    inherit: bool = opt(False, "start from the super-network's weights of this path")
    model: str = opt("", f"retrain a hand-crafted baseline instead: {', '.join(BASELINES)}")
    model_width: int = opt(0, "baseline width C (0 = the baseline's default)")
    study_block: str = opt("SCB_k3", "--stage study: the block used at every position")
    eval_every: int = opt(1, "epochs between test evaluations (the last epoch is always evaluated)")


@dataclass
class Config:
    run: RunConfig
    supernet: SupernetConfig
    search: SearchConfig
    retrain: RetrainConfig

    def to_dict(self) -> dict:
        return {k: asdict(getattr(self, k)) for k, _ in SECTIONS}

    @classmethod
    def from_flat(cls, values: dict) -> Config:
        parts = {}
        for key, kind in SECTIONS:
            parts[key] = kind(**{f.name: values[f.name] for f in fields(kind) if f.name in values})
        return cls(**parts)

    def flat(self) -> dict:
        return {k: v for part in self.to_dict().values() for k, v in part.items()}


SECTIONS = (("run", RunConfig), ("supernet", SupernetConfig), ("search", SearchConfig),
            ("retrain", RetrainConfig))
FIELDS = {f.name: f for _, kind in SECTIONS for f in fields(kind)}

# Presets are other default sets; options given on the command line override them. Without
# --preset/--dry-run the short preset applies (the help says so).
PRESETS = {
    "paper": {},
    "short": {"supernet_epochs": 30, "retrain_epochs": 60},
    # small enough for a CPU in well under a minute, large enough to learn something on synthetic data
    "dry-run": {"n_train": 1000, "n_test": 250, "backbone": "AutoSNN_8", "T": 4, "batch_size": 32,
                "eval_batch_size": 250, "supernet_epochs": 4, "retrain_epochs": 5, "supernet_lr": 3e-3,
                "retrain_lr": 3e-3, "iterations": 3, "pool": 6, "topk": 3, "mutations": 3, "crossovers": 2,
                "log_every": 0},
}
DEFAULT_PRESET = "short"
# What --neuron ann implies: one step, and no spikes, so fitness = accuracy.
ANN_FIXED = {"T": 1, "lam": 0.0}

# Options that define the super-network and its data: a search stage takes them from the checkpoint.
MODEL_KEYS = tuple(name for name, f in FIELDS.items() if f.metadata.get("model"))


def flag(name: str) -> str:
    return FIELDS[name].metadata.get("flag") or "--" + name.replace("_", "-")


# ---------------------------------------------------------------------------------------------
# Run folder: logging, metrics, checkpoints, RNG state
# ---------------------------------------------------------------------------------------------

class Run:
    """The run folder: log lines (stdout + log.txt), metrics.jsonl, atomic files, one-time warnings,
    and the wall time of each stage."""

    def __init__(self, path: Path, env: dict | None = None, started: str | None = None):
        self.path, self.warned, self.wall = Path(path), set(), {}
        self.env, self.started = env or {}, started or now()

    def _append(self, name: str, text: str) -> None:
        """Appends are not atomic: a kill can leave a partial last line, which cut_metrics drops."""
        try:
            with open(self.path / name, "a") as f:
                f.write(text)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise AutoSNNError(f"no space left on device while writing {self.path / name}; "
                                   f"the last checkpoint is intact") from None
            raise

    def log(self, msg: str) -> None:
        if not dist.is_main():          # under torchrun only rank 0 writes (dist.py)
            return
        print(msg, flush=True)
        self._append("log.txt", msg + "\n")

    def warn(self, key, msg: str) -> None:
        """Log `msg` the first time `key` is seen in this process."""
        if key not in self.warned:
            self.warned.add(key)
            self.log("warning: " + msg)

    def metrics(self, **row) -> None:
        if not dist.is_main():          # under torchrun only rank 0 writes (dist.py)
            return
        self._append("metrics.jsonl", json.dumps({"time": now(), **row}) + "\n")

    def cut_metrics(self, stage: str, key: str, upto: int) -> None:
        """Drop rows of `stage` past the checkpoint (row[key] > upto) and any partial line: a kill
        between a row's append and its checkpoint's save must not leave that row twice."""
        path = self.path / "metrics.jsonl"
        if not dist.is_main() or not path.is_file():
            return
        lines, keep = path.read_text().splitlines(), []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if not (isinstance(row, dict) and row.get("stage") == stage and row.get(key, 0) > upto):
                keep.append(line)
        if keep != lines:
            atomic_write_text(path, "".join(x + "\n" for x in keep))

    def write_text(self, path: Path, text: str) -> None:
        if dist.is_main():
            atomic_write_text(path, text)

    def save(self, obj, name: str) -> None:
        """torch.save under a temporary name, then rename: a crash never leaves half a checkpoint."""
        if not dist.is_main():
            return
        atomic_write(self.path / name, lambda f: torch.save(obj, f))

    def clean(self) -> None:
        """Remove temporary files of killed writers (ours, and the plots' fixed name.tmp)."""
        remove_stale_temps(self.path)
        for p in self.path.glob("*.tmp"):
            p.unlink(missing_ok=True)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def tune_cpu_allocator() -> None:
    """Keep large freed blocks in the heap (glibc only; elsewhere a no-op).

    glibc hands every block over 32 MiB back to the OS on free and maps it afresh on the next
    allocation, so each large activation tensor is page-faulted in again at every step. On a
    2-core CPU that cost ~40% of a search's time (bench.py); raising the thresholds removes it."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)       # M_MMAP_THRESHOLD: serve blocks up to 1 GiB from the heap
        libc.mallopt(-1, 1 << 30)       # M_TRIM_THRESHOLD: keep up to 1 GiB of free heap
    except (OSError, AttributeError):
        pass


def rng_states() -> dict:
    """The global generators the project draws from: Python's and torch's CPU generator (weight
    init). Data order, augmentation, path sampling and the search have their own generators, saved
    beside this. Nothing draws from the CUDA generator, so its state is not saved."""
    return {"random": random.getstate(), "torch": torch.get_rng_state()}


def set_rng_states(s: dict) -> None:
    # Older checkpoints also hold "numpy" and "cuda" (one state per GPU at save time): ignored, so a
    # resume works on any number of GPUs.
    random.setstate(s["random"])
    torch.set_rng_state(s["torch"])


CHECKPOINTS = {"supernet": "supernet.pt", "search": "search.pt", "retrain": "child.pt"}


def load_checkpoint(path: Path, kind: str) -> dict:
    """A checkpoint of `kind` (supernet, search, retrain), loaded with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise AutoSNNError(f"checkpoint {path} not found")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:       # truncated, foreign, or written by an older version with numpy objects
        raise AutoSNNError(f"{path} is not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(ck, dict) or "config" not in ck:
        raise AutoSNNError(f"{path} is not a checkpoint of this project")
    found = ck.get("kind") or ("supernet" if "spike_norm" in ck and "path_rng" in ck
                               else "search" if "search" in ck else "retrain" if "scheduler" in ck else "?")
    if found != kind:
        raise AutoSNNError(f"{path} is a {found} checkpoint, not a {kind} one "
                           f"(expected a {CHECKPOINTS[kind]})")
    return ck


def load_state(obj, state: dict, path: Path) -> None:
    """load_state_dict with a file-naming error when the checkpoint belongs to another network."""
    try:
        obj.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0][:160]
        raise AutoSNNError(f"{path} does not fit this run's network ({first})") from None


def save_network(net, path: Path) -> None:
    """The weights-only model file (autosnn.save_model) that SpikingNetwork.load reads."""
    if dist.is_main():                 # under torchrun only rank 0 writes
        autosnn.save_model(net, path)


def environment(device: torch.device) -> dict:
    """What produced the run: versions, git commit of this code, the resolved device."""
    commit = None
    try:
        here = Path(__file__).resolve().parent
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
            "git_commit": commit, "device": str(device), "device_name": name, "host": platform.node()}


# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------

def loss_fn(net: SpikingNetwork, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MSE on rates for SNNs (sec. 3.3); cross-entropy for the ANN ablation."""
    return F.cross_entropy(out.float(), y) if net.neuron == "ann" else rate_loss(out.float(), y, net.T)


def train_epoch(net, optimizer, batches, n_batches: int, path, run: Run, log_every: int, label: str,
                autocast=contextlib.nullcontext, time_first_step: bool = False) -> dict:
    """One epoch. path(): the architecture of the next batch (sampled for the super-network).
    Metrics and per-layer spike counts accumulate on the device and are read once per logging
    interval and at the end: no host sync per batch. Returns loss, acc, spikes (per image),
    img_per_s, "layers": {layer name: spikes in the epoch}, and "classifier": the classifier
    neuron's layer name (None for the ANN)."""
    net.train()
    sums, n, counts, classifier = None, 0, {}, None
    start = time.time()
    for i, (x, y) in enumerate(dist.shard(batches), 1):      # this rank's slice of each global batch
        optimizer.zero_grad(set_to_none=True)   # unsampled candidates keep grad None: Adam skips them
        with autocast():
            out, stats = net(x, path())
            loss = loss_fn(net, out, y)
        loss.backward()
        dist.average_gradients(net, len(y))      # the path's gradients, averaged over ranks
        optimizer.step()
        with torch.no_grad():
            row = torch.stack([loss.detach().double() * len(y), (predict(out) == y).sum().double(),
                               stats.spikes.double() * len(y)])
            sums = row if sums is None else sums + row
            key = tuple(stats.names)          # super-network paths differ in their layers
            if key not in counts:
                counts[key] = stats.counts
                neurons = [nm for nm, k in zip(stats.names, stats.kinds) if k == "neuron"]
                classifier = neurons[-1] if neurons else None     # the forward's last neuron layer
            else:
                counts[key] = counts[key] + stats.counts
        n += len(y)
        if i == 1 and time_first_step:
            run.log(f"  first {label} step (torch.compile compiles here): {time.time() - start:.1f}s")
        if log_every and i % log_every == 0:
            s, n_all = dist.sum_over_ranks(sums, n)           # global numbers (one process: as is)
            run.log(f"  {label} batch {i}/{n_batches}: loss {s[0] / n_all:.4f} acc {s[1] / n_all:.4f} "
                    f"spikes {s[2] / n_all:.0f} ({n_all / (time.time() - start):.0f} img/s)")
    dist.average_bn_stats(net)                   # every rank now holds the same model
    (loss_sum, correct, spikes), n = dist.sum_over_ranks(sums, n)
    layers: dict = {}
    flat = torch.cat([c.reshape(-1) for c in counts.values()]).tolist() if counts else []
    names = [nm for key in counts for nm in key]
    for nm, c in zip(names, flat):
        layers[nm] = layers.get(nm, 0.0) + c
    return {"loss": loss_sum / n, "acc": correct / n, "spikes": spikes / n,
            "img_per_s": n / (time.time() - start), "layers": layers, "classifier": classifier}


def warn_silent(run: Run, per_layer: dict, when: str, classifier=None) -> list:
    """Warn once per layer name that emitted no spike; returns the silent layers' names."""
    silent = [n for n, c in per_layer.items() if c == 0]
    for n in silent:
        if n == classifier:
            continue
        run.warn(("silent", n), f"layer {n} emitted no spike {when}: the layers after it get no input "
                 f"(one known cause: a PLIF neuron after average pooling/GAP cannot reach v_th = 1 at first; "
                 f"README, 'Silent layers'). Warned once per layer")
    return silent


def check_epoch(net, m: dict, what: str, ckpt: Path, run: Run) -> None:
    """Stop on divergence (the last good checkpoint stays); warn about silent layers."""
    e = m["epoch"]
    if not math.isfinite(m["loss"]):
        raise AutoSNNError(f"the {what} loss became {m['loss']} in epoch {e}; stopped. The last good "
                           f"checkpoint is kept ({ckpt}); try a lower learning rate")
    tensors = [(k, v) for k, v in net.state_dict().items() if v.is_floating_point()]
    if not bool(torch.stack([v.isfinite().all() for _, v in tensors]).all()):     # one sync per epoch
        bad = next(k for k, v in tensors if not bool(v.isfinite().all()))
        raise AutoSNNError(f"the {what} weights became non-finite in epoch {e} (first: {bad}); stopped. "
                           f"The last good checkpoint is kept ({ckpt}); try a lower learning rate")
    if net.neuron == "ann":
        return
    clf = m["classifier"]
    if clf is not None and m["layers"].get(clf, 1) == 0:
        run.warn(("classifier", what), f"the {what} classifier ({clf}) emitted no spike in epoch {e}: "
                 f"nothing can be learned until it fires (normal early in training; if it persists, "
                 f"lower --v-th or check the learning rate). Warned once")
    warn_silent(run, m["layers"], f"in {what} epoch {e}", clf)


def history_row(m: dict) -> dict:
    return {k: v for k, v in m.items() if k not in ("layers", "classifier")}


def build_net(cfg: Config, num_classes: int, input_shape, arch=None) -> SpikingNetwork:
    r = cfg.run
    return SpikingNetwork(r.backbone, num_classes, arch, r.T, input_shape, r.neuron, r.tau0, r.v_th,
                          checkpoint=r.activation_checkpointing)


class Env:
    """How the stages run: device, eval batch size, autocast, compilation."""

    def __init__(self, cfg: Config, device: torch.device):
        r = cfg.run
        self.device = device
        self.compile = (device.type == "cuda") if r.compile is None else r.compile
        self.amp = r.amp == "bf16"

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def prepare(self, net, run: Run):
        """Compile in place (state_dict keys unchanged), when asked."""
        if self.compile:
            autosnn.compile_network(net, log=run.log)
        return net


def n_batches(split, batch_size: int) -> int:
    return -(-len(split) // batch_size)


def train_supernet(cfg: Config, ds, run: Run, env: Env) -> dict:
    """Stage 1. Returns the final checkpoint."""
    r, sc, device = cfg.run, cfg.supernet, env.device
    path = run.path / "supernet.pt"
    torch.manual_seed(r.seed)
    net = build_net(cfg, ds.num_classes, ds.input_shape).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=sc.supernet_lr)
    path_rng, data_gen = random.Random(r.seed), torch.Generator().manual_seed(r.seed)
    history, epoch, wall = [], 0, 0.0
    if path.exists():
        ck = load_checkpoint(path, "supernet")
        load_state(net, ck["model"], path)
        load_state(optimizer, ck["optimizer"], path)
        path_rng.setstate(ck["path_rng"])
        data_gen.set_state(ck["data_gen"])
        set_rng_states(ck["rng"])
        history, epoch, wall = ck["history"], ck["epoch"], ck.get("wall_s", 0.0)
    run.cut_metrics("supernet", "epoch", epoch)
    if path.exists() and epoch >= sc.supernet_epochs:
        if not (run.path / "supernet_model.pt").exists():      # killed between the two files
            save_network(net, run.path / "supernet_model.pt")
        run.wall["supernet"] = wall
        return ck
    if epoch:
        run.log(f"resuming the super-network at epoch {epoch + 1}")
    env.prepare(net, run)
    d_train, _ = ds.search_split(sc.train_portion)
    nb = n_batches(d_train, r.batch_size)
    run.log(f"super-network {r.backbone}: {count_parameters(net):,} parameters, {ds.name} D_train "
            f"{len(d_train)} images ({nb} batches), {sc.supernet_epochs} epochs")
    start, first = time.perf_counter(), epoch
    for epoch in range(epoch, sc.supernet_epochs):
        t0 = time.time()
        batches = d_train.batches(r.batch_size, shuffle=True, generator=data_gen, device=device)
        m = train_epoch(net, optimizer, batches, nb, lambda: sample_arch(net.backbone, path_rng), run,
                        r.log_every, "super-network", env.autocast, env.compile and epoch == first)
        m["epoch"] = epoch + 1
        check_epoch(net, m, "super-network", path, run)
        m = history_row(m)
        m["epoch_s"] = time.time() - t0
        wall += m["epoch_s"]
        history.append(m)
        run.log(f"super-network epoch {epoch + 1}/{sc.supernet_epochs}: loss {m['loss']:.4f} "
                f"acc {m['acc']:.4f} spikes {m['spikes']:.0f} {m['img_per_s']:.0f} img/s "
                f"{progress(start, epoch + 1, first, sc.supernet_epochs)}")
        run.metrics(stage="supernet", **m)
        ck = {"kind": "supernet", "model": net.state_dict(), "optimizer": optimizer.state_dict(),
              "epoch": epoch + 1, "history": history, "path_rng": path_rng.getstate(),
              "data_gen": data_gen.get_state(), "rng": rng_states(), "config": cfg.to_dict(),
              "num_classes": ds.num_classes, "input_shape": tuple(ds.input_shape), "spike_norm": m["spikes"],
              "spec": net.spec(), "wall_s": wall}
        run.save(ck, "supernet.pt")
    save_network(net, run.path / "supernet_model.pt")
    run.log(f"super-network saved: {run.path / 'supernet_model.pt'}")
    run.wall["supernet"] = wall
    return ck


def load_supernet(cfg: Config, ck: dict, ds, device, where: Path) -> SpikingNetwork:
    """The super-network of checkpoint `ck` (read from `where`), checked against this run's data."""
    if ck["num_classes"] != ds.num_classes or tuple(ck["input_shape"]) != tuple(ds.input_shape):
        raise AutoSNNError(f"the super-network checkpoint {where} has {ck['num_classes']} classes and input "
                           f"{tuple(ck['input_shape'])}; this run needs {ds.num_classes} and "
                           f"{tuple(ds.input_shape)}")
    net = build_net(cfg, ds.num_classes, ds.input_shape).to(device)
    load_state(net, ck["model"], where)
    return net


def search_stage(cfg: Config, ds, run: Run, env: Env, ck: dict, ck_path: Path) -> str:
    """Stage 2. Returns the best architecture string."""
    r, sc, device = cfg.run, cfg.search, env.device
    net = load_supernet(cfg, ck, ds, device, ck_path)
    spike_norm = sc.spike_norm or ck["spike_norm"]
    search = Search(net.backbone, sc, spike_norm, random.Random(sc.search_seed))
    path, wall = run.path / "search.pt", 0.0
    if path.exists():
        state = load_checkpoint(path, "search")
        search.load_state_dict(state["search"])
        set_rng_states(state["rng"])
        wall = state.get("wall_s", 0.0)
        if not search.done:
            run.log(f"resuming the search after {len(search.history)} evaluated architectures")
    run.cut_metrics("search", "generation", search.generation)
    d_train, d_val = ds.search_split(cfg.supernet.train_portion)
    env.prepare(net, run)

    def val_batches():
        return d_val.batches(r.eval_batch_size, device=device)

    def recalib_batches():   # the same batches for every architecture
        g = torch.Generator().manual_seed(sc.search_seed)
        return itertools.islice(d_train.batches(r.batch_size, shuffle=True, generator=g, device=device),
                                sc.bn_recalib)

    def evaluate(archs):
        with env.autocast():
            return evaluate_archs(net, archs, val_batches, recalib_batches if sc.bn_recalib else None)

    last = [time.time()]

    def checkpoint(s: Search):
        nonlocal wall
        gen = s.latest()
        took = time.time() - last[0]
        last[0], wall = time.time(), wall + took
        run.metrics(stage="search", generation=s.generation, evaluated=len(gen), gen_s=took,
                    best_fitness=s.best()["fitness"], best_arch=s.best()["arch"],
                    mean_acc=sum(h["acc"] for h in gen) / max(len(gen), 1))
        write_history(run.path, s, run.write_text)
        run.save({"kind": "search", "search": s.state_dict(), "rng": rng_states(), "config": cfg.to_dict(),
                  "wall_s": wall}, "search.pt")

    if not search.done:
        run.log(f"search: {sc.search_algo} on D_val ({len(d_val)} images), lambda {sc.lam}, "
                f"spike_norm {spike_norm:.0f}, {sc.iterations} x {sc.pool}")
        run_search(search, dist.split_pool(evaluate), checkpoint, run.log, num_classes=ds.num_classes, val_images=len(d_val))
    best = search.best()
    run.write_text(run.path / "best_arch.txt", best["arch"] + "\n")
    run.wall["search"] = wall
    if dist.is_main():
        plot_run(run.path, run.log)
    run.log(f"best architecture: {best['arch']} (val acc {best['acc']:.4f}, spikes {best['spikes']:.0f}, "
            f"fitness {best['fitness']:.4f})")
    return best["arch"]


def retrain_stage(cfg: Config, ds, run: Run, env: Env, arch: str, supernet_ck: dict | None,
                  supernet_path: Path | None = None) -> dict:
    """Stage 3: the child network (or a hand-crafted baseline, --model) from scratch on the full
    training set; the final epoch's test accuracy is the result. Returns the results."""
    r, rc, device = cfg.run, cfg.retrain, env.device
    torch.manual_seed(r.seed)          # the same initial weights whichever stages ran before
    if rc.model:
        net = HandcraftedSNN(rc.model, ds.num_classes, r.T, ds.input_shape, rc.model_width, r.neuron,
                             r.tau0, r.v_th).to(device)
        label = rc.model
    else:
        net = build_net(cfg, ds.num_classes, ds.input_shape, resolve_arch(arch, r.backbone)).to(device)
        label = f"{net.arch} on {r.backbone}"
        if rc.inherit:
            sup = load_supernet(cfg, supernet_ck, ds, "cpu", supernet_path)
            net.load_state_dict(sup.path_state_dict(net.arch))
    if rc.optimizer == "adam":
        optimizer = torch.optim.Adam(net.parameters(), lr=rc.retrain_lr)
    else:
        optimizer = torch.optim.SGD(net.parameters(), lr=rc.retrain_lr, momentum=0.9, weight_decay=3e-4)
    milestones = [rc.retrain_epochs // 2, rc.retrain_epochs * 3 // 4] if rc.optimizer == "sgd" else []
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, 0.1)
    data_gen, history, epoch, wall = torch.Generator().manual_seed(r.seed + 1), [], 0, 0.0
    path = run.path / "child.pt"
    if path.exists():
        ck = load_checkpoint(path, "retrain")
        for obj, key in ((net, "model"), (optimizer, "optimizer"), (scheduler, "scheduler")):
            load_state(obj, ck[key], path)
        data_gen.set_state(ck["data_gen"])
        set_rng_states(ck["rng"])
        history, epoch, wall = ck["history"], ck["epoch"], ck.get("wall_s", 0.0)
        if epoch < rc.retrain_epochs:
            run.log(f"resuming retraining at epoch {epoch + 1}")
    run.cut_metrics("retrain", "epoch", epoch)
    env.prepare(net, run)
    train, test = ds.split("train"), ds.split("test")
    nb = n_batches(train, r.batch_size)

    def test_eval():
        with env.autocast():
            return evaluate_model(net, test.batches(r.eval_batch_size, device=device))

    run.log(f"retrain {label}: {count_parameters(net):,} parameters, {len(train)} training ({nb} batches) / "
            f"{len(test)} test images, {rc.retrain_epochs} epochs")
    final, start, first = None, time.perf_counter(), epoch
    for epoch in range(epoch, rc.retrain_epochs):
        t0 = time.time()
        batches = train.batches(r.batch_size, shuffle=True, generator=data_gen, device=device)
        m = train_epoch(net, optimizer, batches, nb, lambda: None, run, r.log_every, "retrain",
                        env.autocast, env.compile and epoch == first)
        scheduler.step()
        m["epoch"] = epoch + 1
        check_epoch(net, m, "retraining", path, run)
        m = history_row(m)
        if (epoch + 1) % rc.eval_every == 0 or epoch + 1 == rc.retrain_epochs:
            final = test_eval()
            warn_silent(run, final["per_layer"], "on the test set")
            m.update(test_acc=final["acc"], test_spikes=final["spikes"], test_neuron_spikes=final["neuron_spikes"])
        m["epoch_s"] = time.time() - t0
        wall += m["epoch_s"]
        history.append(m)
        run.log(f"retrain epoch {epoch + 1}/{rc.retrain_epochs}: loss {m['loss']:.4f} acc {m['acc']:.4f} "
                f"spikes {m['spikes']:.0f} {m['img_per_s']:.0f} img/s"
                + (f" | test acc {m['test_acc']:.4f} spikes {m['test_spikes']:.0f}" if "test_acc" in m else "")
                + f" | {progress(start, epoch + 1, first, rc.retrain_epochs)}")
        run.metrics(stage="retrain", **m)
        run.save({"kind": "retrain", "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                  "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "history": history,
                  "data_gen": data_gen.get_state(), "rng": rng_states(), "config": cfg.to_dict(),
                  "spec": net.spec(), "wall_s": wall}, "child.pt")
    if final is None:                  # resumed after the last epoch's checkpoint
        final = test_eval()
    save_network(net, run.path / "model.pt")
    run.wall["retrain"] = wall
    silent = [n for n, c in final["per_layer"].items() if c == 0]
    results = {"model": rc.model or "autosnn", "arch": None if rc.model else str(net.arch),
               "backbone": None if rc.model else r.backbone, "dataset": ds.name, "T": r.T,
               "epochs": rc.retrain_epochs, "test_acc": final["acc"], "spikes": final["spikes"],
               "neuron_spikes": final["neuron_spikes"], "params": count_parameters(net),
               "per_layer_spikes": final["per_layer"], "silent_layers": silent, "energy": final.get("energy"),
               "best_test_acc_over_epochs": max(h["test_acc"] for h in history if "test_acc" in h),
               "model_file": "model.pt",
               "note": "test_acc is the final epoch's; best_test_acc_over_epochs is selected on the test "
                       "set and given only for comparison with the original code's reporting",
               "environment": run.env, "started": run.started, "finished": now(), "wall_s": dict(run.wall)}
    run.write_text(run.path / "results.json", json.dumps(results, indent=1))
    run.log(f"final test accuracy {final['acc']:.4f}, spikes per image {final['spikes']:.0f} "
            f"(neuron outputs only {final['neuron_spikes']:.0f}), {results['params']:,} parameters"
            + (f", energy estimate {final['energy']['energy_uj']:.2f} uJ per image" if final.get("energy") else "")
            + (f"; silent layers: {', '.join(silent)}" if silent else ""))
    if dist.is_main():
        plot_run(run.path, run.log)
    return results


def study_stage(cfg: Config, ds, run: Run, env: Env) -> list[dict]:
    """Design-choice study (paper sec. 1): SNN_1 (no GAP, max-pool), SNN_2 (GAP), SNN_3 (stride-2
    blocks) and SNN_4 (avg-pool) with one fixed block everywhere, the retraining schedule and the
    same seed. Each variant trains in study/<backbone>/ (resumable); the table goes to study.md/.csv."""
    C, rows, silent = get_backbone(cfg.run.backbone).C, [], {}
    for variant in range(1, 5):
        backbone = f"SNN_{variant}_{C}"
        sub = Config.from_flat({**cfg.flat(), "backbone": backbone, "model": "",
                                "arch": "-".join([cfg.retrain.study_block] * len(get_backbone(backbone).searched))})
        sub_run = Run(run.path / "study" / backbone, run.env, run.started)
        if dist.is_main():
            sub_run.path.mkdir(parents=True, exist_ok=True)
            sub_run.clean()
        sub_run.warned = run.warned
        res = retrain_stage(sub, ds, sub_run, env, sub.retrain.arch, None)
        e = res["energy"] or {}
        rows.append({"backbone": backbone, "design": DESIGNS[variant], "test_acc": res["test_acc"],
                     "spikes": res["spikes"], "neuron_spikes": res["neuron_spikes"], "params": res["params"],
                     "energy_uj": e.get("energy_uj"), "ann_energy_uj": e.get("ann_energy_uj")})
        silent[backbone] = res["silent_layers"]
    keys = list(rows[0])
    run.write_text(run.path / "study.csv", csv_text(keys, rows))
    fmt = {"test_acc": "{:.4f}", "spikes": "{:.0f}", "neuron_spikes": "{:.0f}", "params": "{:,}",
           "energy_uj": "{:.2f}", "ann_energy_uj": "{:.2f}"}
    md = [f"Design-choice study: {cfg.run.dataset}, block {cfg.retrain.study_block} everywhere, T={cfg.run.T}, "
          f"{cfg.retrain.retrain_epochs} epochs, seed {cfg.run.seed}. Energy is an estimate "
          f"({E_AC} pJ/AC, {E_MAC} pJ/MAC).", "",
          "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    md += ["| " + " | ".join(fmt.get(k, "{}").format(x[k]) if x[k] is not None else "-" for k in keys) + " |"
           for x in rows]
    md += ["", "Silent layers (no spike on the test set; every layer after one gets no input, see the "
               "README's 'Silent layers'):"]
    md += [f"- {b}: {', '.join(names) or 'none'}" for b, names in silent.items()]
    run.write_text(run.path / "study.md", "\n".join(md) + "\n")
    run.log("\n".join(md))
    return rows


DESIGNS = {1: "no GAP; max-pool down-sampling", 2: "spiking GAP before the classifier",
           3: "stride-2 searched blocks", 4: "avg-pool + neuron down-sampling"}


# ---------------------------------------------------------------------------------------------
# Command line: parse, validate everything, then create the folder and run
# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="train.py", formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
        description=__doc__.split("\n\n")[1],
        epilog=f"presets (defaults are the paper's values; --preset {DEFAULT_PRESET} is the default):\n" +
               "\n".join(f"  {k}: {v or 'the paper defaults'}" for k, v in PRESETS.items()))
    p.add_argument("--preset", choices=list(PRESETS), default=argparse.SUPPRESS,
                   help=f"set of defaults (default: {DEFAULT_PRESET})")
    p.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS,
                   help="= --preset dry-run: tiny synthetic schedule, whole pipeline in seconds")
    p.add_argument("--resume", metavar="RUN_DIR", default=argparse.SUPPRESS,
                   help="continue the run in RUN_DIR with its saved configuration")
    for title, kind in SECTIONS:
        g = p.add_argument_group(f"{title} options")
        for f in fields(kind):
            short = PRESETS[DEFAULT_PRESET].get(f.name)
            default = f" (default {f.default!r}" + (f"; {DEFAULT_PRESET} preset {short!r}" if short is not None
                                                    else "") + ")" if f.default is not None else ""
            help_text = f"{f.metadata.get('help', '')}{default}".replace("%", "%%")   # argparse formats help
            if isinstance(f.default, bool) or f.default is None:
                g.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
            else:
                g.add_argument(flag(f.name), dest=f.name, type=type(f.default), default=argparse.SUPPRESS,
                               help=help_text)
    return p


def make_config(given: dict) -> tuple[Config, str]:
    """Dataclass defaults <- preset <- what --neuron ann implies <- options given on the command line.
    Returns the configuration (validated, never changed by validation) and the preset's name."""
    if "dry_run" in given and "preset" in given:
        raise AutoSNNError("--dry-run is --preset dry-run: give one of --dry-run and --preset")
    preset = "dry-run" if given.pop("dry_run", False) else given.pop("preset", DEFAULT_PRESET)
    values = {**Config.from_flat({}).flat(), **PRESETS[preset], **given}
    if values["neuron"] == "ann":
        for k, v in ANN_FIXED.items():
            if k in given and given[k] != v:
                raise AutoSNNError(f"--neuron ann runs one step without spikes: it needs {flag(k)} {v} "
                                   f"(got {given[k]})")
            values[k] = v
    cfg = Config.from_flat(values)
    check_config(cfg)
    return cfg, preset


def _user(fn, *args):
    """Run a library validator on user input: its ValueError is the user's mistake (one line)."""
    try:
        return fn(*args)
    except AutoSNNError:
        raise
    except ValueError as e:
        raise AutoSNNError(str(e)) from None


def check_config(cfg: Config) -> None:
    """Every option, alone and together. Changes nothing."""
    r, sn, se, rc = cfg.run, cfg.supernet, cfg.search, cfg.retrain
    for name, value in cfg.flat().items():
        if isinstance(value, float) and not math.isfinite(value):
            raise AutoSNNError(f"{flag(name)} must be a finite number (got {value})")

    def need(ok: bool, name: str, what: str):
        if not ok:
            raise AutoSNNError(f"{flag(name)} must be {what} (got {value_of(cfg, name)!r})")

    if r.stage not in STAGES:
        raise AutoSNNError(f"unknown stage {r.stage!r}; valid: {', '.join(STAGES)}")
    if r.dataset not in DATASETS:
        raise AutoSNNError(f"unknown dataset {r.dataset!r}; valid: {', '.join(DATASETS)}")
    _user(get_backbone, r.backbone)
    if r.neuron not in NEURONS:
        raise AutoSNNError(f"unknown neuron {r.neuron!r}; valid: {', '.join(NEURONS)}")
    if r.neuron == "ann" and (r.T, se.lam) != (ANN_FIXED["T"], ANN_FIXED["lam"]):
        raise AutoSNNError(f"--neuron ann runs one step without spikes: it needs --T 1 and --lam 0 "
                           f"(got --T {r.T}, --lam {se.lam})")
    for name in ("T", "batch_size", "supernet_epochs", "retrain_epochs", "eval_every"):
        need(value_of(cfg, name) >= 1, name, "an integer >= 1")
    for name in ("eval_batch_size", "threads", "log_every", "cutout", "model_width", "n_train", "n_test"):
        need(value_of(cfg, name) >= 0, name, "an integer >= 0")
    if r.dataset not in ("synthetic", "synthetic-dvs"):
        for name in ("n_train", "n_test"):
            need(value_of(cfg, name) == 0, name, "0 (it sizes synthetic data only)")
    elif r.n_train and 0 < sn.train_portion < 1:
        k = int(r.n_train * sn.train_portion + 1e-9)
        if not 0 < k < r.n_train:
            raise AutoSNNError(f"--n-train {r.n_train} with --train-portion {sn.train_portion} leaves an empty "
                               f"D_train or D_val; give more images")
    need(r.split_by in ("number", "time"), "split_by", "'number' or 'time'")
    if r.neuron in ("plif", "lif"):
        need(r.tau0 > 1, "tau0", "> 1 (the leak is 1/tau)")
    need(r.v_th > 0, "v_th", "> 0")
    need(sn.supernet_lr > 0, "supernet_lr", "> 0")
    need(rc.retrain_lr > 0, "retrain_lr", "> 0")
    need(0 < sn.train_portion < 1, "train_portion", "in (0, 1)")
    need(se.lam <= 0, "lam", "<= 0")
    need(se.spike_norm >= 0, "spike_norm", ">= 0 (0: the super-network's last-epoch mean)")
    need(r.amp in AMP, "amp", " or ".join(AMP))
    _user(se.check)
    if r.stage == "all" and rc.arch:
        raise AutoSNNError("--arch is for --stage retrain; --stage all retrains the architecture it finds")
    if rc.optimizer not in ("adam", "sgd"):
        raise AutoSNNError(f"unknown optimizer {rc.optimizer!r}; valid: adam, sgd")
    if rc.arch:
        _user(resolve_arch, rc.arch, r.backbone)
    if rc.model and rc.model not in BASELINES:
        raise AutoSNNError(f"unknown model {rc.model!r}; valid: {', '.join(BASELINES)}")
    if rc.model and r.stage != "retrain":
        raise AutoSNNError("--model is for --stage retrain")
    if rc.model and rc.arch:
        raise AutoSNNError("give either --model (a baseline) or --arch (an AutoSNN architecture), not both")
    if rc.model_width and not rc.model:
        raise AutoSNNError("--model-width is for --model (a hand-crafted baseline)")
    _user(check_candidate, rc.study_block)
    root = Path(r.data_root)
    if root.exists() and not root.is_dir():
        raise AutoSNNError(f"--data-root {root} is a file, not a folder")
    resolve_device(r.device)


def value_of(cfg: Config, name: str):
    return cfg.flat()[name]


def resolve_device(text: str) -> torch.device:
    """'' -> cuda when available, else cpu. Unknown names and absent GPUs fail here, before any work."""
    if not text:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise AutoSNNError(f"unknown --device {text!r}; use cpu, cuda or cuda:<index>") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise AutoSNNError(f"--device {text}: only cpu and cuda are supported")
    if not torch.cuda.is_available():
        raise AutoSNNError(f"--device {text} asked for, but CUDA is not available here; use --device cpu")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise AutoSNNError(f"--device {text}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return dev


def check_out(out: str, name: str) -> Path:
    """The run folder out/name: name is one plain folder name, out a writable folder (or creatable)."""
    if not name or name in (".", "..") or name.startswith(".") or "/" in name or os.sep in name:
        raise AutoSNNError(f"--name {name!r} must be a plain folder name inside --out (no '/', not "
                           f"starting with '.')")
    base = Path(out)
    probe = base
    while not probe.exists():
        if probe.is_symlink() or probe.parent == probe:
            raise AutoSNNError(f"--out {out}: cannot be created")
        probe = probe.parent
    if not probe.is_dir():
        raise AutoSNNError(f"--out {out}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise AutoSNNError(f"--out {out}: {probe} is not writable")
    return base / name


LEGACY_NAMES = {"supernet": "supernet_path", "search": "search_algo"}


def read_config(run_dir: Path) -> dict:
    """The saved configuration of a run folder, as a flat dict; errors name the file."""
    path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise AutoSNNError(f"{run_dir} is not a run folder (no such folder)")
    if not path.is_file():
        raise AutoSNNError(f"{run_dir} is not a run folder (no config.json in it)")
    try:
        saved = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise AutoSNNError(f"{path} is not valid JSON ({e}); it is damaged") from None
    if not isinstance(saved, dict) or not all(isinstance(saved.get(k), dict) for k, _ in SECTIONS):
        raise AutoSNNError(f"{path} is not a run configuration (expected the sections "
                           f"{', '.join(k for k, _ in SECTIONS)})")
    flat = {k: v for key, _ in SECTIONS for k, v in saved[key].items()}
    for was, now_ in LEGACY_NAMES.items():       # options saved by an older version under another name
        if was in flat and was not in FIELDS and now_ in FIELDS and now_ not in flat:
            flat[now_] = flat.pop(was)
    bad = sorted(set(flat) - set(FIELDS))
    if bad:
        raise AutoSNNError(f"{path} has unknown options: {', '.join(bad)}")
    for k, v in flat.items():
        want = type(FIELDS[k].default)
        ok = v is None if FIELDS[k].default is None else (
            isinstance(v, (int, float)) and not isinstance(v, bool) if want is float else isinstance(v, want))
        if not ok and not (FIELDS[k].default is None and isinstance(v, bool)):
            raise AutoSNNError(f"{path}: option {k} = {v!r} has the wrong type")
    return flat


def prepare(args: dict) -> tuple[Config, Path, dict | None, str]:
    """Resolve and validate the configuration and the run folder; load and check a given
    super-network checkpoint. Creates nothing. Returns (cfg, run_dir, supernet checkpoint, preset)."""
    if "resume" in args:
        run_dir = Path(args.pop("resume"))
        saved = read_config(run_dir)
        extra = set(args) - {"device", "threads", "compile", "log_every"}
        if extra:
            raise AutoSNNError(f"--resume takes its options from {run_dir}/config.json; drop "
                               + ", ".join(flag(k) if k in FIELDS else "--" + k.replace("_", "-")
                                           for k in sorted(extra)))
        cfg = Config.from_flat({**saved, **args})
        check_config(cfg)
        return cfg, run_dir, None, ""
    supernet_ck = None
    if args.get("supernet_path"):
        supernet_ck = load_checkpoint(Path(args["supernet_path"]), "supernet")
        saved = {k: v for part in supernet_ck["config"].values() for k, v in part.items()}
        for k in MODEL_KEYS:
            if k in args and args[k] != saved[k]:
                raise AutoSNNError(f"{flag(k)} {args[k]} does not match the super-network checkpoint "
                                   f"{args['supernet_path']} ({k} = {saved[k]})")
            args[k] = saved[k]
    cfg, preset = make_config(args)
    r = cfg.run
    if r.stage == "search" and supernet_ck is None:
        raise AutoSNNError("--stage search needs --supernet runs/<name>/supernet.pt")
    if r.stage == "retrain" and not (cfg.retrain.arch or cfg.retrain.model):
        raise AutoSNNError("--stage retrain needs --arch (an architecture string or a name such as AutoSNN) "
                           "or --model (a hand-crafted baseline)")
    if cfg.retrain.inherit and (r.stage != "retrain" or supernet_ck is None):
        raise AutoSNNError("--inherit is for --stage retrain and needs --supernet runs/<name>/supernet.pt")
    run_dir = check_out(r.out, r.name or f"{r.stage}-{r.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    if run_dir.exists() or run_dir.is_symlink():
        raise AutoSNNError(f"{run_dir} already exists; continue it with --resume {run_dir} or choose --name")
    return cfg, run_dir, supernet_ck, preset


def set_determinism(deterministic: bool) -> None:
    """--deterministic: the same bits on every CUDA run (same card and versions), at a speed cost.
    Otherwise TF32 convolutions/matmuls are allowed (Ampere and later), which moves threshold
    crossings slightly. CPU results are reproducible either way."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # read when cuBLAS starts
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = False if deterministic else torch.backends.cudnn.benchmark
    torch.backends.cuda.matmul.allow_tf32 = not deterministic
    torch.backends.cudnn.allow_tf32 = not deterministic


def load_data(cfg: Config):
    """The dataset, and the checks that need it (cutout vs image size, the D_train/D_val split)."""
    r = cfg.run
    try:
        ds = load_dataset(r.dataset, r.data_root, r.download, r.T, r.split_by, r.n_train or None,
                          r.n_test or None, cutout=r.cutout)
    except (FileNotFoundError, ModuleNotFoundError, NotADirectoryError) as e:   # missing files or extras
        raise AutoSNNError(str(e)) from None
    side = min(ds.input_shape[-2:])
    if r.cutout > side:
        raise AutoSNNError(f"--cutout {r.cutout} is larger than the {side}x{side} images: it would blank them")
    _user(ds.search_split, cfg.supernet.train_portion)
    _user(check_networks, cfg, ds)
    return ds


def check_networks(cfg: Config, ds) -> None:
    """Build (on the CPU, then drop) every network the run will train, so that a shape or option
    the network rejects fails now, not after the run folder exists."""
    r, rc = cfg.run, cfg.retrain
    if rc.model:
        HandcraftedSNN(rc.model, ds.num_classes, r.T, ds.input_shape, rc.model_width, r.neuron, r.tau0, r.v_th)
    elif r.stage == "study":
        C = get_backbone(r.backbone).C
        for v in range(1, 5):
            bb = get_backbone(f"SNN_{v}_{C}")
            SpikingNetwork(bb, ds.num_classes, [rc.study_block] * len(bb.searched), r.T, ds.input_shape,
                           r.neuron, r.tau0, r.v_th)
    elif r.stage == "retrain":
        build_net(cfg, ds.num_classes, ds.input_shape, resolve_arch(rc.arch, r.backbone))
    elif r.stage in ("all", "supernet"):
        build_net(cfg, ds.num_classes, ds.input_shape)


def execute(cfg: Config, run_dir: Path, supernet_ck: dict | None, preset: str, state: dict):
    """Everything that may fail on the user's input runs before the run folder is created;
    state["created"] tells main whether there is something to resume."""
    r = cfg.run
    device = resolve_device(r.device)
    if r.threads:
        torch.set_num_threads(r.threads)
    if device.type == "cpu":
        tune_cpu_allocator()
    set_determinism(r.deterministic)
    if not r.eval_batch_size:   # on a CPU results do not depend on it (eval-mode BN); on a GPU the
        r.eval_batch_size = 768 if device.type == "cuda" else 256    # algorithm choice may differ
    ds = load_data(cfg)
    sup_path = Path(r.supernet_path) if r.supernet_path else None
    if supernet_ck is not None:          # its shapes fit this run's data and backbone
        load_supernet(cfg, supernet_ck, ds, "cpu", sup_path)
    env_info = environment(device)
    new = state["new"]
    if new and dist.is_main():      # everything checked: only now create the folder, with its config, in one step
        doc = {**cfg.to_dict(), "preset": preset, "environment": env_info, "started": now()}
        create_folder(run_dir, {"config.json": json.dumps(doc, indent=1)})
    state["created"] = True
    run = Run(run_dir, env_info)
    if dist.is_main():
        run.clean()
    random.seed(r.seed)    # the one seeding call; stages restore saved states when they resume
    torch.manual_seed(r.seed)
    env = Env(cfg, device)
    run.log(f"run folder {run_dir} ({'new' if new else 'resumed'}), device {device} ({env_info['device_name']}), "
            f"{ds.name}: {ds.num_classes} classes, input {tuple(ds.input_shape)}"
            + (", bf16 autocast" if env.amp else "") + (", deterministic" if r.deterministic else ""))
    if r.stage == "study":
        study_stage(cfg, ds, run, env)
        return finish(run, None)
    if r.stage in ("all", "supernet"):
        supernet_ck, sup_path = train_supernet(cfg, ds, run, env), run_dir / "supernet.pt"
    if r.stage == "supernet":
        if dist.is_main():
            plot_run(run.path, run.log)
        return finish(run, "supernet_model.pt")
    arch = cfg.retrain.arch
    if r.stage in ("all", "search"):
        if supernet_ck is None:            # a resumed search-only run
            supernet_ck = load_checkpoint(sup_path, "supernet")
        arch = search_stage(cfg, ds, run, env, supernet_ck, sup_path)
    if r.stage == "search":
        return finish(run, None)
    if cfg.retrain.inherit and supernet_ck is None:
        supernet_ck = load_checkpoint(sup_path, "supernet")
    retrain_stage(cfg, ds, run, env, arch, supernet_ck, sup_path)
    return finish(run, "model.pt")


def finish(run: Run, model_file: str | None) -> None:
    walls = ", ".join(f"{k} {v:.0f}s" for k, v in run.wall.items())
    run.log(f"done: run folder {run.path}" + (f" (wall time {walls})" if walls else ""))
    if model_file and (run.path / model_file).is_file():
        extra = ", supernet=True" if model_file.startswith("supernet") else ""
        run.log(f'load it: from autosnn import SpikingNetwork; net = SpikingNetwork.load("{run.path}"{extra})')


def main(argv=None) -> int:
    state = {"created": False, "new": True}
    run_dir = None
    try:
        given = vars(build_parser().parse_args(argv))
        state["new"] = "resume" not in given
        cfg, run_dir, supernet_ck, preset = prepare(given)
        state["created"] = not state["new"]
        dist.setup(cfg.run.device, cfg.run.batch_size, run_dir)   # under torchrun: join the other ranks
        execute(cfg, run_dir, supernet_ck, preset, state)
    except AutoSNNError as e:                  # a user's mistake: one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if state["created"]:
            print(f"\ninterrupted; the last checkpoint is intact: python train.py --resume {run_dir}",
                  file=sys.stderr)
        else:
            print("\ninterrupted before the run folder was created; nothing was saved", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
