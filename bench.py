"""Speed and memory of the spiking network, beside the original code's one-step-at-a-time form.

    python3 bench.py                                   # AutoSNN_16, T=8, batch 32, CPU, 2 threads
    python3 bench.py --device cuda --batch 96          # on a GPU
    python3 bench.py --json                            # the same figures as JSON
    python3 bench.py --quick --json                    # a few seconds: the test suite runs this
    python3 bench.py --compile                         # neurons compiled (fast.compiled.compile_network)
    python3 bench.py --device cuda --cuda-graphs       # the child's steps replayed as CUDA graphs (fast.graphs)
    python3 bench.py --amp bf16                        # convolutions and classifier under bf16 autocast
    python3 bench.py --end-to-end synthetic            # training fed by data.py vs one batch on the device
    python3 bench.py --original ../AutoSNN --original-site ~/.cache/autosnn-peer-site   # beside the original
    python3 bench.py --fidelity runs/X --archs 12 --epochs 10     # super-network ranking vs stand-alone training
    python3 bench.py --search-quality runs/X --seeds 3            # evolution vs random vs pareto, paired by seed

--original PATH times the original AutoSNN code (github nabk89/AutoSNN, a checkout at PATH; it needs
spikingjelly 0.0.0.0.2, e.g. `pip install --no-deps --target DIR spikingjelly==0.0.0.0.2` and
--original-site DIR) on the same work as ours, alternately (one timed rep of each form in turn),
and prints img/s and ratios (see `original_side` and `beside_original`).

Our network runs as train.py runs it: per-step BatchNorm and convolutions without their copies
(fast/steps.py, bit-identical to the plain forms), and with the options given, compiled and/or as
CUDA graphs.

Figures, each the median of --reps timed repetitions after --warmup untimed ones:
  train img/s     forward + backward + Adam step, train mode
  eval img/s      forward under torch.inference_mode, eval mode
  for the child network of --arch and for the super-network with a random path per batch, each
  also in the one-step-at-a-time form of the same modules (forward_stepwise: the whole network
  stepped T times with neurons under plain autograd, as the original code runs), with the ratio.
  search          architectures evaluated per minute on --search-images validation images, for a
                  pool of --pool architectures proposed by the evolutionary search, evaluated
                  together with shared prefixes, against evaluating each alone in the stepwise form;
                  both scaled to 10,000 images (the paper's D_val).
  memory          saved MiB: the tensors autograd keeps for one training step's backward (what grows
                  with T and the batch); CUDA max allocated per measurement; the process's peak RSS
  scaling         train/eval img/s and memory for T in --scale-T, and for batch sizes in --scale-batch
  agreement       with --compile or --amp: the child network (with --compile in train mode and in
                  eval mode, both of which run the compiled loops) against plain eager fp32 on
                  the same batch: the fraction of neuron outputs (units x steps) that differ, the
                  relative change in spikes per image, and the fraction of images with the same
                  prediction. (Threshold units turn any rounding difference into a spike or none.)
  first step s    with --compile: the first training step, which compiles (compile time)
"""
import argparse
import contextlib
import copy
import json
import os
import random
import sys
import time
from dataclasses import fields

import torch

from autosnn import SpikingNetwork, predict, rate_loss
from benchmarks.measure import VAL_IMAGES, evolution_pool, inputs, peak_mib, reset_peak, speedup, sync, timed
from benchmarks.original import beside_original, original_table
from data import load_dataset
from evaluation import evaluate_pool
from fast.compiled import compile_network
from fast.graphs import WARMUP, GraphedSteps
from fast.steps import use_step_layers
from files import AutoSNNError, Parser
from neurons import Neuron
from plumbing.config import check_threads, resolve_device, tune_cpu_allocator, user_error
from search_space import resolve_arch, sample_arch


