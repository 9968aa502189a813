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

Everything goes to runs/<name>/: config.json, log.txt, metrics.jsonl, supernet.pt, search.pt,
search.json, pareto.csv, best_arch.txt, child.pt, results.json. Checkpoints are written atomically
after every epoch and every search generation and carry all RNG states, so --resume continues
exactly. The configuration is one dataclass per stage below; the command line is generated from them.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import dist
from autosnn import E_AC, E_MAC, NEURONS, SpikingNetwork, count_parameters, predict, rate_loss
from baselines import BASELINES, HandcraftedSNN
from data import DATASETS, load_dataset
from files import atomic_write
from evolve import (Search, SearchConfig, csv_text, evaluate_archs, evaluate_model, plot_run, run_search,
                    write_history)
from search_space import check_candidate, get_backbone, resolve_arch, sample_arch

STAGES = ("all", "supernet", "search", "retrain", "study")


def opt(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class RunConfig:
    """What to run, on which data and model. Defaults are the paper's."""
    stage: str = opt("all", f"stage to run: {', '.join(STAGES)}")
    dataset: str = opt("cifar10", f"one of {', '.join(DATASETS)}")
    data_root: str = opt("./data", "dataset folder")
    download: bool = opt(False, "download CIFAR/SVHN if missing")
    n_train: int = opt(0, "synthetic data: training images (0: the dataset's own number)")
    n_test: int = opt(0, "synthetic data: test images (0: the dataset's own number)")
    split_by: str = opt("number", "event data: frames of equal event number or equal 'time'")
    cutout: int = opt(0, "cutout square size in training (0 = off)")
    backbone: str = opt("AutoSNN_16", "AutoSNN_<C> (= SNN_1 of width C) or SNN_<1-4>[_<C>]")
    T: int = opt(8, "time steps")
    neuron: str = opt("plif", f"one of {', '.join(NEURONS)} ('ann': ReLU, T=1, cross-entropy)")
    tau0: float = opt(2.0, "initial membrane time constant (PLIF) / fixed one (LIF)")
    v_th: float = opt(1.0, "firing threshold")
    batch_size: int = opt(96, "training batch size")
    eval_batch_size: int = opt(0, "evaluation batch size (0: 768 on a GPU as the paper, 256 on a CPU, "
                                  "measured faster there)")
    seed: int = opt(2022, "seed of weights, data order, augmentation and path sampling")
    device: str = opt("", "cpu, cuda, cuda:1, ... ('': cuda when available)")
    threads: int = opt(0, "CPU threads for torch (0: torch's choice)")
    out: str = opt("runs", "parent folder of run folders")
    name: str = opt("", "run folder name ('': <stage>-<dataset>-<time>)")
    supernet: str = opt("", "super-network checkpoint for --stage search or --inherit")
    log_every: int = opt(100, "batches between progress lines (0 = per epoch only)")
    activation_checkpointing: bool = opt(False, "recompute block activations in backward: less training "
                                                "memory for large T, ~1/3 more compute, same results")


@dataclass
class SupernetConfig:
    """Super-network training (paper sec. 5)."""
    supernet_epochs: int = opt(600, "super-network training epochs")
    supernet_lr: float = opt(1e-3, "Adam learning rate")
    train_portion: float = opt(0.8, "fraction of the training set used as D_train (rest: D_val)")


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
        return {k: asdict(getattr(self, k)) for k in ("run", "supernet", "search", "retrain")}

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

# Presets are other default sets; options given on the command line override them.
PRESETS = {
    "paper": {},
    "short": {"supernet_epochs": 30, "retrain_epochs": 60},
    # small enough for a CPU in well under a minute, large enough to learn something on synthetic data
    "dry-run": {"n_train": 1000, "n_test": 250, "backbone": "AutoSNN_8", "T": 4, "batch_size": 32,
                "eval_batch_size": 250, "supernet_epochs": 4, "retrain_epochs": 5, "supernet_lr": 3e-3,
                "retrain_lr": 3e-3, "iterations": 3, "pool": 6, "topk": 3, "mutations": 3, "crossovers": 2,
                "log_every": 0},
}

# Options that define the super-network and its data: a search stage takes them from the checkpoint.
MODEL_KEYS = ("dataset", "data_root", "n_train", "n_test", "split_by", "backbone", "T", "neuron", "tau0",
              "v_th", "train_portion")


# ---------------------------------------------------------------------------------------------
# Run folder: logging, atomic files, RNG state
# ---------------------------------------------------------------------------------------------

class Run:
    """The run folder: log lines (stdout + log.txt), metrics.jsonl, atomic files."""

    def __init__(self, path: Path):
        self.path = path

    def log(self, msg: str) -> None:
        if not dist.is_main():          # under torchrun only rank 0 writes (dist.py)
            return
        print(msg, flush=True)
        with open(self.path / "log.txt", "a") as f:
            f.write(msg + "\n")

    def metrics(self, **row) -> None:
        if not dist.is_main():
            return
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def write_text(self, path: Path, text: str) -> None:
        if not dist.is_main():
            return
        atomic_write(path, lambda f: f.write(text.encode()))

    def save(self, obj, name: str) -> None:
        """torch.save under a temporary name, then rename: a crash never leaves half a checkpoint."""
        if not dist.is_main():
            return
        atomic_write(self.path / name, lambda f: torch.save(obj, f))


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
    s = {"random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_states(s: dict) -> None:
    random.setstate(s["random"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:       # truncated or foreign file
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__})") from None


# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------

def loss_fn(net: SpikingNetwork, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MSE on rates for SNNs (sec. 3.3); cross-entropy for the ANN ablation."""
    return F.cross_entropy(out, y) if net.neuron == "ann" else rate_loss(out, y, net.T)


def train_epoch(net, optimizer, batches, path, run: Run, log_every: int, label: str) -> dict:
    """One epoch. path(): the architecture of the next batch (sampled for the super-network).
    Metrics accumulate on the device and are read once per logging interval."""
    net.train()
    sums, n = None, 0                 # on the device: loss, correct, spikes (sums over images)
    start = time.time()
    for i, (x, y) in enumerate(dist.shard(batches), 1):      # this rank's slice of each global batch
        optimizer.zero_grad(set_to_none=True)   # unsampled candidates keep grad None: Adam skips them
        out, stats = net(x, path())
        loss = loss_fn(net, out, y)
        loss.backward()
        dist.average_gradients(net, len(y))      # the path's gradients, averaged over ranks
        optimizer.step()
        with torch.no_grad():
            row = torch.stack([loss.detach().double() * len(y), (predict(out) == y).sum().double(),
                               stats.spikes * len(y)])
            sums = row if sums is None else sums + row
        n += len(y)
        if log_every and i % log_every == 0:
            s, n_all = dist.sum_over_ranks(sums, n)
            run.log(f"  {label} batch {i}: loss {s[0] / n_all:.4f} acc {s[1] / n_all:.4f} "
                    f"spikes {s[2] / n_all:.0f} ({n_all / (time.time() - start):.0f} img/s)")
    dist.average_bn_stats(net)                   # every rank now holds the same model
    (loss_sum, correct, spikes), n = dist.sum_over_ranks(sums, n)
    return {"loss": loss_sum / n, "acc": correct / n, "spikes": spikes / n,
            "img_per_s": n / (time.time() - start)}


def check_finite(metrics: dict, what: str, ckpt: Path) -> None:
    if not math.isfinite(metrics["loss"]):
        raise ValueError(f"the {what} loss became {metrics['loss']} in epoch {metrics['epoch']}; stopped. "
                         f"The last good checkpoint is kept ({ckpt}); try a lower learning rate")


def build_net(cfg: Config, num_classes: int, input_shape, arch=None) -> SpikingNetwork:
    r = cfg.run
    return SpikingNetwork(r.backbone, num_classes, arch, r.T, input_shape, r.neuron, r.tau0, r.v_th,
                          checkpoint=r.activation_checkpointing)


def train_supernet(cfg: Config, ds, run: Run, device) -> dict:
    """Stage 1. Returns the final checkpoint."""
    r, sc = cfg.run, cfg.supernet
    path = run.path / "supernet.pt"
    torch.manual_seed(r.seed)
    net = build_net(cfg, ds.num_classes, ds.input_shape).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=sc.supernet_lr)
    path_rng, data_gen = random.Random(r.seed), torch.Generator().manual_seed(r.seed)
    history, epoch = [], 0
    if path.exists():
        ck = load_checkpoint(path)
        net.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        path_rng.setstate(ck["path_rng"])
        data_gen.set_state(ck["data_gen"])
        set_rng_states(ck["rng"])
        history, epoch = ck["history"], ck["epoch"]
        if epoch >= sc.supernet_epochs:
            return ck
        run.log(f"resuming the super-network at epoch {epoch + 1}")
    d_train, _ = ds.search_split(sc.train_portion)
    run.log(f"super-network {r.backbone}: {count_parameters(net):,} parameters, {ds.name} D_train "
            f"{len(d_train)} images, {sc.supernet_epochs} epochs")
    start, first = time.time(), epoch
    for epoch in range(epoch, sc.supernet_epochs):
        batches = d_train.batches(r.batch_size, shuffle=True, generator=data_gen, device=device)
        m = train_epoch(net, optimizer, batches, lambda: sample_arch(net.backbone, path_rng), run,
                        r.log_every, "super-network")
        m["epoch"] = epoch + 1
        check_finite(m, "super-network", path)
        history.append(m)
        elapsed = time.time() - start
        eta = elapsed / (epoch + 1 - first) * (sc.supernet_epochs - epoch - 1)
        run.log(f"super-network epoch {epoch + 1}/{sc.supernet_epochs}: loss {m['loss']:.4f} "
                f"acc {m['acc']:.4f} spikes {m['spikes']:.0f} {m['img_per_s']:.0f} img/s "
                f"elapsed {elapsed:.0f}s ETA {eta:.0f}s")
        run.metrics(stage="supernet", **m)
        ck = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
              "history": history, "path_rng": path_rng.getstate(), "data_gen": data_gen.get_state(),
              "rng": rng_states(), "config": cfg.to_dict(), "num_classes": ds.num_classes,
              "input_shape": ds.input_shape, "spike_norm": m["spikes"]}
        run.save(ck, "supernet.pt")
    return ck


def load_supernet(cfg: Config, ck: dict, ds, device) -> SpikingNetwork:
    net = build_net(cfg, ds.num_classes, ds.input_shape).to(device)
    if ck["num_classes"] != ds.num_classes or tuple(ck["input_shape"]) != tuple(ds.input_shape):
        raise ValueError(f"the super-network checkpoint has {ck['num_classes']} classes and input "
                         f"{tuple(ck['input_shape'])}; this run needs {ds.num_classes} and {tuple(ds.input_shape)}")
    try:
        net.load_state_dict(ck["model"])
    except RuntimeError:
        raise ValueError(f"the super-network checkpoint does not fit backbone {cfg.run.backbone}") from None
    return net


def search_stage(cfg: Config, ds, run: Run, device, ck: dict) -> str:
    """Stage 2. Returns the best architecture string."""
    r, sc = cfg.run, cfg.search
    net = load_supernet(cfg, ck, ds, device)
    spike_norm = sc.spike_norm or ck["spike_norm"]
    search = Search(net.backbone, sc, spike_norm, random.Random(sc.search_seed))
    path = run.path / "search.pt"
    if path.exists():
        state = load_checkpoint(path)
        search.load_state_dict(state["search"])
        set_rng_states(state["rng"])
        if not search.done:
            run.log(f"resuming the search at generation {search.generation + 1}")
    d_train, d_val = ds.search_split(cfg.supernet.train_portion)

    def val_batches():
        return d_val.batches(r.eval_batch_size, device=device)

    def recalib_batches():   # the same batches for every architecture
        g = torch.Generator().manual_seed(sc.search_seed)
        return itertools.islice(d_train.batches(r.batch_size, shuffle=True, generator=g, device=device),
                                sc.bn_recalib)

    def checkpoint(s: Search):
        write_history(run.path, s, run.write_text)
        run.save({"search": s.state_dict(), "rng": rng_states(), "config": cfg.to_dict()}, "search.pt")
        gen = [h for h in s.history if h["generation"] == s.generation - 1]
        run.metrics(stage="search", generation=s.generation, evaluated=len(gen),
                    best_fitness=s.best()["fitness"], best_arch=s.best()["arch"],
                    mean_acc=sum(h["acc"] for h in gen) / max(len(gen), 1))

    if not search.done:
        run.log(f"search: {sc.search} on D_val ({len(d_val)} images), lambda {sc.lam}, "
                f"spike_norm {spike_norm:.0f}, {sc.iterations} x {sc.pool}")
        run_search(search, dist.split_pool(lambda archs: evaluate_archs(
                       net, archs, val_batches, recalib_batches if sc.bn_recalib else None)),
                   checkpoint, run.log)
    best = search.best()
    run.write_text(run.path / "best_arch.txt", best["arch"] + "\n")
    if dist.is_main():
        plot_run(run.path, run.log)
    run.log(f"best architecture: {best['arch']} (val acc {best['acc']:.4f}, spikes {best['spikes']:.0f}, "
            f"fitness {best['fitness']:.4f})")
    return best["arch"]


def retrain_stage(cfg: Config, ds, run: Run, device, arch: str, supernet_ck: dict | None) -> dict:
    """Stage 3: the child network (or a hand-crafted baseline, --model) from scratch on the full
    training set; the final epoch's test accuracy is the result. Returns the results."""
    r, rc = cfg.run, cfg.retrain
    torch.manual_seed(r.seed)          # the same initial weights whichever stages ran before
    if rc.model:
        net = HandcraftedSNN(rc.model, ds.num_classes, r.T, ds.input_shape, rc.model_width, r.neuron,
                             r.tau0, r.v_th).to(device)
        label = rc.model
    else:
        net = build_net(cfg, ds.num_classes, ds.input_shape, resolve_arch(arch, r.backbone)).to(device)
        label = f"{net.arch} on {r.backbone}"
        if rc.inherit:
            net.load_state_dict(load_supernet(cfg, supernet_ck, ds, "cpu").path_state_dict(net.arch))
    if rc.optimizer == "adam":
        optimizer = torch.optim.Adam(net.parameters(), lr=rc.retrain_lr)
    else:
        optimizer = torch.optim.SGD(net.parameters(), lr=rc.retrain_lr, momentum=0.9, weight_decay=3e-4)
    milestones = [rc.retrain_epochs // 2, rc.retrain_epochs * 3 // 4] if rc.optimizer == "sgd" else []
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, 0.1)
    data_gen, history, epoch = torch.Generator().manual_seed(r.seed + 1), [], 0
    path = run.path / "child.pt"
    if path.exists():
        ck = load_checkpoint(path)
        for obj, key in ((net, "model"), (optimizer, "optimizer"), (scheduler, "scheduler")):
            obj.load_state_dict(ck[key])
        data_gen.set_state(ck["data_gen"])
        set_rng_states(ck["rng"])
        history, epoch = ck["history"], ck["epoch"]
        if epoch < rc.retrain_epochs:
            run.log(f"resuming retraining at epoch {epoch + 1}")
    train, test = ds.split("train"), ds.split("test")

    def test_eval():
        return evaluate_model(net, test.batches(r.eval_batch_size, device=device))

    run.log(f"retrain {label}: {count_parameters(net):,} parameters, {len(train)} training / "
            f"{len(test)} test images, {rc.retrain_epochs} epochs")
    final = None
    for epoch in range(epoch, rc.retrain_epochs):
        batches = train.batches(r.batch_size, shuffle=True, generator=data_gen, device=device)
        m = train_epoch(net, optimizer, batches, lambda: None, run, r.log_every, "retrain")
        scheduler.step()
        m["epoch"] = epoch + 1
        check_finite(m, "retraining", path)
        if (epoch + 1) % rc.eval_every == 0 or epoch + 1 == rc.retrain_epochs:
            final = test_eval()
            m.update(test_acc=final["acc"], test_spikes=final["spikes"], test_neuron_spikes=final["neuron_spikes"])
        history.append(m)
        run.log(f"retrain epoch {epoch + 1}/{rc.retrain_epochs}: loss {m['loss']:.4f} acc {m['acc']:.4f} "
                f"spikes {m['spikes']:.0f} {m['img_per_s']:.0f} img/s"
                + (f" | test acc {m['test_acc']:.4f} spikes {m['test_spikes']:.0f}" if "test_acc" in m else ""))
        run.metrics(stage="retrain", **m)
        run.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                  "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "history": history,
                  "data_gen": data_gen.get_state(), "rng": rng_states(), "config": cfg.to_dict()}, "child.pt")
    if final is None:                  # resumed after the last epoch's checkpoint
        final = test_eval()
    results = {"model": rc.model or "autosnn", "arch": None if rc.model else str(net.arch),
               "backbone": None if rc.model else r.backbone, "dataset": ds.name, "T": r.T,
               "epochs": rc.retrain_epochs, "test_acc": final["acc"], "spikes": final["spikes"],
               "neuron_spikes": final["neuron_spikes"], "params": count_parameters(net),
               "per_layer_spikes": final["per_layer"], "energy": final.get("energy"),
               "best_test_acc_over_epochs": max(h["test_acc"] for h in history if "test_acc" in h),
               "note": "test_acc is the final epoch's; best_test_acc_over_epochs is selected on the test "
                       "set and given only for comparison with the original code's reporting"}
    run.write_text(run.path / "results.json", json.dumps(results, indent=1))
    run.log(f"final test accuracy {final['acc']:.4f}, spikes per image {final['spikes']:.0f} "
            f"(neuron outputs only {final['neuron_spikes']:.0f}), {results['params']:,} parameters"
            + (f", energy estimate {final['energy']['energy_uj']:.2f} uJ per image" if final.get("energy") else ""))
    if dist.is_main():
        plot_run(run.path, run.log)
    return results


def study_stage(cfg: Config, ds, run: Run, device) -> list[dict]:
    """Design-choice study (paper sec. 1): SNN_1 (no GAP, max-pool), SNN_2 (GAP), SNN_3 (stride-2
    blocks) and SNN_4 (avg-pool) with one fixed block everywhere, the retraining schedule and the
    same seed. Each variant trains in study/<backbone>/ (resumable); the table goes to study.md/.csv."""
    C, rows = get_backbone(cfg.run.backbone).C, []
    for variant in range(1, 5):
        backbone = f"SNN_{variant}_{C}"
        sub = Config.from_flat({**cfg.flat(), "backbone": backbone, "model": "",
                                "arch": "-".join([cfg.retrain.study_block] * len(get_backbone(backbone).searched))})
        sub_run = Run(run.path / "study" / backbone)
        sub_run.path.mkdir(parents=True, exist_ok=True)
        res = retrain_stage(sub, ds, sub_run, device, sub.retrain.arch, None)
        e = res["energy"] or {}
        rows.append({"backbone": backbone, "design": DESIGNS[variant], "test_acc": res["test_acc"],
                     "spikes": res["spikes"], "neuron_spikes": res["neuron_spikes"], "params": res["params"],
                     "energy_uj": e.get("energy_uj"), "ann_energy_uj": e.get("ann_energy_uj")})
    keys = list(rows[0])
    run.write_text(run.path / "study.csv", csv_text(keys, rows))
    fmt = {"test_acc": "{:.4f}", "spikes": "{:.0f}", "neuron_spikes": "{:.0f}", "params": "{:,}",
           "energy_uj": "{:.2f}", "ann_energy_uj": "{:.2f}"}
    md = [f"Design-choice study: {cfg.run.dataset}, block {cfg.retrain.study_block} everywhere, T={cfg.run.T}, "
          f"{cfg.retrain.retrain_epochs} epochs, seed {cfg.run.seed}. Energy is an estimate "
          f"({E_AC} pJ/AC, {E_MAC} pJ/MAC).", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    md += ["| " + " | ".join(fmt.get(k, "{}").format(x[k]) if x[k] is not None else "-" for k in keys) + " |"
           for x in rows]
    run.write_text(run.path / "study.md", "\n".join(md) + "\n")
    run.log("\n".join(md))
    return rows


DESIGNS = {1: "no GAP; max-pool down-sampling", 2: "spiking GAP before the classifier",
           3: "stride-2 searched blocks", 4: "avg-pool + neuron down-sampling"}


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[1],
        epilog="presets (defaults are the paper's values; --preset short is the default):\n" +
               "\n".join(f"  {k}: {v or 'the paper defaults'}" for k, v in PRESETS.items()))
    p.add_argument("--preset", choices=list(PRESETS), default=argparse.SUPPRESS,
                   help="set of defaults (default: short)")
    p.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS,
                   help="= --preset dry-run: tiny synthetic schedule, whole pipeline in seconds")
    p.add_argument("--resume", metavar="RUN_DIR", default=argparse.SUPPRESS,
                   help="continue the run in RUN_DIR with its saved configuration")
    for title, kind in SECTIONS:
        g = p.add_argument_group(f"{title} options")
        for f in fields(kind):
            flag = "--" + f.name.replace("_", "-")
            short = PRESETS["short"].get(f.name)
            default = f"default {f.default!r}" + (f"; short preset {short!r}" if short is not None else "")
            help_text = f"{f.metadata.get('help', '')} ({default})".replace("%", "%%")   # argparse formats help
            if isinstance(f.default, bool):
                g.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
            else:
                g.add_argument(flag, dest=f.name, type=type(f.default), default=argparse.SUPPRESS,
                               help=help_text)
    return p


