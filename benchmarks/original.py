"""bench.py --original PATH: the original AutoSNN code timed beside ours on the same work.

PATH is a checkout of the original code (github nabk89/AutoSNN); it needs spikingjelly 0.0.0.0.2
importable (`pip install --no-deps --target DIR spikingjelly==0.0.0.0.2`, then --original-site DIR).
Each form (original, ours eager, ours compiled with --compile, ours as CUDA graphs with
--cuda-graphs: the child's steps only) runs one timed repetition in turn, so load changes touch all
of them alike; medians of --reps. "Ours" runs as train.py does: per-step BatchNorm and
convolutions without their copies (fast/steps.py, bit-identical). The original is imported here
only, never by the tests.
"""
import copy
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from autosnn import SpikingNetwork, rate_loss
from benchmarks.measure import VAL_IMAGES, evolution_pool, inputs, speedup, sync
from evaluation import evaluate_pool
from fast.compiled import compile_network
from fast.graphs import WARMUP, GraphedSteps
from fast.steps import use_step_layers
from neurons import Neuron
from plumbing.config import tune_cpu_allocator
from search_space import resolve_arch, sample_arch


def original_side(path, site, backbone, T, device):
    """The original code's networks and how to drive them: a dict of callables, each one step of
    the same work as ours. The original runs the net one time step at a time with spikingjelly
    0.0.0.0.2 neurons, counts spikes with .item() per layer, needs functional.reset_net after every
    batch, and its zero_grad zeroed gradients in place (torch 1.4), which set_to_none=False keeps."""
    root = Path(path).resolve()
    if not (root / "space.py").is_file() or not (root / "train_supernet").is_dir():
        raise ValueError(f"--original {path}: not a checkout of the original AutoSNN code (no space.py, "
                         "train_supernet/)")
    for name in (p.stem for p in root.glob("*.py")):     # its top-level modules must be its own
        where = getattr(sys.modules.get(name), "__file__", None)
        if where is not None and Path(where).resolve().parent != root:
            raise ValueError(f"--original {path}: its module {name!r} is already imported from {where}")
    for p in ([str(Path(site).expanduser().resolve())] if site else []) + [str(root)]:
        sys.path.insert(0, p)
    if not torch.cuda.is_available():          # the original calls .cuda() in places: a no-op on CPU
        torch.Tensor.cuda = lambda self, *a, **k: self
        torch.nn.Module.cuda = lambda self, *a, **k: self
    try:
        import space  # noqa: F401
        from retrain import childnet
        from spikingjelly.clock_driven import functional
        from train_supernet import supernet
    except ImportError as e:
        raise ValueError(f"--original {path}: cannot import the original code ({e}); it needs spikingjelly "
                         "0.0.0.0.2: pip install --no-deps --target DIR spikingjelly==0.0.0.0.2, then "
                         "--original-site DIR") from None
    import logging
    logging.disable(logging.CRITICAL)                           # the original logs every forward
    snn = {"T": T, "init_tau": 2.0, "v_threshold": 1.0, "neuron": "PLIF", "is_DVS_data": False}
    macro = space.MACRO_SEARCH_SPACE[backbone]

    def block_ids(arch):
        """Our Arch -> the original's per-position ids (-1 at a fixed max-pool)."""
        names = iter(arch)
        return __import__("numpy").array([-1 if c == "m" else space.CANDIDATE_BLOCKS.index(next(names))
                                          for c in macro["block_channels"]])
    ns = __import__("types").SimpleNamespace
    return {"childnet": childnet, "supernet": supernet, "functional": functional, "snn": snn,
            "block_ids": block_ids, "ns": ns, "macro": macro}


