"""Several processes (GPUs or machines) with torch.distributed: what train.py needs, in one place.

A reader of the single-process path can skip this file: without a process group (plain
`python3 train.py`) every function here is a no-op or returns its input.

    torchrun --nproc_per_node 8 train.py --dataset cifar10 --preset paper            # one node, 8 GPUs
    torchrun --nnodes 2 --node_rank R --nproc_per_node 8 \\
             --rdzv-backend c10d --rdzv-endpoint HOST:29500 train.py ...               # on each node
    torchrun --nproc_per_node 2 train.py --device cpu --threads 1 --dry-run           # gloo on a CPU

The scheme (data parallel, every rank runs the same code from the same seeds):
  * Every rank builds the SAME global batch from the same generator (so the data order does not
    depend on the number of ranks) and keeps its contiguous slice: `shard`.
  * Every rank samples the SAME path: the path RNG is seeded and advanced identically everywhere.
  * After backward, the gradients that exist (the sampled path's; unsampled candidates keep
    grad None, so Adam skips them exactly as in one process) are summed over ranks in one
    coalesced all-reduce, each rank's weighted by its share of the batch: `average_gradients`.
    Every rank then holds the same averaged gradient and takes the same optimizer step.
  * BatchNorm normalises each step over the rank's own shard (per-rank statistics); the running
    statistics are averaged over ranks at the end of every epoch, before anything evaluates or
    saves them: `average_bn_stats`.
  * Search: each generation's pool is split across ranks (each rank keeps the shared-prefix
    evaluation of its part) and the results gathered, so the history is identical: `split_pool`.
  * Metrics are summed over ranks (`sum_over_ranks`); only rank 0 writes files (`is_main`).

Failures: the process group has a timeout (AUTOSNN_DIST_TIMEOUT seconds, default 600), and a
collective that fails (a rank died, or did not answer in time) or a SIGTERM from the launcher
raises RankFailure: one line on every surviving rank. Rank 0 writes checkpoints atomically, so
the last one stays intact; resume with the same or another number of ranks.

Leaving: `shutdown()` at the end of train.main (in a finally; atexit is only a fallback) destroys
the process group with SIGTERM ignored, so that torchrun's SIGTERM to the survivors of a failure
cannot stop the teardown halfway (gloo's threads would then abort the interpreter at exit).
"""
from __future__ import annotations

import atexit
import os
import re
import signal
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as td

from files import AutoSNNError


class RankFailure(AutoSNNError):
    """Another process of the job stopped, or did not answer within the timeout."""


@dataclass
class _Job:
    """This process's place in the job, as setup() found it."""
    rank: int = 0
    world: int = 1
    resume_hint: str = "continue with --resume <run folder>"


# One per process, like the process group itself: written by setup() and shutdown() only. The rank
# lives here rather than being asked of torch.distributed because a message written during or after
# the teardown (a SIGTERM, an atexit handler) would read rank 0 from a group that no longer exists.
_JOB = _Job()


def active() -> bool:
    return td.is_available() and td.is_initialized()


def world_size() -> int:
    return _JOB.world


def rank() -> int:
    return _JOB.rank


def is_main() -> bool:
    """True on the rank that writes the run folder (rank 0), and in a single process."""
    return rank() == 0


def timeout_s() -> int:
    return int(os.environ.get("AUTOSNN_DIST_TIMEOUT", "600"))


