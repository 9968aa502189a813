"""The configuration of a run: one dataclass of typed defaults per stage (defaults = the paper's values),
the presets (other default sets), the command line generated from them, and the one validation pass.

    cfg, preset = make_config(vars(build_parser(doc).parse_args(argv)))    # validated, nothing written

Every rule that can be checked without the data is checked here, before anything is written: each
option alone and together, the seeds' range, the run folder's name against the filesystem's name
limit (temporary suffix included), whether --out can take a new folder, the device. The checks that
need the data (image size, the networks' shapes, a memory estimate) are in train.py's load_data.
Library validators raise ValueError; `user_error` turns those into the one-line AutoSNNError.
The SearchConfig section lives with the search it configures (evolve.py).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from baselines import BASELINES
from data import DATASETS
from formats.npz import path_of as npz_path
from evolve import SearchConfig
from files import AutoSNNError, Parser, check_name, check_writable
from neurons import NEURONS
from search_space import check_candidate, get_backbone, resolve_arch


STAGES = ("all", "supernet", "search", "retrain", "study")
AMP = ("fp32", "bf16")
SYNTHETIC = ("synthetic", "synthetic-dvs")
SEED_MAX = 2**63 - 2       # torch.Generator.manual_seed takes < 2**64; retraining draws from seed + 1


def opt(default, help, **meta):
    """A config field with its help text. meta: model=True (defines the super-network and its data),
    flag="--x" (command-line name when it differs from the field's)."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class RunConfig:
    """What to run, on which data and model, on which device. Defaults are the paper's."""
    stage: str = opt("all", f"stage to run: {', '.join(STAGES)}")
    dataset: str = opt("cifar10", f"one of {', '.join(DATASETS)}, or npz:PATH (your own; docs/data.md)",
                       model=True)
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
    cuda_graphs: bool = opt(False, "replay the retrained network's training and test steps as CUDA graphs "
                                   "(bit-identical to eager; the super-network and the CPU run eager)")
    out: str = opt("runs", "parent folder of run folders")
    name: str = opt("", "run folder name, inside --out ('': <stage>-<dataset>-<time>)")
    supernet_path: str = opt("", "super-network checkpoint (supernet.pt) for --stage search or --inherit",
                             flag="--supernet")
    log_every: int = opt(100, "batches between progress lines (0 = per epoch only)")
    activation_checkpointing: bool = opt(False, "recompute block activations in backward: less training "
                                                "memory for large T, ~1/3 more compute, same results on a CPU")


@dataclass
class SupernetConfig:
    """Super-network training (stage 1)."""
    supernet_epochs: int = opt(600, "super-network training epochs")
    supernet_lr: float = opt(1e-3, "Adam learning rate")
    train_portion: float = opt(0.8, "fraction of the training set used as D_train (rest: D_val)", model=True)
    supernet_schedule: str = opt("constant", "learning rate: constant (the paper's) or cosine (annealed to 0 "
                                             "over --supernet-epochs)")
    path_sampling: str = opt("uniform", "uniform (the paper's: each position drawn on its own) or fair: each "
                                        "block of 5 consecutive batches uses every candidate at every position "
                                        "once (FairNAS's sampling, without its gradient accumulation)")
    watch_every: int = opt(1, "epochs between evaluations of --watch-archs fixed paths on D_val, logged with "
                              "their spread and ranking change (0: off; the last epoch is always evaluated)")
    watch_archs: int = opt(4, "fixed random paths (seeded by --seed) the super-network is watched on")
    watch_images: int = opt(256, "D_val images they are evaluated on (the first ones)")
    watch_recalib: int = opt(2, "training batches that re-estimate each path's BN statistics first (0: none)")


@dataclass
class RetrainConfig:
    """Retraining the found architecture (stage 3)."""
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
        return cls(**{key: kind(**{f.name: values[f.name] for f in fields(kind) if f.name in values})
                      for key, kind in SECTIONS})

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
    # small enough for a CPU in about a minute, large enough for the super-network to learn the synthetic
    # bars (about 50% on D_val), so that the search ranks real differences. Its BN running statistics are
    # too young after 100 steps to evaluate with: each architecture's are re-estimated (bn_recalib).
    "dry-run": {"dataset": "synthetic", "n_train": 1000, "n_test": 250, "backbone": "AutoSNN_8", "T": 4,
                "batch_size": 32, "eval_batch_size": 250, "supernet_epochs": 4, "retrain_epochs": 6,
                "supernet_lr": 3e-3, "retrain_lr": 3e-3, "iterations": 3, "pool": 6, "topk": 3, "mutations": 3,
                "crossovers": 2, "bn_recalib": 2, "log_every": 0, "model_width": 8},
}
DEFAULT_PRESET = "short"
EVENT_FILES = ("cifar10dvs", "dvs128gesture")      # recordings made into frames: --split-by applies

