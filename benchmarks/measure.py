"""Timing helpers shared by bench.py (our own forms) and benchmarks/original.py (beside the original):
device syncs, peak memory, the median of timed repetitions, a random batch, a realistic search pool."""
import random
import statistics
import time
from pathlib import Path

import torch

from evolve import Search, SearchConfig


VAL_IMAGES = 10_000      # the paper's D_val: search rates are scaled to it


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def speedup(ours: float, reference: float) -> float:
    """How many times faster ours is than the reference, both rates (images/s, architectures/min):
    > 1 when ours is faster. The one place a ratio of rates is taken."""
    return ours / reference


def timed(fn, device, reps: int, warmup: int) -> float:
    """Median seconds of fn() over reps runs after warmup runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def evolution_pool(backbone, pool: int, seed: int = 0) -> list:
    """A realistic pool: the second generation of an evolutionary search (mutants and crossovers
    of the fittest of a random first pool), with made-up fitness values."""
    cfg = SearchConfig(iterations=2, pool=pool, topk=max(2, pool // 2), mutations=pool // 2,
                       crossovers=pool // 2)
    s = Search(backbone, cfg, 1e5, random.Random(seed))
    first = s.propose()
    rng = random.Random(seed)
    s.tell(first, [{"acc": rng.random(), "spikes": 1e5, "neuron_spikes": 1e5} for _ in first])
    return s.propose()


def inputs(net, batch, device, generator):
    shape = (batch, net.T, *net.input_shape) if net.stem.kind.startswith("event") else (batch, *net.input_shape)
    x = torch.randn(shape, generator=generator).to(device)
    return x, torch.randint(0, net.num_classes, (batch,), generator=generator).to(device)