def setup(device: str, batch_size: int, run_dir=None) -> None:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise do nothing.

    device: the --device option ('' = cuda when available). CUDA runs NCCL with one GPU per rank
    (cuda:LOCAL_RANK becomes the current device, so torch.device('cuda') means it); CPU runs gloo.
    Checks, before joining, that the global batch_size divides by the number of ranks and that
    the node has a GPU for each of its ranks: every rank raises the same one-line error.
    run_dir: named in the resume hint of a failure. Pair with shutdown()."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 or active():
        return
    if batch_size % world:
        raise AutoSNNError(f"--batch-size {batch_size} is the global batch and must divide by the {world} "
                           f"processes; use a multiple of {world}")
    cuda = device.startswith("cuda") or (device == "" and torch.cuda.is_available())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        if ":" in device:
            raise AutoSNNError(f"--device {device}: under torchrun give --device cuda; rank r uses cuda:LOCAL_RANK")
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        have = torch.cuda.device_count()
        if have < local_world:
            raise AutoSNNError(f"{local_world} processes on this node need {local_world} GPUs, but "
                               f"{have} {'is' if have == 1 else 'are'} visible; lower --nproc_per_node")
        torch.cuda.set_device(local_rank)
    try:
        td.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s()))
    except (RuntimeError, ValueError) as e:     # rendezvous failed or timed out
        raise RankFailure(f"could not join the {world} processes: {_first_line(e)}") from None
    _JOB.rank, _JOB.world = td.get_rank(), td.get_world_size()
    atexit.unregister(shutdown)
    atexit.register(shutdown)          # a fallback: train.main calls shutdown() itself
    signal.signal(signal.SIGTERM, _on_sigterm)
    if run_dir is not None:
        _JOB.resume_hint = f"continue with: torchrun ... train.py --resume {run_dir}"
        _check_same_folder(Path(run_dir))


def _check_same_folder(run_dir: Path) -> None:
    """Every rank resumes from rank 0's checkpoints, so every rank must see the same run folder."""
    view = sorted((p.name, p.stat().st_size) for p in run_dir.glob("*.pt")) if run_dir.is_dir() else None
    views = [None] * world_size()
    _collective(td.all_gather_object, views, view)
    if any(v != views[0] for v in views):
        bad = next(r for r, v in enumerate(views) if v != views[0])
        raise AutoSNNError(f"rank {bad} does not see the run folder {run_dir} as rank 0 does; on several "
                           f"machines put it on a filesystem that every machine reads")


def shutdown() -> None:
    """Leave the process group: the last thing a rank does (train.main's finally; atexit runs it
    too, as a fallback). Idempotent; a no-op in a single process.

    SIGTERM is ignored first: torchrun sends it to the survivors when a rank fails, and one that
    arrives inside destroy_process_group() would stop it halfway with a second traceback (and, as
    observed, gloo's threads then aborted the interpreter at exit: "terminate
    called without an active exception", SIGABRT)."""
    if _JOB.world == 1:
        return
    _ignore_sigterm()
    if active():
        try:
            td.destroy_process_group()
        except RuntimeError:        # a dead peer's group may fail to close cleanly; the job is over
            pass


def _ignore_sigterm() -> None:
    """From the first failure or the start of shutdown on, the process is on its way out with its
    one line said: a (further) SIGTERM must not raise a second error inside the teardown."""
    if threading.current_thread() is threading.main_thread():     # signal.signal's requirement
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _on_sigterm(signum, frame):
    # torchrun sends SIGTERM to the others when one rank fails: stop with a line, not a traceback
    _ignore_sigterm()
    raise RankFailure(f"rank {rank()}: stopped by the launcher (another process of this job failed); "
                      f"the last checkpoint is intact; {_JOB.resume_hint}")


def _first_line(e: BaseException) -> str:
    """The gist of a backend error: its first sentence, without a source-file location."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(e).strip().split("\n")[0])
    return text.split(". ")[0].rstrip(".")


def _collective(fn, *args, **kwargs):
    """Run a collective; turn a dead or silent peer into one clear line on this rank."""
    try:
        return fn(*args, **kwargs)
    except RuntimeError as e:           # DistBackendError, gloo/NCCL errors and timeouts all derive from it
        _ignore_sigterm()
        raise RankFailure(f"rank {rank()}: another process of this job stopped or did not answer within "
                          f"{timeout_s()} s ({_first_line(e)}); the last checkpoint is intact; "
                          f"{_JOB.resume_hint}") from None


def shard(batches):
    """This rank's contiguous slice of every global batch: (x [B, ...], y [B]) -> (x [B/N, ...], y [B/N]).

    A final batch smaller than the number of ranks is skipped on every rank (a rank cannot run an
    empty shard); it only occurs when the split's size modulo the batch size is below N."""
    if not active():
        yield from batches
        return
    n, r = world_size(), rank()
    for x, y in batches:
        if len(y) < n:
            continue
        yield x.tensor_split(n)[r], y.tensor_split(n)[r]