def make_config(given: dict) -> Config:
    """Dataclass defaults <- preset <- options given on the command line."""
    preset = "dry-run" if given.pop("dry_run", False) else given.pop("preset", "short")
    defaults = Config.from_flat({}).flat()
    values = {**defaults, **PRESETS[preset], **given}
    cfg = Config.from_flat(values)
    check_config(cfg)
    return cfg


def check_config(cfg: Config) -> None:
    r = cfg.run
    if r.stage not in STAGES:
        raise ValueError(f"unknown stage {r.stage!r}; valid: {', '.join(STAGES)}")
    if r.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {r.dataset!r}; valid: {', '.join(DATASETS)}")
    get_backbone(r.backbone)
    if r.neuron not in NEURONS:
        raise ValueError(f"unknown neuron {r.neuron!r}; valid: {', '.join(NEURONS)}")
    if r.neuron == "ann":           # the ablation: one step, and no spikes, so fitness = accuracy
        r.T, cfg.search.lam = 1, 0.0
    if r.eval_batch_size < 0:
        raise ValueError(f"--eval-batch-size must be >= 0 (got {r.eval_batch_size})")
    for part, name in ((r, "T"), (r, "batch_size"), (cfg.supernet, "supernet_epochs"),
                       (cfg.retrain, "retrain_epochs"), (cfg.retrain, "eval_every")):
        v = getattr(part, name)
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 1 (got {v!r})")
    if not 0 < cfg.supernet.train_portion < 1:
        raise ValueError(f"--train-portion must be in (0, 1) (got {cfg.supernet.train_portion})")
    if r.stage == "all" and cfg.retrain.arch:
        raise ValueError("--arch is for --stage retrain; --stage all retrains the architecture it finds")
    cfg.search.check()
    if cfg.retrain.optimizer not in ("adam", "sgd"):
        raise ValueError(f"unknown optimizer {cfg.retrain.optimizer!r}; valid: adam, sgd")
    if cfg.retrain.arch:
        resolve_arch(cfg.retrain.arch, r.backbone)
    if cfg.retrain.model and cfg.retrain.model not in BASELINES:
        raise ValueError(f"unknown model {cfg.retrain.model!r}; valid: {', '.join(BASELINES)}")
    if cfg.retrain.model and r.stage != "retrain":
        raise ValueError("--model is for --stage retrain")
    if cfg.retrain.model and cfg.retrain.arch:
        raise ValueError("give either --model (a baseline) or --arch (an AutoSNN architecture), not both")
    check_candidate(cfg.retrain.study_block)
    if r.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {r.device} asked for, but CUDA is not available here; use --device cpu")


