"""Tests of plumbing/dist.py: N processes (gloo on the CPU, 2 ranks, 1 thread each) against one process.

Ranks are launched as torchrun would (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1 and a
free port in the environment), either as `python train.py` subprocesses or with
torch.multiprocessing for the function-level equivalence test; one test uses torchrun itself.
"""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import train
from autosnn import SpikingNetwork
from plumbing import dist
from search_space import sample_arch


HERE = Path(__file__).resolve().parent.parent      # the repository root
TINY = ["--dataset", "synthetic", "--n-train", "64", "--n-test", "32", "--backbone", "AutoSNN_4", "--T", "2",
        "--batch-size", "16", "--eval-batch-size", "32", "--log-every", "0", "--device", "cpu", "--threads", "1"]
SEARCH = ["--iterations", "2", "--pool", "5", "--topk", "2", "--mutations", "2", "--crossovers", "1"]


@pytest.fixture(autouse=True)
def keep_threads():
    """train.main(--threads 1) sets torch's thread count for the whole test process: restore it."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(r: int, n: int, port: int) -> dict:
    return {**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(n), "LOCAL_WORLD_SIZE": str(n),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
            "AUTOSNN_DIST_TIMEOUT": "60", "PYTHONPATH": str(HERE)}


def launch(args, cwds, port=None):
    """One `python train.py args` per rank, rank r running in cwds[r]."""
    port = port or free_port()
    return [subprocess.Popen([sys.executable, str(HERE / "train.py"), *args], cwd=c, env=rank_env(r, len(cwds), port),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for r, c in enumerate(cwds)]


def finish(procs, timeout=120):
    outs = [p.communicate(timeout=timeout) for p in procs]
    return [p.returncode for p in procs], outs


def files_under(folder: Path) -> list:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# --- super-network training: 2 ranks == 1 process ---------------------------------------------

def _global_batches(steps=4, half=8):
    """Global batches [a; a] of 2*half images: each rank's shard is a, whose BN statistics equal the
    whole batch's, so per-rank BN normalises exactly as one process does over the global batch."""
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(steps):
        a, y = torch.randn(half, 3, 32, 32, generator=g), torch.randint(0, 10, (half,), generator=g)
        out.append((torch.cat([a, a]), torch.cat([y, y])))
    return out


def _train(folder: Path, epochs=2):
    torch.manual_seed(0)
    net = SpikingNetwork("AutoSNN_4", 10, None, 2, (3, 32, 32), v_th=0.5)    # low threshold: outputs spike
    init = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    rng, paths = random.Random(1), []

    def path():
        paths.append(str(sample_arch(net.backbone, rng)))
        return paths[-1]
    metrics = [train.train_epoch(net, opt, _global_batches(), len(_global_batches()), path, train.Run(folder), 0, "t")
               for _ in range(epochs)]
    return {"metrics": [{k: m[k] for k in ("loss", "acc", "spikes")} for m in metrics], "paths": paths,
            "state": net.state_dict(), "init": init,
            "with_grad": sorted(n for n, p in net.named_parameters() if p.grad is not None)}


def _linear_step():
    """One gradient of a mean loss over a global batch of 5 (shards of 3 and 2 on 2 ranks), with
    a second layer that takes no part: its gradient must stay None."""
    torch.manual_seed(3)
    used, unused = torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)
    g = torch.Generator().manual_seed(4)
    (x, y), = dist.shard([(torch.randn(5, 6, generator=g), torch.randn(5, 3, generator=g))])
    loss = ((used(x) - y) ** 2).mean()
    loss.backward()
    dist.average_gradients(torch.nn.ModuleList([used, unused]), len(y))
    (loss_sum,), n = dist.sum_over_ranks(loss.detach().reshape(1) * len(y), len(y))
    return {"weight": used.weight.grad, "bias": used.bias.grad, "unused": unused.weight.grad,
            "loss": loss_sum / n, "n": n}


def _train_worker(r, n, port, folder):
    os.environ.update({k: v for k, v in rank_env(r, n, port).items() if k not in ("PYTHONPATH",)})
    torch.set_num_threads(1)
    dist.setup("cpu", 16)
    torch.save(_linear_step(), Path(folder) / f"linear{r}.pt")
    torch.save(_train(Path(folder)), Path(folder) / f"rank{r}.pt")
    dist.shutdown()
    dist.shutdown()                                   # idempotent
    assert not dist.active() and dist.rank() == r     # the rank outlives the group (messages at exit)


