"""AutoSNN pipeline: super-network training, spike-aware evolutionary search, retraining.

    python3 train.py --dry-run                           # the whole pipeline on synthetic data, ~1 min on a CPU
    python3 train.py --dataset cifar10 --download        # all three stages, short schedule
    python3 train.py --dataset cifar10 --preset paper    # the paper's budget (600 epochs, 20x20 search)
    python3 train.py --stage search --supernet runs/X/supernet.pt --lam -0.16
    python3 train.py --stage retrain --arch SRB_k5-SRB_k5-skip_connect-SRB_k3-SRB_k5 --dataset cifar100
    python3 train.py --resume runs/X                     # continue wherever it stopped

Stages:
  supernet  train the weight-sharing super-network on D_train (first 80% of the training set), one
            uniformly sampled path per batch; log the mean spikes per image of the sampled paths.
  search    evolutionary search on D_val (last 20%) with the super-network's weights and fitness
            acc * (spikes / spike_norm) ** lam; spike_norm defaults to the last epoch's mean spikes.
  retrain   train the found (or given) architecture from scratch on the full training set and
            report the final-epoch test accuracy, spikes per image and parameters.

Every option is validated (plumbing/config.py) and the data loaded before the run folder runs/<name>/ exists
(plumbing/rundir.py); a failure after that leaves a run that --resume continues. Checkpoints after every epoch
and search generation carry the RNG states, so on a CPU --resume continues bit-identically with the
same number of threads (another number warns); on a GPU that needs at least --deterministic and the
same card and software versions (not checked by the tests, which run on a CPU).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import signal
import sys
import threading
import time


try:        # Ctrl-C while torch loads: a line, not a traceback
    import torch
    import torch.nn.functional as F

    from autosnn import SpikingNetwork, count_parameters, predict, rate_loss
    from baselines import HandcraftedSNN
    from data import load_dataset
    from evaluation import distinct_archs, evaluate_archs, evaluate_model, watch
    from evolve import run_search
    from fast.steps import use_step_layers
    from fast.compiled import compile_network
    from fast.graphs import GraphedSteps
    from files import AutoSNNError, progress, python
    from pareto import make_search, pick
    from plumbing import dist
    from plumbing.config import Config, Env, build_parser, busy_hint, user_error
    from plumbing.history import write_history
    from plumbing.identity import check_run_files
    from plumbing.memory import (BYTES_PER_PARAMETER, activation_bytes, check_data, check_fits, held_bytes,
                                  host_bytes)
    from plumbing.plots import plot_run
    from plumbing.rundir import (CHECKPOINTS, Run, load_checkpoint, load_state, load_supernet, now,
                                 resolve, rng_states, set_rng_states, writing)
    from search_space import balanced_paths, get_backbone, resolve_arch, sample_arch
    from spikes import E_AC, E_MAC, silent_layers
except KeyboardInterrupt:
    print("\ninterrupted while loading; nothing was saved", file=sys.stderr)
    raise SystemExit(130) from None


class Diverged(AutoSNNError):
    """Training diverged (check_epoch): resuming with the same options would repeat it."""


WEIGHT_BOUND = 1e6       # |weight| or |BN statistic| above this: diverged, though finite
SATURATED = 0.99         # classifier firing rate at which it fires (almost) always
FLAT_EPOCHS = 3          # ... with a flat loss for this many epochs: diverged
EARLY_BATCHES = 10       # the first progress line of a process comes after this many batches


def main(argv=None) -> int:
    """The pipeline, top to bottom. Everything that can fail on the user's input fails before the run
    folder exists; after that, any failure leaves a folder that --resume continues."""
    run, previous = None, None
    try:
        cfg, where = resolve(vars(build_parser(__doc__.split("\n\n")[1]).parse_args(argv)))
        if not where.new:
            check_run_files(cfg, where)           # every file of the folder belongs to this one run
        dist.setup(cfg.run.device, cfg.run.batch_size, where.path)   # under torchrun: join the other ranks
        if not dist.active() and threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _terminate)
        env = Env(cfg)
        ds = load_data(cfg, env)
        if where.supernet is not None:           # a given super-network's shapes fit this data
            load_supernet(cfg, where.supernet, ds, "cpu", cfg.run.supernet_path)
        run = Run.open(cfg, where, env.device)    # the folder exists from here on
        random.seed(cfg.run.seed)                 # the one seeding call; stages restore saved states
        torch.manual_seed(cfg.run.seed)
        run.log(f"run folder {run.path} ({'new' if where.new else 'resumed'}), device {env.device} "
                f"({run.env['device_name']}), {ds.name}: {ds.num_classes} classes, input {tuple(ds.input_shape)}"
                + (", bf16 autocast" if env.amp else "") + (", deterministic" if cfg.run.deterministic else ""))
        hint = busy_hint(torch.get_num_threads(), os.getloadavg()[0], os.cpu_count() or 1, os.environ)
        if env.device.type == "cpu" and hint:
            run.warn("busy", hint)
        stage, supernet, arch = cfg.run.stage, (where.supernet, cfg.run.supernet_path), cfg.retrain.arch
        if stage == "study":
            study_stage(cfg, ds, run, env)
        if stage in ("all", "supernet"):
            supernet = train_supernet(cfg, ds, run, env), run.path / "supernet.pt"
        if stage in ("all", "search"):
            arch = search_stage(cfg, ds, run, env, *supernet)
        if stage in ("all", "retrain"):
            retrain_stage(cfg, ds, run, env, arch, *supernet)
        finish(run, stage, baseline=bool(cfg.retrain.model))
    except AutoSNNError as e:                  # a user's mistake, divergence, or a failed write: one line
        # after the folder exists, the run continues once the cause is fixed (a damaged input file, a full
        # disk), except a divergence, which would repeat
        again = run is not None and not isinstance(e, Diverged) and "--resume" not in str(e)
        print(f"error: {e}" + (f"; continue with --resume {run.path}" if again else ""), file=sys.stderr)
        return 2
    except (OSError, MemoryError, RuntimeError) as e:     # after the folder exists: resumable
        oom = isinstance(e, MemoryError) or "allocate memory" in str(e) or "out of memory" in str(e)
        if run is None or not (isinstance(e, OSError) or oom):
            raise                              # a bug: its traceback
        why = (e.strerror or str(e)) if isinstance(e, OSError) else "out of memory"
        print(f"error: {why}; continue with --resume {run.path}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:             # Ctrl-C, or SIGTERM (a scheduler, `kill`): the same line
        sig = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
        if run is not None:
            line = f"interrupted ({sig}); continue with: {python()} train.py --resume {run.path}"
            with contextlib.suppress(AutoSNNError):
                run.note(line)                 # log.txt keeps it too
            print("\n" + line, file=sys.stderr)
        else:
            print(f"\ninterrupted ({sig}) before the run folder was created; nothing was saved", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
    finally:
        if run is not None:
            run.close()
        dist.shutdown()     # leave the process group, SIGTERM ignored from here on (no-op in one process)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM in a single process, raised wherever the program is and handled as Ctrl-C: checkpoint
    writes are atomic under it, and the run resumes. (Under torchrun, plumbing/dist.py handles SIGTERM.)"""