def prepare(args: dict) -> tuple[Config, Path, dict | None]:
    """Resolve the configuration and the run folder; load a given super-network. Creates nothing."""
    if "resume" in args:
        run_dir = Path(args.pop("resume"))
        if not (run_dir / "config.json").is_file():
            raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json in it)")
        extra = set(args) - {"device", "threads"}
        if extra:
            raise ValueError(f"--resume takes its options from {run_dir}/config.json; drop "
                             + ", ".join("--" + k.replace("_", "-") for k in sorted(extra)))
        saved = json.loads((run_dir / "config.json").read_text())
        flat = {k: v for part in saved.values() for k, v in part.items()}
        cfg = Config.from_flat({**flat, **args})
        check_config(cfg)
        return cfg, run_dir, None
    supernet_ck = None
    if args.get("supernet"):
        supernet_ck = load_checkpoint(Path(args["supernet"]))
        saved = {k: v for part in supernet_ck["config"].values() for k, v in part.items()}
        for k in MODEL_KEYS:
            if k in args and args[k] != saved[k]:
                raise ValueError(f"--{k.replace('_', '-')} {args[k]} does not match the super-network "
                                 f"checkpoint ({k} = {saved[k]})")
            args[k] = saved[k]
    cfg = make_config(args)
    r = cfg.run
    if r.stage == "search" and supernet_ck is None:
        raise ValueError("--stage search needs --supernet runs/<name>/supernet.pt")
    if r.stage == "retrain" and not (cfg.retrain.arch or cfg.retrain.model):
        raise ValueError("--stage retrain needs --arch (an architecture string or a name such as AutoSNN) "
                         "or --model (a hand-crafted baseline)")
    if cfg.retrain.inherit and r.stage == "retrain" and supernet_ck is None:
        raise ValueError("--inherit needs --supernet runs/<name>/supernet.pt")
    name = r.name or f"{r.stage}-{r.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(r.out) / name
    if run_dir.exists():
        raise ValueError(f"{run_dir} already exists; continue it with --resume {run_dir} or choose --name")
    return cfg, run_dir, supernet_ck