def beside_original(args) -> dict:
    """img/s of the original and of ours (eager, and with --compile compiled) on the same batches,
    one timed repetition of each form in turn, medians of --reps: child and super-network (a
    random path per step) training and evaluation, and the search (a pool of --pool architectures:
    ours with shared prefixes, evaluation.evaluate_pool; the original one architecture at a time)."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cpu" and not args.no_allocator_tuning:
        tune_cpu_allocator()
    o = original_side(args.original, args.original_site, args.backbone, args.T, device)
    F = torch.nn.functional
    torch.manual_seed(0)
    arch = resolve_arch(args.arch, args.backbone)
    ours = {"child": SpikingNetwork(args.backbone, 10, arch, args.T).to(device),
            "supernet": SpikingNetwork(args.backbone, 10, None, args.T).to(device)}
    for net in ours.values():
        use_step_layers(net)                # as train.py runs them (bit-identical)
    compiled, notes = {}, []
    if args.compile:
        for name, net in ours.items():
            compiled[name] = compile_network(copy.deepcopy(net), log=notes.append)
    graphed = graphs = None                     # CUDA graphs of the child (of the compiled one with --compile)
    if args.cuda_graphs:
        graphed = copy.deepcopy(compiled.get("child", ours["child"]))
        graphs = GraphedSteps(graphed, lambda n, out, y_: rate_loss(out, y_, n.T), log=notes.append, energy=False)
    random.seed(0)
    theirs = {"child": o["childnet"].SpikingNetwork(args.backbone, 10, o["snn"], arch=list(_with_pools(arch, o)),
                                                     args=o["ns"](dataset_name="CIFAR10", macro_type=args.backbone,
                                                                  arch="bench")).to(device),
              "supernet": o["supernet"].SpikingNetwork(args.backbone, 10, o["snn"], o["ns"](
                  dataset_name="CIFAR10", search_space=args.backbone)).to(device)}
    g = torch.Generator().manual_seed(0)
    x, y = inputs(ours["child"], args.batch, device, g)
    reset = o["functional"].reset_net

    def our_step(net, train, rng):
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        steps = graphs if net is graphed else None

        def step():
            path = None if net.arch is not None else sample_arch(net.backbone, rng)
            if train:
                opt.zero_grad(set_to_none=True)
                if steps is not None:
                    steps.train(x, y)
                else:
                    out, _ = net(x, path)
                    rate_loss(out, y, net.T).backward()
                opt.step()
            elif steps is not None:
                steps.evaluate(x)
            else:
                with torch.inference_mode():
                    net(x, path)
        return step

    def their_step(net, train, rng):
        """The same sequence of paths as our_step with the same rng (a random path costs from a skip
        to a 5x5 SRB per position, so the two sides must not draw their own)."""
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        supernet = net is theirs["supernet"]

        def step():
            args_ = (o["block_ids"](sample_arch(ours["supernet"].backbone, rng)),) if supernet else ()
            if train:
                opt.zero_grad(set_to_none=False)
                out = net(x, *args_)[0]
                F.mse_loss(out / args.T, F.one_hot(y, 10).float()).backward()
                opt.step()
            else:
                with torch.no_grad():
                    net(x, *args_)
            reset(net)
        return step

    pool = evolution_pool(ours["supernet"].backbone, args.pool)
    xv, yv = inputs(ours["child"], args.search_images, device, g)

    def our_search(net):
        return lambda: evaluate_pool(net, pool, [(xv, yv)])

    def their_search(net):
        ids = [o["block_ids"](a) for a in pool]

        def search():
            net.eval()
            with torch.no_grad():
                for b in ids:
                    net(xv, b)
                    reset(net)
        return search

    rows = []
    for case, train in (("child train", True), ("child eval", False), ("super-network train", True),
                        ("super-network eval", False), ("search", False)):
        key = "child" if case.startswith("child") else "supernet"
        forms = {"original": theirs[key], "ours": ours[key], **({"ours compiled": compiled[key]} if compiled else {}),
                 **({"ours graphs": graphed} if graphed is not None and key == "child" else {})}
        for net in forms.values():
            net.train(train)
        if case == "search":
            steps = {f: (their_search(n) if f == "original" else our_search(n)) for f, n in forms.items()}
        else:
            steps = {f: (their_step(n, train, random.Random(1)) if f == "original" else our_step(n, train, random.Random(1)))
                     for f, n in forms.items()}
        first, times = {}, {f: [] for f in steps}
        for f, step in steps.items():
            sync(device)
            t = time.perf_counter()
            step()                                   # compiles, with --compile
            sync(device)
            first[f] = time.perf_counter() - t
            for _ in range(max(args.warmup - 1, WARMUP if f == "ours graphs" else 0)):
                step()                               # a graph is captured after WARMUP eager steps
        for _ in range(args.reps):                   # interleaved: every form once per repetition
            for f, step in steps.items():
                sync(device)
                t = time.perf_counter()
                step()
                sync(device)
                times[f].append(time.perf_counter() - t)
        med = {f: statistics.median(ts) for f, ts in times.items()}
        if case == "search":                          # architectures per minute on 10,000 images
            rate = {f: len(pool) / (m * VAL_IMAGES / len(xv)) * 60 for f, m in med.items()}
        else:
            rate = {f: len(x) / m for f, m in med.items()}
        rows.append({"case": case, "unit": "arch/min" if case == "search" else "img/s", "rate": rate,
                     "ratio": {f: speedup(r, rate["original"]) for f, r in rate.items() if f != "original"},
                     "first_s": first, "median_s": med})
    compile_s = sum({id(m.loops): m.loops.compile_s for net in compiled.values() for m in net.modules()
                     if isinstance(m, Neuron) and m.loops is not None}.values())
    return {"config": {"backbone": args.backbone, "arch": str(arch), "T": args.T, "batch": args.batch,
                       "search_images": args.search_images, "pool": args.pool, "device": str(device),
                       "threads": torch.get_num_threads(), "reps": args.reps, "torch": torch.__version__,
                       "compile": args.compile, "cuda_graphs": args.cuda_graphs, "notes": notes},
            "rows": rows, "compile_s": compile_s if compiled else None}


def _with_pools(arch, o):
    """Our Arch -> the original's block-name list, 'max_pool_k2' at the fixed pools."""
    names = iter(arch)
    return ["max_pool_k2" if c == "m" else next(names) for c in o["macro"]["block_channels"]]


def original_table(res: dict) -> str:
    c = res["config"]
    forms = [f for f in res["rows"][0]["rate"]]
    lines = [f"{c['backbone']} {c['arch']}, T={c['T']}, batch {c['batch']} (search: pool of {c['pool']} on "
             f"{c['search_images']} images, scaled to {VAL_IMAGES:,}), {c['device']}, {c['threads']} threads, torch "
             f"{c['torch']}; medians of {c['reps']} interleaved repetitions", *c["notes"], "",
             f"{'':28}" + "".join(f"{f:>15}" for f in forms) + "".join(f"{'ratio' + f[4:]:>17}" for f in forms[1:])]
    for r in res["rows"]:                       # CUDA graphs: the child rows only ("-" elsewhere)
        lines.append(f"{r['case'] + ' ' + r['unit']:28}"
                     + "".join(f"{r['rate'][f]:15.2f}" if f in r["rate"] else f"{'-':>15}" for f in forms)
                     + "".join(f"{r['ratio'][f]:16.2f}x" if f in r["ratio"] else f"{'-':>17}" for f in forms[1:]))
    if res["compile_s"] is not None:
        first = {r["case"]: r["first_s"]["ours compiled"] for r in res["rows"]}
        lines.append("compile: " + f"{res['compile_s']:.1f} s in calls that compiled a neuron-loop graph; first "
                     "call " + ", ".join(f"{k} {v:.1f} s" for k, v in first.items()))
    return "\n".join(lines)