def _terminate(signum, frame):
    raise Terminated()


# ---------------------------------------------------------------------------------------------
# Data, and the checks that need it
# ---------------------------------------------------------------------------------------------

def load_data(cfg: Config, env: Env):
    """The dataset, and the checks that need it (cutout vs image size, the D_train/D_val split, the
    networks' shapes and a memory estimate)."""
    r = cfg.run
    check_data(cfg, host_bytes())              # before the data is made: absurd --n-train is one line
    try:
        ds = load_dataset(r.dataset, r.data_root, r.download, r.T, r.split_by, r.n_train or None,
                          r.n_test or None, cutout=r.cutout, log=lambda m: print(m, file=sys.stderr))
    except (FileNotFoundError, ModuleNotFoundError, NotADirectoryError) as e:   # missing files or extras
        raise AutoSNNError(str(e)) from None
    side = min(ds.input_shape[-2:])
    if r.cutout > side:
        raise AutoSNNError(f"--cutout {r.cutout} is larger than the {side}x{side} images: it would blank them")
    user_error(ds.search_split, cfg.supernet.train_portion)
    user_error(check_networks, cfg, ds, env)
    return ds


def build_net(cfg: Config, num_classes: int, input_shape, arch=None, T=None):
    """The network this run trains: the super-network (arch None), an AutoSNN child, or a hand-crafted
    baseline (--model)."""
    r, rc = cfg.run, cfg.retrain
    if rc.model:
        return HandcraftedSNN(rc.model, num_classes, T or r.T, input_shape, rc.model_width, r.neuron, r.tau0,
                              r.v_th)
    return SpikingNetwork(r.backbone, num_classes, arch, T or r.T, input_shape, r.neuron, r.tau0, r.v_th,
                          checkpoint=r.activation_checkpointing)