# Options that do not apply: one rule for all of them.
#   APPLIES: options that shape the network or its data, each only under another option's choice. A value
#     other than the default while that choice is not made is refused: the run would build something
#     other than what the command line says (--tau0 for a neuron without a leak).
#   READ_BY: settings of one part of the pipeline (a stage, the evolution's operators, the AutoSNN backbone
#     a --model run does not build). A value other than the default given on the command line while that
#     part does not run is noted once in the run's log, not refused: one command line may serve every
#     stage (--stage supernet, then --stage search ..., then --stage retrain --model ...).
# A preset's value for an option that does not apply is left out either way, so that it never surfaces in
# an error or a note about an option the user did not type (--dry-run --dataset cifar10).
APPLIES = {
    "n_train": (lambda v: v["dataset"] in SYNTHETIC, "--n-train sizes synthetic data only (--dataset "
                                                     "synthetic or synthetic-dvs)"),
    "n_test": (lambda v: v["dataset"] in SYNTHETIC, "--n-test sizes synthetic data only (--dataset synthetic "
                                                    "or synthetic-dvs)"),
    "split_by": (lambda v: v["dataset"] in EVENT_FILES, f"--split-by cuts event recordings into frames "
                                                        f"(--dataset {' or '.join(EVENT_FILES)})"),
    "tau0": (lambda v: v["neuron"] in ("plif", "lif"), "--tau0 is the leak of --neuron plif or lif"),
    "v_th": (lambda v: v["neuron"] != "ann", "--v-th is the threshold of spiking neurons (not --neuron ann)"),
    "model_width": (lambda v: bool(v["model"]), "--model-width is for --model (a hand-crafted baseline)"),
}


def read_by(stages: tuple, algorithms: tuple | None = None):
    """(applies, why) of a setting of the stages `stages` (and of the search algorithms `algorithms`)."""
    why = f"read by --stage {' or '.join(stages)}" + (f" with --search-algo {' or '.join(algorithms)}"
                                                       if algorithms else "")
    return (lambda v: v["stage"] in stages and (algorithms is None or v["search_algo"] in algorithms)), why


SEARCH_STAGES = ("all", "search")
READ_BY = {
    **{k: read_by(("all", "supernet")) for k in ("supernet_epochs", "supernet_lr", "supernet_schedule",
                                                 "path_sampling", "watch_every", "watch_archs", "watch_images",
                                                 "watch_recalib")},
    "train_portion": read_by(("all", "supernet", "search")),
    **{f.name: read_by(SEARCH_STAGES) for f in fields(SearchConfig)},
    **{k: read_by(("all", "retrain", "study")) for k in ("retrain_epochs", "retrain_lr", "optimizer", "eval_every")},
    "study_block": read_by(("study",)),
    "activation_checkpointing": read_by(("all", "supernet", "retrain", "study")),
    **{k: read_by(SEARCH_STAGES, ("evolution", "pareto")) for k in ("topk", "mutations", "crossovers", "mutation_prob")},
    "objectives": read_by(SEARCH_STAGES, ("pareto",)),
    "backbone": (lambda v: not v["model"], "a --model baseline has its own layout (its width: --model-width)"),
}
# What --neuron ann implies: one step, and no spikes, so fitness = accuracy.
ANN_FIXED = {"T": 1, "lam": 0.0}

# Options that define the super-network and its data: a search stage takes them from the checkpoint.
MODEL_KEYS = tuple(name for name, f in FIELDS.items() if f.metadata.get("model"))


def flag(name: str) -> str:
    return FIELDS[name].metadata.get("flag") or "--" + name.replace("_", "-")


def build_parser(description: str = "") -> argparse.ArgumentParser:
    p = Parser(
        prog="train.py", formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
        description=description,
        epilog=f"presets (defaults are the paper's values; --preset {DEFAULT_PRESET} is the default):\n" +
               "\n".join(f"  {k}: {v or 'the paper defaults'}" for k, v in PRESETS.items()))
    p.add_argument("--preset", choices=list(PRESETS), default=argparse.SUPPRESS,
                   help=f"set of defaults (default: {DEFAULT_PRESET})")
    p.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS,
                   help="= --preset dry-run: tiny schedule (synthetic data unless --dataset), whole pipeline "
                        "in about a minute")
    p.add_argument("--resume", metavar="RUN_DIR", default=argparse.SUPPRESS,
                   help="continue the run in RUN_DIR with its saved configuration")
    for title, kind in SECTIONS:
        g = p.add_argument_group(f"{title} options")
        for f in fields(kind):
            short = PRESETS[DEFAULT_PRESET].get(f.name)      # the default preset's value is the default
            default = ("" if f.default is None else f" (default {f.default!r})" if short is None
                       else f" (default {short!r}; --preset paper: {f.default!r})")
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
    defaults = Config.from_flat({}).flat()
    values = {**defaults, **PRESETS[preset], **given}
    for k in set(APPLIES) | set(READ_BY):
        if k not in given and not applies(k, values):
            values[k] = defaults[k]
    if values["neuron"] == "ann":
        for k, v in ANN_FIXED.items():
            if k in given and given[k] != v:
                raise AutoSNNError(f"--neuron ann runs one step without spikes: it needs {flag(k)} {v} "
                                   f"(got {given[k]})")
            values[k] = v
    cfg = Config.from_flat(values)
    check_config(cfg)
    return cfg, preset