def execute(cfg: Config, run_dir: Path, supernet_ck: dict | None, new: bool) -> dict:
    r = cfg.run
    device = torch.device(r.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if r.threads:
        torch.set_num_threads(r.threads)
    if device.type == "cpu":
        tune_cpu_allocator()
    if not r.eval_batch_size:          # results do not depend on it (eval-mode BN); speed does
        r.eval_batch_size = 768 if device.type == "cuda" else 256
    ds = load_dataset(r.dataset, r.data_root, r.download, r.T, r.split_by, r.n_train or None,
                      r.n_test or None, cutout=r.cutout)
    if new and dist.is_main():      # everything checked: only now create the folder
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    random.seed(r.seed)    # the one seeding call; stages restore saved states when they resume
    np.random.seed(r.seed)
    torch.manual_seed(r.seed)
    run = Run(run_dir)
    run.log(f"run folder {run_dir} ({'new' if new else 'resumed'}), device {device}, "
            f"{ds.name}: {ds.num_classes} classes, input {tuple(ds.input_shape)}")
    if r.stage == "study":
        return study_stage(cfg, ds, run, device)
    if r.stage in ("all", "supernet"):
        supernet_ck = train_supernet(cfg, ds, run, device)
    if r.stage == "supernet":
        if dist.is_main():
            plot_run(run.path, run.log)
        return {}
    arch = cfg.retrain.arch
    if r.stage in ("all", "search"):
        if supernet_ck is None:            # a resumed search-only run
            supernet_ck = load_checkpoint(Path(r.supernet))
        arch = search_stage(cfg, ds, run, device, supernet_ck)
    if r.stage == "search":
        return {}
    if cfg.retrain.inherit and supernet_ck is None:
        supernet_ck = load_checkpoint(Path(r.supernet))
    return retrain_stage(cfg, ds, run, device, arch, supernet_ck)


def main(argv=None) -> int:
    given = vars(build_parser().parse_args(argv))
    run_dir = None
    try:
        cfg, run_dir, supernet_ck = prepare(given)
        dist.setup(cfg.run.device, cfg.run.batch_size, run_dir)   # under torchrun: join the other ranks
        execute(cfg, run_dir, supernet_ck, new=not run_dir.exists())
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as e:     # a user's mistake: one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted; the last checkpoint is intact: python train.py --resume {run_dir}",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