def check_networks(cfg: Config, ds, env: Env) -> None:
    """Build every network the run will train on the meta device (shapes only, nothing allocated), so
    that a shape or option the network rejects fails now, not after the run folder exists; refuse a run
    whose parameters, training activations and (on a CPU) data would not fit the device
    (plumbing/memory.py)."""
    r, rc = cfg.run, cfg.retrain
    one_frame = (1, *ds.input_shape[1:]) if ds.is_event else tuple(ds.input_shape)
    if r.stage == "study":
        C = get_backbone(r.backbone).C
        variants = [(bb, [rc.study_block] * len(bb.searched)) for bb in (get_backbone(f"SNN_{v}_{C}") for v in range(1, 5))]
        make = lambda T, shape, bb, a: SpikingNetwork(bb, ds.num_classes, a, T, shape, r.neuron, r.tau0, r.v_th)
    else:
        variants = [(None, resolve_arch(rc.arch, r.backbone) if rc.arch and not rc.model else None)]
        make = lambda T, shape, bb, a: build_net(cfg, ds.num_classes, shape, a, T=T)
    what = (f"--model {rc.model}" + (f" --model-width {rc.model_width}" if rc.model_width else "") if rc.model
            else f"--backbone {r.backbone}")
    params = neurons = 0
    with torch.device("meta"), torch.no_grad():
        for bb, a in variants:
            params = max(params, sum(p.numel() for p in make(r.T, ds.input_shape, bb, a).parameters()))
            one = make(1, one_frame, bb, a).eval()            # one image, one step: the neurons per step
            path = None if rc.model or one.arch is not None else sample_arch(one.backbone, random.Random(0))
            neurons = max(neurons, sum(one(torch.zeros(1, *one_frame), path)[1].sizes))
    parts = [(params * BYTES_PER_PARAMETER, what, f"its {params:,} parameters (weights, gradients, Adam moments)",
              "choose a smaller width"),
             (activation_bytes(neurons, r.T, r.batch_size), f"--T {r.T} with --batch-size {r.batch_size}",
              "the training activations", "lower --T or --batch-size")]
    if env.device.type == "cpu":
        parts.append((held_bytes(ds), f"the {ds.name} data", "its samples in memory", "use less data"))
    check_fits(parts, env.memory_bytes(), env.device.type)


# ---------------------------------------------------------------------------------------------
# Training: one epoch, divergence, the epoch loop
# ---------------------------------------------------------------------------------------------