def applies(name: str, values: dict) -> bool:
    """Whether option `name` takes part in the run `values` ({option: value}) describes."""
    rule = APPLIES.get(name) or READ_BY.get(name)
    return rule is None or rule[0](values)


def unused_options(cfg: Config, given) -> list[str]:
    """Notes for the options typed (`given`: their names) with a value other than the default that the run
    does not read (READ_BY): logged once each, nothing refused."""
    values, defaults = cfg.flat(), Config.from_flat({}).flat()
    return [f"{flag(k)} {values[k]} is not used by this run ({READ_BY[k][1]})" for k in sorted(set(given) & set(READ_BY))
            if values[k] != defaults[k] and not applies(k, values)]


def user_error(fn, *args):
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
    values = cfg.flat()
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise AutoSNNError(f"{flag(name)} must be a finite number (got {value})")

    def need(ok: bool, name: str, what: str):
        if not ok:
            raise AutoSNNError(f"{flag(name)} must be {what} (got {values[name]!r})")

    if r.stage not in STAGES:
        raise AutoSNNError(f"unknown stage {r.stage!r}; valid: {', '.join(STAGES)}")
    if r.dataset not in DATASETS and npz_path(r.dataset) is None:
        raise AutoSNNError(f"unknown dataset {r.dataset!r}; valid: {', '.join(DATASETS)}, npz:PATH")
    user_error(get_backbone, r.backbone)
    if r.neuron not in NEURONS:
        raise AutoSNNError(f"unknown neuron {r.neuron!r}; valid: {', '.join(NEURONS)}")
    if r.neuron == "ann" and (r.T, se.lam) != (ANN_FIXED["T"], ANN_FIXED["lam"]):
        raise AutoSNNError(f"--neuron ann runs one step without spikes: it needs --T 1 and --lam 0 "
                           f"(got --T {r.T}, --lam {se.lam})")
    for name in ("T", "batch_size", "supernet_epochs", "retrain_epochs", "eval_every", "watch_archs",
                 "watch_images"):
        need(values[name] >= 1, name, "an integer >= 1")
    for name in ("eval_batch_size", "log_every", "cutout", "model_width", "n_train", "n_test", "watch_every",
                 "watch_recalib"):
        need(values[name] >= 0, name, "an integer >= 0")
    for name in ("seed", "search_seed"):
        need(0 <= values[name] <= SEED_MAX, name, f"an integer in 0..{SEED_MAX}")
    check_threads(r.threads)
    defaults = Config.from_flat({}).flat()
    for name, (_, why) in APPLIES.items():
        if values[name] != defaults[name] and not applies(name, values):
            raise AutoSNNError(f"{why}: drop {flag(name)} {values[name]}")
    if r.dataset in SYNTHETIC and r.n_train and 0 < sn.train_portion < 1:
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
    need(sn.supernet_schedule in ("constant", "cosine"), "supernet_schedule", "constant or cosine")
    need(sn.path_sampling in ("uniform", "fair"), "path_sampling", "uniform or fair")
    need(se.spike_norm >= 0, "spike_norm", ">= 0 (0: the super-network's last-epoch mean)")
    need(r.amp in AMP, "amp", " or ".join(AMP))
    user_error(se.check)
    if r.supernet_path and r.stage in ("all", "supernet"):
        raise AutoSNNError(f"--supernet is for --stage search or --stage retrain --inherit; --stage {r.stage} "
                           f"trains its own super-network")
    if r.stage == "all" and rc.arch:
        raise AutoSNNError("--arch is for --stage retrain; --stage all retrains the architecture it finds")
    if rc.optimizer not in ("adam", "sgd"):
        raise AutoSNNError(f"unknown optimizer {rc.optimizer!r}; valid: adam, sgd")
    if rc.arch:
        user_error(resolve_arch, rc.arch, r.backbone)
    if rc.model and rc.model not in BASELINES:
        raise AutoSNNError(f"unknown model {rc.model!r}; valid: {', '.join(BASELINES)}")
    if rc.model and r.stage != "retrain":
        raise AutoSNNError("--model is for --stage retrain")
    if rc.model and rc.arch:
        raise AutoSNNError("give either --model (a baseline) or --arch (an AutoSNN architecture), not both")
    user_error(check_candidate, rc.study_block)
    root = Path(r.data_root)
    if root.exists() and not root.is_dir():
        raise AutoSNNError(f"--data-root {root} is a file, not a folder")
    resolve_device(r.device)