@pytest.mark.slow
def test_two_ranks_train_the_supernet_as_one_process(tmp_path):
    mp.spawn(_train_worker, args=(2, free_port(), str(tmp_path)), nprocs=2)
    torch.set_num_threads(1)          # the ranks' thread count: the same kernels, the same rounding
    one = _train(tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # uneven shards with different data: the averaged gradient is the global batch's gradient
    whole = _linear_step()
    for r in range(2):
        part = torch.load(tmp_path / f"linear{r}.pt")
        assert part["unused"] is None and part["n"] == 5 and part["loss"] == pytest.approx(whole["loss"])
        for k in ("weight", "bias"):
            torch.testing.assert_close(part[k], whole[k])
    assert one["metrics"][-1]["loss"] < 0.099       # outputs spike (a silent output gives exactly 0.1)
    assert (one["state"]["fc.weight"] - one["init"]["fc.weight"]).abs().max() > 1e-3    # training moved it
    for two in ranks:
        assert two["paths"] == one["paths"]                    # the same path at every step
        assert two["with_grad"] == one["with_grad"]            # only the last path has gradients
        for a, b in zip(two["metrics"], one["metrics"]):       # metrics are global sums
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
            assert a["acc"] == b["acc"] and a["spikes"] == pytest.approx(b["spikes"], rel=1e-6)
        for k, v in one["state"].items():
            if k.endswith("running_var"):      # unbiased over B/2 vs B samples: n/(n-1) differs by < 1%
                torch.testing.assert_close(two["state"][k], v, rtol=1e-2, atol=1e-5)
            else:
                # Adam divides by sqrt(v): a weight whose gradient is near zero turns a rounding
                # difference of the gradient sum into a visible step; 1e-4 is 3% of one step at lr 3e-3
                torch.testing.assert_close(two["state"][k], v, rtol=1e-4, atol=1e-4, msg=k)
    # a candidate sampled nowhere keeps its initial weights on every rank (Adam never saw it)
    used = {(i, b) for p in one["paths"] for i, b in enumerate(p.split("-"))}
    untouched = [k for k in one["state"] if k.startswith("layers.") and ".weight" in k
                 and not any(k.startswith(f"layers.{pos}.{b}.") for pos, b in _positions(used))]
    assert untouched
    for k in untouched:
        assert torch.equal(ranks[0]["state"][k], ranks[0]["init"][k]) and torch.equal(ranks[1]["state"][k], one["state"][k])
    # the two ranks hold the same model after the epoch (BN running statistics averaged)
    for k, v in ranks[0]["state"].items():
        assert torch.equal(v, ranks[1]["state"][k]), k


def _positions(used):
    """(index into net.layers, block) for (searched position index, block) pairs of AutoSNN_4."""
    searched = train.get_backbone("AutoSNN_4").searched
    return [(searched[i], b) for i, b in used]


# --- the command line under 2 ranks ------------------------------------------------------------

@pytest.mark.slow
def test_two_ranks_all_stages_rank0_writes_and_search_equals_one_process(tmp_path):
    cwds = [tmp_path / "rank0", tmp_path / "rank1"]
    for c in cwds:
        c.mkdir()
    args = TINY + SEARCH + ["--supernet-epochs", "2", "--retrain-epochs", "1", "--name", "x", "--out", "runs"]
    codes, outs = finish(launch(args, cwds))
    assert codes == [0, 0], outs
    assert files_under(cwds[1]) == []                          # rank 1 wrote nothing, printed nothing
    assert outs[1] == ("", "")
    run = cwds[0] / "runs" / "x"
    assert {"supernet.pt", "search.json", "child.pt", "results.json", "log.txt"} <= set(files_under(run))
    # one process searching from the same super-network gives the identical history
    code = train.main(["--stage", "search", "--supernet", str(run / "supernet.pt"), "--eval-batch-size", "32",
                       "--log-every", "0", "--device", "cpu", "--threads", "1", *SEARCH, "--out", str(tmp_path), "--name", "one"])
    assert code == 0
    two_h, one_h = (json.loads((p / "search.json").read_text()) for p in (run, tmp_path / "one"))
    assert two_h.pop("run_id") != one_h.pop("run_id")             # two runs; everything else identical
    assert two_h == one_h and len(one_h["history"]) == 10
    assert (run / "best_arch.txt").read_text() == (tmp_path / "one" / "best_arch.txt").read_text()


def test_batch_not_divisible_and_missing_gpus_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert train.main(TINY + ["--batch-size", "15", "--out", str(tmp_path), "--name", "b"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--batch-size 15" in err and "2 processes" in err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(dist.AutoSNNError, match="2 GPUs, but 1 is visible"):
        dist.setup("cuda", 16)
    assert not dist.active() and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_killed_rank_stops_the_job_and_resume_continues(tmp_path):
    """Kill rank 1 after the first checkpoint: rank 0 stops with one line, the checkpoint loads,
    and resuming under 2 ranks (torchrun) ends exactly where an uninterrupted 2-rank run ends;
    resuming under 1 process keeps the path and data-order RNG streams."""
    args = TINY + ["--stage", "supernet", "--n-train", "20", "--supernet-epochs", "6", "--out", "runs"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for c in (whole, cut):
        c.mkdir()
    ref = launch(args + ["--name", "x"], [whole, whole])
    procs = launch(args + ["--name", "x"], [cut, cut])
    ck = cut / "runs" / "x" / "supernet.pt"
    deadline = time.time() + 120
    while not ck.exists() and time.time() < deadline and procs[0].poll() is None:
        time.sleep(0.01)
    procs[1].send_signal(signal.SIGKILL)
    codes, outs = finish(procs)
    assert codes[0] == 2, outs[0]
    err = outs[0][1].strip().splitlines()
    assert len(err) == 1 and "another process of this job stopped" in err[0] and "--resume runs/x" in err[0]
    saved = train.load_checkpoint(ck, "supernet")
    assert 1 <= saved["epoch"] < 6
    assert finish(ref)[0] == [0, 0]
    shutil.copytree(cut, tmp_path / "cut1")
    stale = tmp_path / "stale" / "runs" / "x"             # rank 1 sees a folder without the checkpoint
    stale.mkdir(parents=True)
    shutil.copy(cut / "runs" / "x" / "config.json", stale)
    codes, outs = finish(launch(["--resume", "runs/x"], [cut, tmp_path / "stale"]))
    assert codes == [2, 2] and all("rank 1 does not see the run folder" in o[1] for o in outs), outs
    port = free_port()
    torchrun = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "--master_addr", "127.0.0.1", "--master_port", str(port), str(HERE / "train.py"),
                               "--resume", "runs/x"], cwd=cut, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)},
                              capture_output=True, text=True, timeout=120)
    assert torchrun.returncode == 0, torchrun.stderr
    a, b = (train.load_checkpoint(c / "runs" / "x" / "supernet.pt", "supernet") for c in (whole, cut))
    assert a["epoch"] == b["epoch"] == 6 and a["history"][-1]["loss"] == b["history"][-1]["loss"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    # a different number of processes: the same path and data order continue (BN shards differ)
    assert train.main(["--resume", str(tmp_path / "cut1" / "runs" / "x")]) == 0
    c = train.load_checkpoint(tmp_path / "cut1" / "runs" / "x" / "supernet.pt", "supernet")
    assert c["path_rng"] == a["path_rng"] and torch.equal(c["data_gen"], a["data_gen"])


# --- leaving the job: no aborts, one line, the right rank --------------------------------------

def test_shutdown_is_a_no_op_in_one_process_and_idempotent():
    handler = signal.getsignal(signal.SIGTERM)
    dist.shutdown()
    dist.shutdown()
    assert signal.getsignal(signal.SIGTERM) is handler        # pytest's own SIGTERM is left alone
    assert (dist.rank(), dist.world_size(), dist.is_main()) == (0, 1, True)


# A fresh interpreter imports torch once and forks both ranks of every trial from it (a trial then
# costs its exit, not two imports). It plays torchrun: it hosts the rendezvous store in a process of
# its own and, when a rank dies, sends SIGTERM to the survivor. Every other kill is mid-run, with the
# SIGTERM 0-40 ms after the death; the others kill a rank after its last collective (as an abort at
# exit did) and the SIGTERM lands inside the survivor's destroy_process_group(), after the backend
# is shut down and before the group is unregistered: the moment that used to stop the teardown halfway.
TRIALS = r'''
import json, os, signal, socket, sys, time
import torch
import torch.distributed as td
from plumbing import dist
from files import AutoSNNError


def job(kind, victim, late):
    """train.main in miniature: join, a few collectives, one line on a failure, leave."""
    try:
        dist.setup("cpu", 2)
        if late and dist.rank() != victim:           # the launcher's SIGTERM, inside the teardown
            c10d = sys.modules["torch.distributed.distributed_c10d"]
            update = c10d._update_default_pg

            def update_with_sigterm(pg):
                if pg is None:
                    signal.raise_signal(signal.SIGTERM)
                return update(pg)
            c10d._update_default_pg = update_with_sigterm
        net = torch.nn.Linear(3, 2)
        for step in range(4):
            if kind == "kill" and not late and step == 2 and dist.rank() == victim:
                os.kill(os.getpid(), signal.SIGKILL)
            net(torch.randn(2, 3)).sum().backward()
            dist.average_gradients(net, 1)
            dist.sum_over_ranks(torch.ones(2), 1)
            dist.average_bn_stats(torch.nn.BatchNorm1d(2))
        if kind == "kill" and late and dist.rank() == victim:
            os.kill(os.getpid(), signal.SIGKILL)
        if dist.is_main():
            time.sleep(0.05)        # rank 0 writes the run folder while the other rank leaves
    except AutoSNNError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        dist.shutdown()
    return 0


def trial(i, kind, out):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    late, victim, delay = kind == "kill" and i % 2 == 1, i // 2 % 2, i % 5 * 0.01
    pids = []
    for r in (-1, 0, 1):                              # -1: the rendezvous store
        pid = os.fork()
        if pid == 0:
            fd = os.open(f"{out}/{i}.{kind}.{r}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            if r < 0:
                store = td.TCPStore("127.0.0.1", port, 2, is_master=True)
                signal.pause()
            os.environ.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                              MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), AUTOSNN_DIST_TIMEOUT="30",
                              TORCHELASTIC_USE_AGENT_STORE="True")
            torch.set_num_threads(1)
            sys.exit(job(kind, victim, late))
        pids.append(pid)
    store, ranks = pids[0], pids[1:]
    codes, deadline = {}, time.time() + 60
    while len(codes) < 2 and time.time() < deadline:
        pid, st = os.waitpid(-1, os.WNOHANG)
        if pid in ranks:
            codes[ranks.index(pid)] = -os.WTERMSIG(st) if os.WIFSIGNALED(st) else os.WEXITSTATUS(st)
            if codes[ranks.index(pid)] != 0 and len(codes) == 1 and not late:
                time.sleep(delay)                     # torchrun: stop the survivor
                os.kill(ranks[1 - ranks.index(pid)], signal.SIGTERM)
        elif pid == 0:
            time.sleep(0.005)
    for r, pid in enumerate(ranks):
        if r not in codes:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            codes[r] = "hang"
    os.kill(store, signal.SIGKILL)
    os.waitpid(store, 0)
    return {"kind": kind, "victim": victim, "late": late, "codes": [codes[0], codes[1]],
            "out": [open(f"{out}/{i}.{kind}.{r}").read() for r in (0, 1)]}


out, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    for kind in ("run", "kill"):
        print(json.dumps(trial(i, kind, out)), flush=True)
'''


@pytest.mark.slow
def test_repeated_runs_and_rank_kills_never_abort(tmp_path):
    """10 two-rank runs and 10 rank kills (gloo, 1 thread each): no abort ("terminate called",
    SIGABRT); a clean run exits 0 silently on both ranks; after a kill mid-run the survivor exits 2
    with exactly one line that names its own rank, whenever the launcher's SIGTERM arrives; a SIGTERM
    inside the teardown of a finished rank is ignored (exit 0, silent)."""
    (tmp_path / "trials.py").write_text(TRIALS)
    res = subprocess.run([sys.executable, str(tmp_path / "trials.py"), str(tmp_path), "10"], capture_output=True,
                         text=True, timeout=400, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)})
    assert res.returncode == 0, res.stderr[-2000:]
    trials = [json.loads(line) for line in res.stdout.splitlines()]
    assert [t["kind"] for t in trials] == ["run", "kill"] * 10
    for t in trials:
        assert -6 not in t["codes"] and not any("terminate called" in o for o in t["out"]), t
        if t["kind"] == "run":
            assert t["codes"] == [0, 0] and t["out"] == ["", ""], t
        else:
            dead, alive = t["victim"], 1 - t["victim"]
            lines = t["out"][alive].strip().splitlines()
            assert t["codes"][dead] == -signal.SIGKILL, t
            if t["late"]:
                assert t["codes"][alive] == 0 and lines == [], t
            else:
                assert t["codes"][alive] == 2, t
                assert len(lines) == 1 and lines[0].startswith(f"error: rank {alive}: "), t