def saved_mib(net, x, arch) -> float:
    """Memory autograd keeps for the backward pass of one training forward (activations and the
    weights they need), in MiB: device-independent, and what grows with T and the batch."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    net.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x, arch)
    return sum(storages.values()) / 2**20


def speed(net, x, y, make_path, device, reps, warmup, stepwise=False, amp=None, graphs=False) -> dict:
    """Train and eval images/s of `net`; make_path() gives a fresh path chooser (the same sequence
    of architectures for every form compared). amp: a dtype for torch.autocast, or None.
    graphs: run the steps through fast.graphs.GraphedSteps (captured after its warm-up steps,
    which run untimed here)."""
    forward = net.forward_stepwise if stepwise else net.forward
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    path = make_path()

    def autocast():
        return torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()

    steps = GraphedSteps(net, lambda n, out, y_: rate_loss(out.float(), y_, n.T), autocast, log=lambda line: None,
                         energy=False) if graphs else None
    if graphs:
        warmup = max(warmup, WARMUP + 1)

    def train_step():
        opt.zero_grad(set_to_none=True)
        if steps is not None:
            steps.train(x, y)
        else:
            with autocast():
                out, _ = forward(x, path())
            rate_loss(out.float(), y, net.T).backward()
        opt.step()

    def eval_step():
        if steps is not None:
            steps.evaluate(x)
            return
        with torch.inference_mode(), autocast():
            forward(x, path())

    net.train()
    reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    train_step()                              # the first step (compiles, with --compile)
    sync(device)
    first = time.perf_counter() - t0
    t_train = timed(train_step, device, reps, warmup)
    peak = peak_mib(device) if device.type == "cuda" else None
    net.eval()
    path = make_path()
    t_eval = timed(eval_step, device, reps, warmup)
    return {"train_img_s": len(x) / t_train, "eval_img_s": len(x) / t_eval,
            "train_saved_mib": saved_mib(net, x, make_path()()), "train_peak_mib": peak,
            "first_step_s": first}


def neuron_outputs(net, x, amp=None, train=False) -> tuple:
    """(out [B, K], every neuron layer's output spikes) of one forward: eval mode under
    inference_mode, or (train=True) train mode with autograd on, where compiled neurons run."""
    outputs = []
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.append(o.detach().clone()))
             for m in net.modules() if isinstance(m, Neuron)]
    net.train(train)
    try:
        with (torch.enable_grad() if train else torch.inference_mode()), (torch.autocast(x.device.type, dtype=amp) if amp else contextlib.nullcontext()):
            out, _ = net(x)
    finally:
        for h in hooks:
            h.remove()
    return out.float(), outputs


def agreement(net, reference, x, amp=None, train=False) -> dict:
    """How far `net` (compiled and/or under autocast `amp`) is from `reference` (eager fp32) on one
    batch (train mode with autograd on, or eval mode under inference_mode): fraction
    of neuron outputs that differ, relative change of spikes per image, fraction of images with the
    same prediction."""
    out, spikes = neuron_outputs(net, x, amp, train)
    ref_out, ref_spikes = neuron_outputs(reference, x, None, train)
    differ = sum(int((a != b).sum()) for a, b in zip(spikes, ref_spikes))
    units = sum(a.numel() for a in ref_spikes)
    total, ref_total = sum(float(a.sum()) for a in spikes), sum(float(a.sum()) for a in ref_spikes)
    return {"images": len(x), "mode": "train" if train else "eval", "differing_spike_fraction": differ / units,
            "spike_count_change": (total - ref_total) / max(ref_total, 1.0),
            "same_prediction_fraction": float((predict(out) == predict(ref_out)).float().mean())}


def end_to_end(args, device) -> dict:
    """Training img/s of the child network fed by the real input pipeline (data.py: synthetic
    CIFAR-sized images, or synthetic-dvs event frames with --T frames, batched, augmented and
    normalised on the device, a new batch every step) against the same steps on one batch that is
    already on the device, as the other figures are timed. Their ratio is what feeding costs."""
    event = args.end_to_end == "synthetic-dvs"
    ds = load_dataset(args.end_to_end, T=args.T, n_train=args.batch * (args.reps + args.warmup + 1), n_test=10)
    net = SpikingNetwork(args.backbone, ds.num_classes, resolve_arch(args.arch, args.backbone), args.T,
                         ds.input_shape).to(device)
    use_step_layers(net)
    if args.compile:
        compile_network(net, log=lambda line: None)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    train = ds.split("train")

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        out, _ = net(x)
        rate_loss(out, y, net.T).backward()
        opt.step()

    def fed():
        n, start = 0, None
        batches = train.batches(args.batch, shuffle=True, generator=torch.Generator().manual_seed(0), device=device)
        for i, (x, y) in enumerate(batches):
            if i == args.warmup:
                sync(device)
                start, n = time.perf_counter(), 0
            step(x, y)
            n += len(y)
        sync(device)
        return n / (time.perf_counter() - start)

    net.train()
    fed_img_s = fed()
    g = torch.Generator().manual_seed(1)
    x, y = next(iter(train.batches(args.batch, shuffle=True, generator=g, device=device)))
    on_device = args.batch / timed(lambda: step(x, y), device, args.reps, args.warmup)
    return {"dataset": args.end_to_end, "event": event, "fed_train_img_s": fed_img_s,
            "on_device_train_img_s": on_device, "ratio": speedup(fed_img_s, on_device)}


def search_speed(net, x, y, archs, device, reps, warmup) -> dict:
    """Architectures per minute (scaled to 10,000 validation images): the pool together with
    shared prefixes, and each architecture alone in the stepwise form."""
    batches = [(x, y)]
    t_pool = timed(lambda: evaluate_pool(net, archs, batches), device, reps, warmup)

    def one_by_one():
        net.eval()
        with torch.inference_mode():
            for a in archs:
                net.forward_stepwise(x, a)

    t_alone = timed(one_by_one, device, reps, warmup)
    scale = VAL_IMAGES / len(x)
    pool_rate = len(archs) / (t_pool * scale) * 60
    alone_rate = len(archs) / (t_alone * scale) * 60
    return {"pool": len(archs), "images": len(x), "archs_per_min": pool_rate,
            "stepwise_archs_per_min": alone_rate, "ratio": speedup(pool_rate, alone_rate)}


def run(args) -> dict:
    device = torch.device(args.device)
    if args.end_to_end:
        if args.threads:
            torch.set_num_threads(args.threads)
        return {"config": {"backbone": args.backbone, "T": args.T, "batch": args.batch, "device": str(device),
                           "threads": torch.get_num_threads(), "torch": torch.__version__},
                "end_to_end": end_to_end(args, device)}
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cpu" and not args.no_allocator_tuning:
        tune_cpu_allocator()              # as train.py does
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    child = SpikingNetwork(args.backbone, 10, resolve_arch(args.arch, args.backbone), args.T).to(device)
    sup = SpikingNetwork(args.backbone, 10, None, args.T).to(device)
    x, y = inputs(child, args.batch, device, g)
    amp = {"bf16": torch.bfloat16, "none": None}[args.amp]
    eager_child = copy.deepcopy(child)
    notes = []
    for net in (child, sup):
        use_step_layers(net)                # as train.py runs them (bit-identical)
    if args.compile:
        for net in (child, sup):
            compile_network(net, log=notes.append)

    def fixed():
        return lambda: None

    def random_path():
        rng = random.Random(0)
        return lambda: sample_arch(sup.backbone, rng)

    res = {"config": {"backbone": args.backbone, "arch": str(child.arch), "T": args.T, "batch": args.batch,
                      "device": str(device), "threads": torch.get_num_threads(), "reps": args.reps,
                      "allocator_tuning": device.type == "cpu" and not args.no_allocator_tuning,
                      "torch": torch.__version__, "compile": args.compile, "cuda_graphs": args.cuda_graphs,
                      "amp": args.amp, "notes": notes}}
    if args.compile or amp is not None:
        res["agreement"] = [agreement(child, eager_child, x, amp, train=train)
                            for train in ((True, False) if args.compile else (False,))]
    if args.cuda_graphs:
        GraphedSteps(child, None, log=notes.append)     # says where graphs cannot run (the CPU)
    for name, net, path in (("child", child, fixed), ("supernet", sup, random_path)):
        ours = speed(net, x, y, path, device, args.reps, args.warmup, amp=amp,
                     graphs=args.cuda_graphs and name == "child")
        ref = speed(net, x, y, path, device, args.reps, args.warmup, stepwise=True)
        res[name] = {**ours, "stepwise": ref,
                     "train_ratio": speedup(ours["train_img_s"], ref["train_img_s"]),
                     "eval_ratio": speedup(ours["eval_img_s"], ref["eval_img_s"])}
    xv, yv = inputs(child, args.search_images, device, g)
    res["search"] = search_speed(sup, xv, yv, evolution_pool(sup.backbone, args.pool), device,
                                 args.reps, args.warmup)
    res["scale_T"] = []
    for T in args.scale_T:
        net = SpikingNetwork(args.backbone, 10, child.arch, T).to(device)
        use_step_layers(net)
        if args.compile:
            compile_network(net, log=lambda line: None)
        row = {"T": T, **speed(net, x, y, fixed, device, args.reps, args.warmup, amp=amp)}
        net.checkpoint = True
        ck = speed(net, x, y, fixed, device, args.reps, args.warmup, amp=amp)
        row["checkpointed"] = {k: ck[k] for k in ("train_img_s", "train_saved_mib", "train_peak_mib")}
        res["scale_T"].append(row)
    res["scale_batch"] = []
    for b in args.scale_batch:
        xb, yb = inputs(child, b, device, g)
        res["scale_batch"].append({"batch": b, **speed(child, xb, yb, fixed, device, args.reps, args.warmup,
                                                       amp=amp)})
    res["process_peak_rss_mib"] = peak_mib(torch.device("cpu"))
    return res


def table(res: dict) -> str:
    c = res["config"]
    if "end_to_end" in res:
        e = res["end_to_end"]
        return (f"{c['backbone']} child, T={c['T']}, batch {c['batch']}, {c['device']}, {c['threads']} threads, "
                f"torch {c['torch']}: training fed by data.py ({e['dataset']}) {e['fed_train_img_s']:.1f} img/s, "
                f"on one batch already on the device {e['on_device_train_img_s']:.1f} img/s (ratio {e['ratio']:.2f})")
    form = " ".join(w for w, on in (("compiled neurons", c["compile"]), ("CUDA graphs (child)", c.get("cuda_graphs")),
                                     (f"autocast {c['amp']}", c["amp"] != "none"))
                    if on) or "eager fp32"
    lines = [f"{c['backbone']} {c['arch']}, T={c['T']}, batch {c['batch']}, {c['device']}, {c['threads']} threads, "
             f"torch {c['torch']}, {form} (medians of {c['reps']})", *c["notes"], "",
             f"{'':10} {'train img/s':>12} {'stepwise':>10} {'ratio':>6}   {'eval img/s':>11} {'stepwise':>10} "
             f"{'ratio':>6}   {'saved MiB':>9}"]
    for name in ("child", "supernet"):
        r = res[name]
        lines.append(f"{name:10} {r['train_img_s']:12.1f} {r['stepwise']['train_img_s']:10.1f} "
                     f"{r['train_ratio']:6.2f}   {r['eval_img_s']:11.1f} {r['stepwise']['eval_img_s']:10.1f} "
                     f"{r['eval_ratio']:6.2f}   {r['train_saved_mib']:9.0f}")
    lines.append(f"first training step (compiles with --compile): child {res['child']['first_step_s']:.1f} s, "
                 f"super-network {res['supernet']['first_step_s']:.1f} s")
    for a in res.get("agreement", []):
        lines.append(f"agreement with eager fp32 (child, {a['mode']}, {a['images']} images): "
                     f"{100 * a['differing_spike_fraction']:.4f}% of neuron outputs differ, spikes per image "
                     f"{100 * a['spike_count_change']:+.4f}%, same prediction on {100 * a['same_prediction_fraction']:.1f}%")
    s = res["search"]
    lines += ["", f"search: pool of {s['pool']} on {s['images']} images, scaled to {VAL_IMAGES:,}: "
                  f"{s['archs_per_min']:.2f} architectures/min together (shared prefixes) vs "
                  f"{s['stepwise_archs_per_min']:.2f} one by one stepwise, ratio {s['ratio']:.2f}", "",
              f"{'T':>4} {'train img/s':>12} {'eval img/s':>11} {'saved MiB':>10} {'peak MiB':>9}   "
              f"with activation checkpointing: {'train img/s':>11} {'saved MiB':>9} {'peak MiB':>9}"]
    lines += [f"{r['T']:4d} {r['train_img_s']:12.1f} {r['eval_img_s']:11.1f} {r['train_saved_mib']:10.0f} "
              f"{r['train_peak_mib'] or float('nan'):9.0f}   {'':30} {r['checkpointed']['train_img_s']:11.1f} "
              f"{r['checkpointed']['train_saved_mib']:9.0f} {r['checkpointed']['train_peak_mib'] or float('nan'):9.0f}"
              for r in res["scale_T"]]
    lines += ["", f"{'batch':>5} {'train img/s':>12} {'eval img/s':>11} {'saved MiB':>10} {'peak MiB':>9}"]
    lines += [f"{r['batch']:5d} {r['train_img_s']:12.1f} {r['eval_img_s']:11.1f} {r['train_saved_mib']:10.0f} "
              f"{r['train_peak_mib'] or float('nan'):9.0f}" for r in res["scale_batch"]]
    lines += ["", "saved MiB: tensors autograd keeps for the backward pass of one training step; peak MiB:"
                  " CUDA max allocated (CPU: see the process peak RSS below)",
              f"process peak RSS: {res['process_peak_rss_mib'] or float('nan'):.0f} MiB"]
    return "\n".join(lines)


def options_from(parser, *kinds) -> None:
    """Add each field of the dataclasses `kinds` as --name-with-dashes (once; absent unless given, so
    each dataclass keeps its own default)."""
    have = set(parser._option_string_actions)
    g = parser.add_argument_group("--fidelity / --search-quality options")
    for kind in kinds:
        for f in fields(kind):
            name = "--" + f.name.replace("_", "-")
            if name not in have:
                have.add(name)
                g.add_argument(name, dest=f.name, type=type(f.default), default=argparse.SUPPRESS,
                               help=f"{f.metadata.get('help', '')} (default {f.default!r})".replace("%", "%%"))


def measure_searches(args, mode: str) -> int:
    """--fidelity / --search-quality: the options of that mode only, one line for any error."""
    from benchmarks.fidelity import FidelityConfig, fidelity
    from benchmarks.fidelity import text as fidelity_text
    from benchmarks.quality import QualityConfig, search_quality
    from benchmarks.quality import text as quality_text
    from benchmarks.standalone import say
    kind = FidelityConfig if mode == "fidelity" else QualityConfig
    mine = {f.name for f in fields(kind)}
    others = {f.name for k in (FidelityConfig, QualityConfig) for f in fields(k)} - mine
    given = sorted(n for n in others if hasattr(args, n))
    try:
        if given:
            raise AutoSNNError(f"--{given[0].replace('_', '-')} is not an option of --{mode.replace('_', '-')}")
        opts = kind(**{n: getattr(args, n) for n in mine if hasattr(args, n)})
        if mode == "fidelity":
            doc = fidelity(args.fidelity, opts, args.threads, args.device)
        else:
            doc = search_quality(args.search_quality, opts, args.pool, args.quick, args.threads, args.device)
    except AutoSNNError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        say("\ninterrupted; rerun the same command to continue where it stopped")
        return 130
    print(json.dumps(doc, indent=1) if args.json else (fidelity_text if mode == "fidelity" else quality_text)(doc))
    return 0


# What --quick sets: a tiny configuration that runs in seconds (the test suite runs it)
QUICK = {"backbone": "AutoSNN_4", "T": 2, "batch": 4, "reps": 1, "warmup": 1, "pool": 4, "search_images": 8,
         "scale_T": [2, 3], "scale_batch": [2, 4]}


def check_args(args, given: set) -> None:
    """bench.py's options, checked as train.py checks its own (plumbing/config.py's rules where they are
    the same option), before anything runs. given: the options typed. Raises AutoSNNError."""
    clash = sorted(f"--{k.replace('_', '-')}" for k in QUICK if f"--{k.replace('_', '-')}" in given)
    if args.quick and clash and not (args.search_quality or args.fidelity):   # there --quick: 3 iterations only
        raise AutoSNNError(f"--quick sets {', '.join(clash)} itself (to {', '.join(str(QUICK[c[2:].replace('-', '_')]) for c in clash)}); "
                           f"drop {' and '.join(clash)} or drop --quick")
    resolve_device(args.device)
    check_threads(args.threads)
    for name, low in (("T", 1), ("batch", 1), ("reps", 1), ("warmup", 0), ("pool", 1), ("search_images", 1)):
        if getattr(args, name) < low:
            raise AutoSNNError(f"--{name.replace('_', '-')} must be an integer >= {low} (got {getattr(args, name)})")
    for name in ("scale_T", "scale_batch"):
        if any(v < 1 for v in getattr(args, name)):
            raise AutoSNNError(f"--{name.replace('_', '-')} values must be integers >= 1 (got {getattr(args, name)})")
    user_error(resolve_arch, args.arch, args.backbone)


def main(argv=None) -> int:
    p = Parser(prog="bench.py", description=__doc__.split("\n\n")[0], allow_abbrev=False,
               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--backbone", default="AutoSNN_16", help="backbone (default AutoSNN_16)")
    p.add_argument("--arch", default="AutoSNN", help="child architecture (default AutoSNN, the paper's)")
    p.add_argument("--T", type=int, default=8, help="time steps (default 8)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                   help="CPU threads, 0 = torch's default (default 2, or 1 on a one-CPU machine)")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed repetitions first (default 2)")
    p.add_argument("--pool", type=int, default=20, help="architectures in the search pool (default 20)")
    p.add_argument("--search-images", type=int, default=256, help="validation images timed (default 256)")
    p.add_argument("--scale-T", type=int, nargs="*", default=[2, 4, 8, 16], help="T values (default 2 4 8 16)")
    p.add_argument("--scale-batch", type=int, nargs="*", default=[16, 32, 64, 96], help="batch sizes")
    p.add_argument("--compile", action="store_true", help="compile the neuron layers (fast.compiled.compile_network)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="the child's steps as CUDA graphs (fast.graphs; with --original: a form of its own)")
    p.add_argument("--amp", choices=("none", "bf16"), default="none",
                   help="run forwards under torch.autocast in bf16 (default none)")
    p.add_argument("--no-allocator-tuning", action="store_true",
                   help="leave glibc's allocator thresholds as they are (train.py raises them)")
    p.add_argument("--end-to-end", choices=("synthetic", "synthetic-dvs"), default=None,
                   help="instead: training fed by data.py's batches against one batch on the device")
    p.add_argument("--original", metavar="PATH", default=None,
                   help="time the original AutoSNN code at PATH beside ours, alternately (see above)")
    p.add_argument("--original-site", metavar="DIR", default=None,
                   help="a folder where spikingjelly 0.0.0.0.2 is importable, for --original")
    p.add_argument("--quick", action="store_true", help="a tiny configuration that runs in seconds")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--search-quality", metavar="RUN", help="instead: evolution, random and pareto search on "
                   "RUN's super-network at the same budget, paired by seed (benchmarks/quality.py)")
    p.add_argument("--fidelity", metavar="RUN", help="instead: RUN's super-network's ranking of architectures "
                   "against training them stand-alone (benchmarks/fidelity.py)")
    from benchmarks.fidelity import FidelityConfig
    from benchmarks.quality import QualityConfig
    options_from(p, FidelityConfig, QualityConfig)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    if args.fidelity and args.search_quality:
        p.error("give one of --fidelity and --search-quality")
    try:
        check_args(args, {a.split("=")[0] for a in argv if a.startswith("--")})
    except ValueError as e:                     # AutoSNNError included: one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.fidelity or args.search_quality:
        return measure_searches(args, "fidelity" if args.fidelity else "search_quality")
    vars(args).update(QUICK if args.quick else {})
    try:
        res = beside_original(args) if args.original else run(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=1) if args.json else (original_table if args.original else table)(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