def check_threads(threads: int) -> None:
    """--threads: 0 (torch's choice) up to this machine's CPUs (train.py and bench.py)."""
    if threads < 0:
        raise AutoSNNError(f"--threads must be an integer >= 0 (got {threads})")
    cpus = os.cpu_count() or 1
    if threads > cpus:
        raise AutoSNNError(f"--threads must be at most this machine's {cpus} CPUs (more threads than CPUs run "
                           f"many times slower; got {threads})")


def busy_hint(threads: int, load: float, cpus: int, environ) -> str | None:
    """A one-line hint when a multi-thread CPU run starts on a machine already busy with other work
    (1-minute load average >= its CPUs) and OMP_WAIT_POLICY is unset. OpenMP's default active waiting
    collapses then (several times slower); PASSIVE costs about a third on a quiet machine, so it is
    suggested, not set (docs/performance.md#threads)."""
    if threads <= 1 or "OMP_WAIT_POLICY" in environ or load < cpus:
        return None
    return (f"this machine is busy (load average {load:.1f} on {cpus} CPUs): with other jobs running, {threads} "
            f"threads that spin while waiting can run several times slower; if this run is slow, restart it with "
            f"OMP_WAIT_POLICY=PASSIVE in the environment or with --threads 1")


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
    """The run folder out/name: name is one plain folder name that fits the filesystem with the writer's
    temporary suffix, and out a folder (or creatable) that accepts a new folder. Creates nothing that
    stays: whether the filesystem takes a folder is asked by making and removing an empty one."""
    if not name or name in (".", "..") or name.startswith(".") or "/" in name or os.sep in name:
        raise AutoSNNError(f"--name {name!r} must be a plain folder name inside --out (no '/', not "
                           f"starting with '.')")
    if not out.strip():
        raise AutoSNNError(f"--out {out!r} names no folder; give the parent folder of run folders (the current "
                           f"folder is --out .)")
    base = Path(out)
    probe = base
    while not probe.exists():
        if probe.is_symlink() or probe.parent == probe:
            raise AutoSNNError(f"--out {out}: cannot be created")
        probe = probe.parent
    check_writable(probe, f"--out {out}")
    check_name(probe, name, "--name")      # with the temporary suffix the writer adds
    try:                        # /proc, /sys: writable to root by their mode, yet they take no folder
        os.rmdir(tempfile.mkdtemp(prefix=".autosnn-probe", dir=probe))
    except OSError as e:
        raise AutoSNNError(f"cannot create the run folder in --out {out}: {probe} does not take new "
                           f"folders ({e.strerror or e})") from None
    return base / name


def set_determinism(deterministic: bool) -> None:
    """--deterministic: the same bits on every CUDA run (same card and versions), at a speed cost.
    Otherwise TF32 convolutions/matmuls are allowed (Ampere and later), which moves threshold
    crossings slightly. CPU results are reproducible either way."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # read when cuBLAS starts
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic     # cuDNN picks its fastest kernels per shape (GPU only)
    torch.backends.cuda.matmul.allow_tf32 = not deterministic
    torch.backends.cudnn.allow_tf32 = not deterministic


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


class Env:
    """How the stages run: device, threads, eval batch size, autocast, compilation. Building it
    applies the process-wide settings (threads, allocator, determinism)."""

    def __init__(self, cfg: Config, device: torch.device | None = None):
        r = cfg.run
        self.device = device or resolve_device(r.device)
        if r.threads:
            torch.set_num_threads(r.threads)
        if self.device.type == "cpu":
            tune_cpu_allocator()
        set_determinism(r.deterministic)
        self.compile = (self.device.type == "cuda") if r.compile is None else r.compile
        self.cuda_graphs = r.cuda_graphs
        self.amp = r.amp == "bf16"
        # on a CPU results do not depend on it (eval-mode BN); on a GPU the algorithm choice may differ
        self.eval_batch_size = r.eval_batch_size or (768 if self.device.type == "cuda" else 256)

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def memory_bytes(self) -> int:
        """What the device holds: the GPU's memory, or the machine's RAM."""
        if self.device.type == "cuda":
            return torch.cuda.get_device_properties(self.device).total_memory
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