def _all_reduce(tensors: list, count, mean: bool) -> torch.Tensor:
    """One coalesced all-reduce of `tensors` and this rank's `count`, written back into the tensors:
        mean=False:  t <- sum_r t_r
        mean=True:   t <- sum_r count_r * t_r / sum_r count_r    (a count-weighted mean over ranks)
    tensors: same-dtype tensors of any shapes, the same list (shapes, order) on every rank.
    Returns sum_r count_r as a 1-element tensor (no host sync). The one place that flattens."""
    flat = torch.cat([t.reshape(-1) for t in tensors] + [tensors[0].new_full((1,), count)])
    if mean:
        flat[:-1].mul_(count)
    _collective(td.all_reduce, flat)
    if mean:
        flat[:-1].div_(flat[-1])
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
    return flat[-1:]


def average_gradients(net: torch.nn.Module, n_local: int) -> None:
    """grad <- sum over ranks of (n_r / n) * grad_r for every parameter whose grad is not None.

    With a shard mean loss on every rank this is exactly the gradient of the global batch's mean
    loss. One coalesced all-reduce; the sampled path decides which grads exist, and it is the same
    on every rank, so every rank packs the same list. Parameters with grad None stay None."""
    if not active():
        return
    _all_reduce([p.grad for p in net.parameters() if p.grad is not None], n_local, mean=True)


def sum_over_ranks(sums: torch.Tensor, n: int) -> tuple[list, int]:
    """Metric sums and image count of this rank -> (the sums over all ranks as a list, the total count).
    Does not modify `sums`."""
    if not active():
        return sums.tolist(), n
    total = sums.reshape(-1).double().clone()
    count = _all_reduce([total], n, mean=False)
    return total.tolist(), int(round(count.item()))


def average_bn_stats(net: torch.nn.Module) -> None:
    """Running mean and variance of every BatchNorm <- their mean over ranks (one all-reduce).

    The mean over ranks of the shards' running means equals the one-process running mean of the
    whole batch when the inputs are the same; the variance misses the spread between shard means,
    a small underestimate. Afterwards every rank holds the same model, which rank 0 saves."""
    if not active():
        return
    bufs = [b for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            and m.running_mean is not None for b in (m.running_mean, m.running_var)]
    if bufs:
        _all_reduce(bufs, 1, mean=True)


def split_pool(evaluate):
    """Wrap evaluate(archs) -> [result per arch] so each rank evaluates a share of the pool.

    The pool is sorted so that architectures sharing leading blocks land on the same rank (where
    evaluate_pool computes each shared prefix once), cut into N near-equal contiguous parts, and
    the results are gathered back into the pool's order. Each architecture's result is computed
    by the same code on the same batches as in one process, so the history is identical."""
    if not active():
        return evaluate

    def evaluate_split(archs):
        n, r = world_size(), rank()
        order = sorted(range(len(archs)), key=lambda i: tuple(archs[i]))
        mine = order[r * len(order) // n:(r + 1) * len(order) // n]
        results = evaluate([archs[i] for i in mine]) if mine else []
        gathered = [None] * n
        _collective(td.all_gather_object, gathered, list(zip(mine, results)))
        out = [None] * len(archs)
        for part in gathered:
            for i, res in part:
                out[i] = res
        return out

    return evaluate_split