def loss_fn(net, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MSE on rates for SNNs; cross-entropy for the ANN ablation."""
    return F.cross_entropy(out.float(), y) if net.neuron == "ann" else rate_loss(out.float(), y, net.T)


def train_epoch(net, optimizer, batches, n_batches: int, path, run: Run, log_every: int, label: str,
                autocast=contextlib.nullcontext, time_first_step: bool = False, stage=None, steps=None) -> dict:
    """One epoch. path(): the architecture of the next batch (sampled for the super-network).
    Progress lines every `log_every` batches, and one early in the first epoch of this process (the
    ETA is known after a few batches); stage = (perf_counter start, epochs done before it by this
    process's start, this epoch's index, epochs in the stage) adds the stage's ETA.
    steps: a fast.graphs.GraphedSteps of a child network, whose train() runs forward, loss and backward.
    Metrics and per-layer spike counts accumulate on the device and are read once per logging
    interval and at the end: no host sync per batch. Returns loss, acc, spikes (per image),
    img_per_s, "layers": {layer name: spikes in the epoch}, "classifier": the classifier neuron's
    layer name (None for the ANN) and "classifier_rate": its spikes per neuron and step."""
    net.train()
    sums, n, counts, classifier, size = None, 0, {}, None, 1
    start = time.time()
    for i, (x, y) in enumerate(dist.shard(batches), 1):      # this rank's slice of each global batch
        optimizer.zero_grad(set_to_none=True)   # unsampled candidates keep grad None: Adam skips them
        if steps is not None:
            out, stats, loss = steps.train(x, y)
        else:
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
                neurons = [(nm, s) for nm, k, s in zip(stats.names, stats.kinds, stats.sizes) if k == "neuron"]
                classifier, size = neurons[-1] if neurons else (None, 1)    # the forward's last neuron layer
            else:
                counts[key] = counts[key] + stats.counts
        n += len(y)
        if i == 1 and time_first_step:
            run.log(f"  first {label} step (torch.compile compiles here): {time.time() - start:.1f}s")
        early = stage is not None and stage[2] == stage[1] and i == min(EARLY_BATCHES, log_every)
        if log_every and (i % log_every == 0 or early) and i < n_batches:
            s, n_all = dist.sum_over_ranks(sums, n)           # global numbers (one process: as is)
            eta = (f", {progress(stage[0], stage[2] + i / n_batches, stage[1], stage[3])} of the stage"
                   if stage is not None else "")
            run.log(f"  {label} batch {i}/{n_batches}: loss {s[0] / n_all:.4f} acc {s[1] / n_all:.4f} "
                    f"spikes {s[2] / n_all:.0f} ({n_all / (time.time() - start):.0f} img/s{eta})")
    dist.average_bn_stats(net)                   # every rank now holds the same model
    (loss_sum, correct, spikes), n = dist.sum_over_ranks(sums, n)
    layers: dict = {}
    flat = torch.cat([c.reshape(-1) for c in counts.values()]).tolist() if counts else []
    for nm, c in zip([nm for key in counts for nm in key], flat):
        layers[nm] = layers.get(nm, 0.0) + c
    rate = layers.get(classifier, 0.0) / (n * net.T * size) if classifier else None
    return {"loss": loss_sum / n, "acc": correct / n, "chance": 1 / net.num_classes, "spikes": spikes / n,
            "img_per_s": n / (time.time() - start), "layers": layers, "classifier": classifier,
            "classifier_rate": rate}


def warn_silent(run: Run, per_layer: dict, when: str, classifier=None) -> None:
    """Warn once per layer name that emitted no spike."""
    for n in silent_layers(per_layer):
        if n != classifier:
            run.warn(("silent", n), f"layer {n} emitted no spike {when}: the layers after it get no input "
                     f"(one known cause: a PLIF neuron after average pooling/GAP cannot reach v_th = 1 at "
                     f"first; README, 'Silent layers'). Warned once per layer")


def check_epoch(net, m: dict, history: list, what: str, ckpt, run: Run) -> None:
    """Stop on divergence, before this epoch's checkpoint (the last good one stays): a non-finite loss,
    weights or BN statistics that are non-finite or beyond WEIGHT_BOUND, or a classifier that fires at
    (almost) every step with a flat loss for FLAT_EPOCHS epochs. A silent classifier only warns."""
    e = m["epoch"]
    keep = (f"The last good checkpoint is kept ({ckpt})" if ckpt.exists() else "There is no checkpoint yet") \
        + "; try a lower learning rate"
    if not math.isfinite(m["loss"]):
        raise Diverged(f"the {what} loss became {m['loss']} in epoch {e}; stopped. {keep}")
    tensors = [(k, v) for k, v in net.state_dict().items() if v.is_floating_point()]   # BN buffers too
    if not float(torch.stack([v.abs().max() for _, v in tensors]).max()) <= WEIGHT_BOUND:   # nan: False
        bad, v = next((k, v) for k, v in tensors if not float(v.abs().max()) <= WEIGHT_BOUND)
        how = "non-finite" if not bool(v.isfinite().all()) else f"larger than {WEIGHT_BOUND:g} in magnitude"
        raise Diverged(f"the {what} weights became {how} in epoch {e} (first: {bad}); stopped. {keep}")
    if net.neuron == "ann" or m["classifier"] is None:
        return
    recent = [h for h in history[-(FLAT_EPOCHS - 1):] if h.get("classifier_rate") is not None] + [m]
    losses = [h["loss"] for h in recent]
    if (len(recent) == FLAT_EPOCHS and all(h["classifier_rate"] >= SATURATED for h in recent)
            and max(losses) - min(losses) <= 1e-3 * max(losses)):
        raise Diverged(f"the {what} classifier ({m['classifier']}) fired at every step for {FLAT_EPOCHS} "
                       f"epochs with a flat loss {m['loss']:.4f} (epoch {e}): it has diverged; stopped. {keep}")
    if m["layers"].get(m["classifier"], 1) == 0:
        run.warn(("classifier", what), f"the {what} classifier ({m['classifier']}) emitted no spike in epoch "
                 f"{e}: nothing can be learned until it fires (normal early in training; if it persists, "
                 f"lower --v-th or check the learning rate). Warned once")
    warn_silent(run, m["layers"], f"in {what} epoch {e}", m["classifier"])


def fit(cfg: Config, run: Run, env: Env, net, optimizer, kind: str, split, epochs: int, seed: int, label: str,
        path_rng: random.Random | None = None, scheduler=None, evaluate=None, every: int = 1, extra=None,
        watcher=None, watch_every: int = 0, sampler=None, steps=None):
    """The epoch loop of the super-network (kind "supernet": a path drawn from path_rng per batch) and
    of retraining ("retrain": one network; evaluate() on the test set every `every` epochs and after
    the last). watcher(history) -> metrics to add, every `watch_every` epochs and after the last (the
    super-network's fixed paths on D_val). sampler(): a fresh path chooser per epoch (instead of
    uniform draws from path_rng). steps: CUDA-graph forms of the training step (fast.graphs.GraphedSteps),
    or None. Resumes from run/<CHECKPOINTS[kind]> when it exists; checkpoints after every epoch.
    Returns (the last checkpoint, the last evaluation or None)."""
    r, what = cfg.run, {"supernet": "super-network", "retrain": "retraining"}[kind]
    ckpt = run.path / CHECKPOINTS[kind]
    data_gen = torch.Generator().manual_seed(seed)
    history, first, wall, ck = [], 0, 0.0, None
    if ckpt.exists():
        ck = load_checkpoint(ckpt, kind)
        for obj, key in ((net, "model"), (optimizer, "optimizer"), (scheduler, "scheduler")):
            if obj is not None:
                load_state(obj, ck[key], ckpt)
        if path_rng is not None:
            path_rng.setstate(ck["path_rng"])
        data_gen.set_state(ck["data_gen"])
        set_rng_states(ck["rng"])
        history, first, wall = ck["history"], ck["epoch"], ck["wall_s"]
        if first < epochs:
            run.log(f"resuming the {what} at epoch {first + 1}")
    run.cut_metrics(kind, "epoch", first)
    nb = -(-len(split) // r.batch_size)
    if first < epochs:
        use_step_layers(net)                         # bit-identical, fewer copies and calls (CPU; fast/steps.py)
        if env.compile:
            compile_network(net, log=run.log)        # in place: state_dict keys unchanged
        if env.cuda_graphs and steps is None:
            run.log("CUDA graphs: the super-network runs a new path every batch: running eager")
        run.log(f"{label}: {count_parameters(net):,} parameters, {len(split)} training images ({nb} batches), "
                f"{epochs} epoch{'s' * (epochs != 1)}")
    final, start = None, time.perf_counter()
    for epoch in range(first, epochs):
        t0 = time.time()
        batches = split.batches(r.batch_size, shuffle=True, generator=data_gen, device=env.device)
        sample = (lambda: sample_arch(net.backbone, path_rng)) if path_rng is not None else (lambda: None)
        if sampler is not None:
            sample = sampler()
        m = train_epoch(net, optimizer, batches, nb, sample, run, r.log_every, what, env.autocast,
                        env.compile and epoch == first, (start, first, epoch, epochs), steps)
        if scheduler is not None:
            scheduler.step()
        m["epoch"] = epoch + 1
        check_epoch(net, m, history, what, ckpt, run)
        m = {k: v for k, v in m.items() if k not in ("layers", "classifier")}
        if evaluate and ((epoch + 1) % every == 0 or epoch + 1 == epochs):
            final = evaluate()
            m.update(test_acc=final["acc"], test_spikes=final["spikes"], test_neuron_spikes=final["neuron_spikes"])
        if watcher and watch_every and ((epoch + 1) % watch_every == 0 or epoch + 1 == epochs):
            m.update(watcher(history))
        m["epoch_s"] = time.time() - t0
        wall += m["epoch_s"]
        history.append(m)
        run.log(f"{what} epoch {epoch + 1}/{epochs}: loss {m['loss']:.4f} acc {m['acc']:.4f} "
                f"spikes {m['spikes']:.0f} {m['img_per_s']:.0f} img/s"
                + (f" | test acc {m['test_acc']:.4f} spikes {m['test_spikes']:.0f}" if "test_acc" in m else "")
                + (f" | D_val, {len(m['val_path_acc'])} fixed paths: acc {m['val_acc']:.4f} +- {m['val_acc_sd']:.4f} "
                   f"spikes {m['val_spikes']:.0f} +- {m['val_spikes_sd']:.0f}"
                   + ", tau vs last " + ("-" if m["val_tau"] is None else f"{m['val_tau']:.2f}") if "val_acc" in m else "")
                + f" | {progress(start, epoch + 1, first, epochs)}")
        run.metrics(stage=kind, **m)
        ck = {"kind": kind, "model": net.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
              "history": history, "data_gen": data_gen.get_state(), "rng": rng_states(), "config": cfg.to_dict(),
              "spec": net.spec(), "wall_s": wall, **run.stamp(), **(extra or {})}
        if scheduler is not None:
            ck["scheduler"] = scheduler.state_dict()
        if path_rng is not None:
            ck.update(path_rng=path_rng.getstate(), spike_norm=m["spikes"])
        run.save(ck, CHECKPOINTS[kind])
    if evaluate and final is None:       # resumed after the last epoch's checkpoint
        final = evaluate()
    run.wall[kind] = wall
    return ck, final


# ---------------------------------------------------------------------------------------------
# The stages
# ---------------------------------------------------------------------------------------------

def train_supernet(cfg: Config, ds, run: Run, env: Env) -> dict:
    """Stage 1: the super-network on D_train, one uniformly sampled path per batch.
    Returns its final checkpoint."""
    r = cfg.run
    torch.manual_seed(r.seed)
    net = build_net(cfg, ds.num_classes, ds.input_shape).to(env.device)
    sn = cfg.supernet
    optimizer = torch.optim.Adam(net.parameters(), lr=sn.supernet_lr)
    # opt-in remedies for a super-network that ranks paths poorly; the paper's recipe is the default
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, sn.supernet_epochs)
                 if sn.supernet_schedule == "cosine" else None)
    path_rng = random.Random(r.seed)
    sampler = (lambda: balanced_paths(net.backbone, path_rng)) if sn.path_sampling == "fair" else None
    d_train, d_val = ds.search_split(sn.train_portion)
    ck, _ = fit(cfg, run, env, net, optimizer, "supernet", d_train, sn.supernet_epochs, r.seed,
                f"super-network {r.backbone}", path_rng=path_rng, scheduler=scheduler,
                extra={"num_classes": ds.num_classes, "input_shape": tuple(ds.input_shape)},
                watcher=make_watcher(cfg, net, d_train, d_val, env, run), watch_every=sn.watch_every,
                sampler=sampler)
    run.save_network(net, "supernet_model.pt")
    run.log(f"super-network saved: {run.path / 'supernet_model.pt'}")
    return ck


def make_watcher(cfg: Config, net, d_train, d_val, env: Env, run: Run):
    """watcher(history) for fit: --watch-archs fixed paths (drawn from their own generator, seeded
    by --seed) on the first --watch-images of D_val, each path's BN statistics re-estimated on the
    same --watch-recalib training batches (a generator of their own), as evaluation.watch."""
    sn, r = cfg.supernet, cfg.run
    if not sn.watch_every:
        return None
    archs = distinct_archs(net.backbone, sn.watch_archs, random.Random(r.seed + 1))
    val = d_val.subset(range(min(sn.watch_images, len(d_val))))
    passes = len(archs) * (len(val) + sn.watch_recalib * r.batch_size)
    run.log(f"watching {len(archs)} fixed paths on {len(val)} D_val images every {sn.watch_every} epoch(s), each "
            f"after {sn.watch_recalib} BN re-estimation batches: {passes} images forward per evaluation, beside "
            f"{len(d_train)} trained per epoch (a training step costs about 3 forwards)")

    recalib = same_batches(d_train, r.batch_size, r.seed + 1, sn.watch_recalib, env.device)

    def watcher(history):
        last = next((h["val_path_acc"] for h in reversed(history) if "val_path_acc" in h), None)
        with env.autocast():
            return watch(net, archs, lambda: val.batches(env.eval_batch_size, device=env.device),
                         recalib if sn.watch_recalib else None, last)
    return watcher


def same_batches(split, batch_size: int, seed: int, n: int, device):
    """batches() -> the same first n shuffled batches of `split` at every call (a generator seeded by
    `seed`): what every evaluated path's BN statistics are re-estimated on."""
    def batches():
        g = torch.Generator().manual_seed(seed)
        return itertools.islice(split.batches(batch_size, shuffle=True, generator=g, device=device), n)
    return batches


def search_evaluator(cfg: Config, net, ds, env: Env, bn_recalib: int | None = None):
    """evaluate(archs) -> one record per architecture: the super-network `net` on D_val, as the search
    evaluates (each path's BN statistics first re-estimated on the same --bn-recalib training batches,
    when it is > 0; bn_recalib overrides it)."""
    r, sc = cfg.run, cfg.search
    n = sc.bn_recalib if bn_recalib is None else bn_recalib
    d_train, d_val = ds.search_split(cfg.supernet.train_portion)
    recalib_batches = same_batches(d_train, r.batch_size, sc.search_seed, n, env.device)

    def evaluate(archs):
        with env.autocast():
            return evaluate_archs(net, archs, lambda: d_val.batches(env.eval_batch_size, device=env.device),
                                  recalib_batches if n else None)
    return evaluate


def search_stage(cfg: Config, ds, run: Run, env: Env, ck: dict | None, ck_path) -> str | None:
    """Stage 2: evolutionary search on D_val with the super-network's weights.
    Returns the architecture --pick chooses (written to best_arch.txt). A pick that chooses nothing ends
    --stage search with a warning (None) and --stage all with an error: --resume --pick changes it."""
    r, sc = cfg.run, cfg.search
    ck = ck or load_checkpoint(ck_path, "supernet")
    planned = ck["config"]["supernet"]["supernet_epochs"]
    if ck["epoch"] < planned:
        run.warn("unfinished", f"the super-network {ck_path} stopped at epoch {ck['epoch']} of {planned}; "
                               f"its weights are not those of a finished training (resume its run first?)")
    net = load_supernet(cfg, ck, ds, env.device, ck_path)
    spike_norm = sc.spike_norm or ck["spike_norm"]
    search = make_search(net.backbone, sc, spike_norm, random.Random(sc.search_seed))
    path, wall = run.path / "search.pt", 0.0
    if path.exists():
        state = load_checkpoint(path, "search")
        search.load_state_dict(state["search"])
        set_rng_states(state["rng"])
        wall = state["wall_s"]
        if not search.done:
            run.log(f"resuming the search after {len(search.history)} evaluated architectures")
    run.cut_metrics("search", "generation", search.generation)
    d_val = ds.search_split(cfg.supernet.train_portion)[1]
    if env.compile:
        compile_network(net, log=run.log)
    evaluate = search_evaluator(cfg, net, ds, env)
    last = [time.time()]

    def checkpoint(s):
        nonlocal wall
        gen, took = s.latest(), time.time() - last[0]
        last[0], wall = time.time(), wall + took
        run.metrics(stage="search", generation=s.generation, evaluated=len(gen), gen_s=took,
                    best_fitness=s.best()["fitness"], best_arch=s.best()["arch"],
                    mean_acc=sum(h["acc"] for h in gen) / max(len(gen), 1))
        write_history(run.path, s, run.write_text, run.id)
        run.save({"kind": "search", "search": s.state_dict(), "rng": rng_states(), "config": cfg.to_dict(),
                  "wall_s": wall, **run.stamp()}, "search.pt")

    if not search.done:
        run.log(f"search: {sc.search_algo} on D_val ({len(d_val)} images), lambda {sc.lam}, "
                f"spike_norm {spike_norm:.0f}, {sc.iterations} x {sc.pool}"
                + (f", objectives {sc.objectives}, pick {sc.pick}" if sc.search_algo == "pareto" else ""))
        run_search(search, dist.split_pool(evaluate), checkpoint, run.log, num_classes=ds.num_classes,
                   val_images=len(d_val))
    else:
        write_history(run.path, search, run.write_text, run.id)   # rebuilds a damaged search.json from search.pt
    run.wall["search"] = wall
    try:
        best = pick(search.history, sc.pick)            # the fittest, or the --pick rule's choice from the front
    except AutoSNNError as e:                           # not a dead end: the search is saved, pick again
        if run.writes and (run.path / "best_arch.txt").exists():
            with writing(run.path / "best_arch.txt"):
                (run.path / "best_arch.txt").unlink()   # an earlier pick's choice is not this one's
        how = (f"the search is done and saved, but --pick {sc.pick} chooses nothing ({e}); see the front with "
               f"{python()} runs.py rerank {run.path} --pick knee, then choose with {python()} train.py --resume "
               f"{run.path} --pick RULE")
        if r.stage == "search":
            run.warn("pick", how)
            return None
        raise AutoSNNError(how) from None
    run.write_text(run.path / "best_arch.txt", best["arch"] + "\n")
    run.log(f"chosen architecture (--pick {sc.pick}): {best['arch']} (val acc {best['acc']:.4f}, "
            f"spikes {best['spikes']:.0f}, fitness {best['fitness']:.4f})")
    return best["arch"]


def retrain_stage(cfg: Config, ds, run: Run, env: Env, arch: str, supernet_ck: dict | None = None,
                  supernet_path=None) -> dict:
    """Stage 3: the child network (or a hand-crafted baseline, --model) from scratch on
    the full training set; the final epoch's test accuracy is the result. Returns the results."""
    r, rc = cfg.run, cfg.retrain
    torch.manual_seed(r.seed)          # the same initial weights whichever stages ran before
    net = build_net(cfg, ds.num_classes, ds.input_shape, None if rc.model else resolve_arch(arch, r.backbone))
    net = net.to(env.device)
    if rc.inherit:
        sup = load_supernet(cfg, supernet_ck or load_checkpoint(supernet_path, "supernet"), ds, "cpu",
                            supernet_path)
        net.load_state_dict(sup.path_state_dict(net.arch))
    if rc.optimizer == "adam":
        optimizer = torch.optim.Adam(net.parameters(), lr=rc.retrain_lr)
    else:
        optimizer = torch.optim.SGD(net.parameters(), lr=rc.retrain_lr, momentum=0.9, weight_decay=3e-4)
    milestones = [rc.retrain_epochs // 2, rc.retrain_epochs * 3 // 4] if rc.optimizer == "sgd" else []
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, 0.1)
    test = ds.split("test")
    steps = GraphedSteps(net, loss_fn, env.autocast, run.log) if env.cuda_graphs else None

    def test_eval():
        with env.autocast():
            res = evaluate_model(net, test.batches(env.eval_batch_size, device=env.device),
                                 forward=steps.evaluate if steps else None)
        warn_silent(run, res["per_layer"], "on the test set")
        return res

    label = f"retrain {rc.model or f'{net.arch} on {r.backbone}'}"
    ck, final = fit(cfg, run, env, net, optimizer, "retrain", ds.split("train"), rc.retrain_epochs, r.seed + 1,
                    label, scheduler=scheduler, evaluate=test_eval, every=rc.eval_every, steps=steps)
    run.save_network(net, "model.pt")
    silent = final["silent_layers"]
    results = {"model": rc.model or "autosnn", "arch": None if rc.model else str(net.arch),
               "backbone": None if rc.model else r.backbone, "dataset": ds.name, "T": r.T,
               "epochs": rc.retrain_epochs, "test_acc": final["acc"], "spikes": final["spikes"],
               "neuron_spikes": final["neuron_spikes"], "params": count_parameters(net),
               "per_layer_spikes": final["per_layer"], "silent_layers": silent, "energy": final.get("energy"),
               "best_test_acc_over_epochs": max(h["test_acc"] for h in ck["history"] if "test_acc" in h),
               "model_file": "model.pt",
               "note": "test_acc is the final epoch's; best_test_acc_over_epochs is selected on the test "
                       "set and given only for comparison with the original code's reporting",
               "environment": run.env, "started": run.started, "finished": now(), "wall_s": dict(run.wall)}
    run.write_text(run.path / "results.json", json.dumps(results, indent=1))
    run.log(f"final test accuracy {final['acc']:.4f}, spikes per image {final['spikes']:.0f} "
            f"(neuron outputs only {final['neuron_spikes']:.0f}), {results['params']:,} parameters"
            + (f", energy estimate {final['energy']['energy_uj']:.2f} uJ per image" if final.get("energy") else "")
            + (f"; silent layers: {', '.join(silent)}" if silent else ""))
    return results


DESIGNS = {1: "no GAP; max-pool down-sampling", 2: "spiking GAP before the classifier",
           3: "stride-2 searched blocks", 4: "avg-pool + neuron down-sampling"}


def study_stage(cfg: Config, ds, run: Run, env: Env) -> list[dict]:
    """Design-choice study: SNN_1 (no GAP, max-pool), SNN_2 (GAP), SNN_3 (stride-2
    blocks) and SNN_4 (avg-pool) with one fixed block everywhere, the retraining schedule and the
    same seed. Each variant trains in study/<backbone>/ (resumable); the table goes to study.md/.csv."""
    C, rows, silent = get_backbone(cfg.run.backbone).C, [], {}
    for variant in range(1, 5):
        backbone = f"SNN_{variant}_{C}"
        arch = "-".join([cfg.retrain.study_block] * len(get_backbone(backbone).searched))
        sub = Config.from_flat({**cfg.flat(), "backbone": backbone, "model": "", "arch": arch})
        res = retrain_stage(sub, ds, run.sub(f"study/{backbone}"), env, arch)
        e = res["energy"] or {}
        rows.append({"backbone": backbone, "design": DESIGNS[variant], "test_acc": res["test_acc"],
                     "spikes": res["spikes"], "neuron_spikes": res["neuron_spikes"], "params": res["params"],
                     "energy_uj": e.get("energy_uj"), "ann_energy_uj": e.get("ann_energy_uj")})
        silent[backbone] = res["silent_layers"]
    head = (f"Design-choice study: {cfg.run.dataset}, block {cfg.retrain.study_block} everywhere, T={cfg.run.T}, "
            f"{cfg.retrain.retrain_epochs} epochs, seed {cfg.run.seed}. Energy is an estimate "
            f"({E_AC} pJ/AC, {E_MAC} pJ/MAC).")
    tail = ["Silent layers (no spike on the test set; every layer after one gets no input, see the README's "
            "'Silent layers'):"] + [f"- {b}: {', '.join(names) or 'none'}" for b, names in silent.items()]
    run.log(run.write_table("study", rows, head, tail))
    return rows


def finish(run: Run, stage: str, baseline: bool = False) -> None:
    """The plots, and how to load the result."""
    if run.writes and stage != "study":
        plot_run(run.path, run.log)
    walls = ", ".join(f"{k} {v:.0f}s" for k, v in run.wall.items())
    run.log(f"done: run folder {run.path}" + (f" (wall time {walls})" if walls else ""))
    model_file = {"supernet": "supernet_model.pt", "all": "model.pt", "retrain": "model.pt"}.get(stage)
    if model_file and (run.path / model_file).is_file():
        extra = ", supernet=True" if model_file.startswith("supernet") else ""
        how = ("import baselines; net = baselines.load_model" if baseline and not extra
               else "from autosnn import SpikingNetwork; net = SpikingNetwork.load")
        run.log(f'load it: {how}("{run.path}"{extra})')


if __name__ == "__main__":
    sys.exit(main())
