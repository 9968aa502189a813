"""Faults (train.py, files.py): kills at chosen moments, a full disk, a damaged or locked run folder, running
out of memory; and the run folder's promises (weights-only checkpoints, RNG states that resume on any
device count). Bad options and divergence are test_options.py's; foreign and damaged run files
test_run_files.py's."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY1, assert_same_run, one_line, run_cli

import autosnn
import files
import train
from plumbing import rundir


HERE = Path(__file__).resolve().parent.parent      # the repository root
pytestmark = pytest.mark.usefixtures("plotless")


def cli(out, name, *extra):
    return run_cli(out, name, *extra, base=TINY1)


@pytest.fixture
def ref(tiny_run):
    """One uninterrupted tiny run (all three stages): the reference for every resumed one."""
    return tiny_run


def temps(folder: Path) -> list:
    return [p for p in folder.rglob("*") if files.TEMP_MARK in p.name or p.name.endswith(".tmp")]


def metric_keys(d: Path) -> list:
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    return [(r["stage"], r.get("epoch", r.get("generation"))) for r in rows]


# ---------------------------------------------------------------------------------------------
# Kills (SIGKILL in a subprocess), then resume
# ---------------------------------------------------------------------------------------------

# Runs train.main in a fresh process and SIGKILLs it at the count-th hit of `point`:
#   replace:<file>   inside files.atomic_write, after the temp file is written and fsynced, before the rename
#   metrics:<stage>  right after a metrics.jsonl row is appended, before that epoch's checkpoint
#   folder           inside files.create_folder, before the temp folder is renamed into place
KILLER = r"""
import os, signal, sys
import train
point, count, seen = sys.argv[1], int(sys.argv[2]), [0]
train.plot_run = lambda *args, **kwargs: []

def hit():
    seen[0] += 1
    if seen[0] == count:
        os.kill(os.getpid(), signal.SIGKILL)

if point.startswith("replace:"):
    real_replace = os.replace
    def replace(src, dst, *a, **k):
        if os.path.basename(str(dst)) == point[8:]:
            hit()
        return real_replace(src, dst, *a, **k)
    os.replace = replace
elif point.startswith("metrics:"):
    real_metrics = train.Run.metrics
    def metrics(self, **row):
        real_metrics(self, **row)
        if row.get("stage") == point[8:]:
            hit()
    train.Run.metrics = metrics
else:
    real_rename = os.rename
    def rename(src, dst, *a, **k):
        hit()
        return real_rename(src, dst, *a, **k)
    os.rename = rename
sys.exit(train.main(sys.argv[3:]))
"""


def killed(point: str, count: int, argv: list) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", KILLER, point, str(count), *argv], cwd=HERE, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, (res.returncode, res.stderr[-2000:])


@pytest.mark.slow
@pytest.mark.parametrize("point, count", [
    ("replace:supernet.pt", 2),       # the last super-network checkpoint: its temp is written, not renamed
    ("replace:search.pt", 1),         # mid search
    ("metrics:retrain", 1),           # retraining epoch 1 logged, its checkpoint not yet written
])
def test_kill_then_resume_is_identical(ref, tmp_path, point, count):
    d = tmp_path / "cut"
    killed(point, count, TINY1 + ["--out", str(tmp_path), "--name", "cut"])
    assert (d / "config.json").is_file() and not (d / "results.json").exists()
    if point.startswith("replace:"):
        assert temps(d), "the kill was meant to land inside the writer"
    assert train.main(["--resume", str(d)]) == 0
    assert_same_run(ref, d)
    assert temps(tmp_path) == []
    keys = metric_keys(d)
    assert keys == metric_keys(ref) and len(keys) == len(set(keys))      # no duplicated row


@pytest.mark.slow
def test_kill_while_creating_the_folder_leaves_nothing(tmp_path, capsys):
    argv = TINY1 + ["--stage", "supernet", "--supernet-epochs", "1", "--out", str(tmp_path), "--name", "x"]
    killed("folder", 1, argv)
    assert not (tmp_path / "x").exists()
    assert train.main(argv) == 0                 # no dead end: the same command simply runs
    assert (tmp_path / "x" / "supernet.pt").is_file() and temps(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Damaged run folders (bad options and divergence: test_options.py)
# ---------------------------------------------------------------------------------------------

def test_resume_errors_name_the_file(ref, tmp_path, capsys):
    d = tmp_path / "copy"
    d.mkdir()                                     # a folder without checkpoints: nothing to rebuild from
    good = json.loads((ref / "config.json").read_text())
    old_key = {**good, "run": {("supernet" if k == "supernet_path" else k): v for k, v in good["run"].items()}}
    no_T = {**good, "run": {k: v for k, v in good["run"].items() if k != "T"}}
    for text, words in (("[]", "is not a run configuration"), ("{", "is not valid JSON"),
                        (json.dumps(old_key), "has unknown options supernet: made by an older version"),
                        (json.dumps(no_T), "lacks the options T: made by an older version")):
        (d / "config.json").write_text(text)
        assert train.main(["--resume", str(d)]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and str(d / "config.json") in err and len(err.splitlines()) == 1, err
    old = torch.load(ref / "supernet.pt", weights_only=True)
    del old["kind"]                               # a checkpoint of an older version
    torch.save(old, tmp_path / "old.pt")
    assert train.main(["--stage", "search", "--supernet", str(tmp_path / "old.pt")]) == 2
    assert "old.pt was made by an older version of this project; rerun" in capsys.readouterr().err
    shutil.rmtree(d)
    shutil.copytree(ref, d)
    ck = torch.load(d / "supernet.pt", weights_only=True)         # a super-network of another width
    ck["model"] = autosnn.SpikingNetwork("AutoSNN_8", 10, T=2).state_dict()
    torch.save(ck, d / "supernet.pt")
    before = (d / "supernet.pt").read_bytes()
    assert train.main(["--resume", str(d)]) == 2
    err = capsys.readouterr().err.strip()
    assert "supernet.pt does not fit" in err and len(err.splitlines()) == 1
    assert (d / "supernet.pt").read_bytes() == before


@pytest.mark.slow
def test_resume_rebuilds_what_the_checkpoints_hold(ref, tmp_path):
    """config.json deleted, or missing a key (T = 2 here, 8 by default), and a damaged search.json:
    the checkpoints hold them, so resume rebuilds them instead of stopping or using a default."""
    d = tmp_path / "copy"
    for damage in ("delete", "drop T"):
        shutil.copytree(ref, d)
        if damage == "delete":
            (d / "config.json").unlink()
        else:
            cfg = json.loads((d / "config.json").read_text())
            del cfg["run"]["T"]
            (d / "config.json").write_text(json.dumps(cfg))
        (d / "search.json").write_text("{")
        assert train.main(["--resume", str(d)]) == 0
        assert json.loads((d / "config.json").read_text())["run"]["T"] == 2
        assert (json.loads((d / "search.json").read_text())["history"]
                == json.loads((ref / "search.json").read_text())["history"])
        assert_same_run(ref, d)
        shutil.rmtree(d)


def test_second_process_on_the_folder_is_refused(ref, tmp_path, capsys):
    d = tmp_path / "copy"
    shutil.copytree(ref, d)
    holder = rundir.Run(d)
    holder.lock()                    # what a running train.py holds
    try:
        assert train.main(["--resume", str(d)]) == 2
        one_line(capsys.readouterr().err.strip(), f"{d} is in use by another process (pid {os.getpid()})")
    finally:
        holder.close()
    assert train.main(["--resume", str(d)]) == 0


def test_write_failure_after_the_folder_exists_is_one_line_and_resumable(ref, tmp_path, capsys):
    d = tmp_path / "copy"
    shutil.copytree(ref, d)
    (d / "metrics.jsonl").unlink()
    (d / "metrics.jsonl").mkdir()                # metrics.jsonl replaced by a folder
    assert train.main(["--resume", str(d)]) == 2
    one_line(capsys.readouterr().err.strip(), f"cannot write {d / 'metrics.jsonl'}")
    (d / "metrics.jsonl").rmdir()
    assert train.main(["--resume", str(d)]) == 0


def test_search_from_an_unfinished_supernet_warns(ref, tmp_path):
    ck = torch.load(ref / "supernet.pt", weights_only=True)
    ck["epoch"] = 1                               # as if killed at epoch 1 of 2
    torch.save(ck, tmp_path / "cut.pt")
    assert train.main(["--stage", "search", "--supernet", str(tmp_path / "cut.pt"), "--iterations", "1",
                       "--pool", "2", "--out", str(tmp_path), "--name", "s", "--log-every", "0"]) == 0
    assert "stopped at epoch 1 of 2" in (tmp_path / "s" / "log.txt").read_text()


@pytest.mark.slow
def test_closed_stdout_stops_printing_not_training(tmp_path):
    """train.py | head -1: the run goes on to its end."""
    script = "import sys, train\ntrain.plot_run = lambda *a, **k: []\nsys.exit(train.main(sys.argv[1:]))\n"
    argv = TINY1 + ["--stage", "retrain", "--arch", "AutoSNN", "--out", str(tmp_path), "--name", "x"]
    p = subprocess.Popen([sys.executable, "-c", script, *argv], cwd=HERE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=300) == 0 and "Traceback" not in err and "Exception ignored" not in err, err
    assert (tmp_path / "x" / "results.json").is_file()


def test_ctrl_c_before_the_folder_says_nothing_saved(tmp_path, monkeypatch, capsys):
    def interrupt(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "load_data", interrupt)
    assert cli(tmp_path, "x") == 130
    assert "nothing was saved" in capsys.readouterr().err and not (tmp_path / "x").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_after_the_folder_exists_is_logged_with_the_resume_command(tmp_path, monkeypatch, capsys, sig):
    """Ctrl-C and SIGTERM (a scheduler's, `kill`'s) print the same line, log.txt keeps it, the exit code
    is 128 + the signal, and --resume then finishes the run."""
    real = train.train_supernet

    def signalled(*args):
        os.kill(os.getpid(), sig)       # delivered at the next bytecode: inside the stage
        time.sleep(5)
        return real(*args)

    class Unhandled(Exception):
        pass

    def guard(signum, frame):            # if train.main installed no handler of its own: fail, don't die
        raise Unhandled()

    monkeypatch.setattr(train, "train_supernet", signalled)
    previous = signal.signal(signal.SIGTERM, guard)
    # Python's own Ctrl-C handler, as in a terminal (a shell starts background jobs with SIGINT ignored)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert cli(tmp_path, "x") == 128 + sig
        assert signal.getsignal(signal.SIGTERM) is guard            # main() put the handler back
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    name = "SIGTERM" if sig == signal.SIGTERM else "SIGINT"
    line = f"interrupted ({name}); continue with: {files.python()} train.py --resume {tmp_path / 'x'}"
    assert capsys.readouterr().err.strip() == line
    assert (tmp_path / "x" / "log.txt").read_text().splitlines()[-1] == line
    monkeypatch.setattr(train, "train_supernet", real)
    assert train.main(["--resume", str(tmp_path / "x")]) == 0 and (tmp_path / "x" / "results.json").is_file()


# ---------------------------------------------------------------------------------------------
# Full disk, out of memory
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_full_disk_one_line_previous_checkpoint_intact(tmp_path, monkeypatch, capsys):
    """The disk fills while epoch 2's checkpoint is written (torch's own writer would turn ENOSPC into
    "RuntimeError: unexpected pos"; checkpoints are serialised in memory, so the write sees it)."""
    real, calls = files.atomic_write, {"n": 0}

    def full(path, write):
        def half(f):
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        calls["n"] += path.name == "supernet.pt"
        return real(path, half if calls["n"] == 2 and path.name == "supernet.pt" else write)
    monkeypatch.setattr(rundir, "atomic_write", full)
    assert cli(tmp_path, "x", "--stage", "supernet") == 2
    one_line(capsys.readouterr().err.strip(), "no space left on device while writing")
    assert torch.load(tmp_path / "x" / "supernet.pt", weights_only=True)["epoch"] == 1
    assert temps(tmp_path) == []
    monkeypatch.setattr(rundir, "atomic_write", real)
    assert train.main(["--resume", str(tmp_path / "x")]) == 0          # space freed: it continues


def test_out_of_memory_after_the_folder_exists_is_resumable(tmp_path, monkeypatch, capsys):
    real, calls = train.train_epoch, {"n": 0}

    def short_of_memory(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")
        return real(*a, **k)
    monkeypatch.setattr(train, "train_epoch", short_of_memory)
    assert cli(tmp_path, "x", "--stage", "supernet") == 2
    one_line(capsys.readouterr().err.strip(), f"error: out of memory; continue with --resume {tmp_path / 'x'}")
    assert train.main(["--resume", str(tmp_path / "x")]) == 0            # memory freed: no dead end
    assert torch.load(tmp_path / "x" / "supernet.pt", weights_only=True)["epoch"] == 2


# ---------------------------------------------------------------------------------------------
# What a finished run holds
# ---------------------------------------------------------------------------------------------

def test_run_folder_contents(ref):
    for name, kind in (("supernet.pt", "supernet"), ("search.pt", "search"), ("child.pt", "retrain")):
        ck = torch.load(ref / name, weights_only=True)                 # no pickled numpy objects
        assert ck["kind"] == kind and set(ck["rng"]) == {"random", "torch"}
        if hasattr(autosnn.SpikingNetwork, "spec") and kind != "search":
            assert ck["spec"]["kind"] == "autosnn"
    if hasattr(autosnn, "save_model"):
        for name, sup in (("model.pt", False), ("supernet_model.pt", True)):
            assert torch.load(ref / name, weights_only=True)["format"] == "autosnn-model"
            net = autosnn.SpikingNetwork.load(str(ref), supernet=sup)
            assert (net.arch is None) == sup
    cfg = json.loads((ref / "config.json").read_text())
    assert cfg["environment"]["torch"] == torch.__version__ and cfg["environment"]["device"] == "cpu"
    res = json.loads((ref / "results.json").read_text())
    assert set(res["wall_s"]) == {"supernet", "search", "retrain"} and res["finished"] >= res["started"]
    # silent_layers is exactly the layers without a spike on the test set (the classifier among them or not)
    assert res["silent_layers"] == [k for k, v in res["per_layer_spikes"].items() if v == 0]
    assert ("fc_neuron" in res["silent_layers"]) == (res["per_layer_spikes"]["fc_neuron"] == 0)
    assert all("time" in json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines())
    log = (ref / "log.txt").read_text()
    assert "elapsed" in log and "ETA" in log and f"done: run folder {ref}" in log
    warned = [ln.split(" emitted")[0] for ln in log.splitlines() if ln.startswith("warning: layer ")]
    assert len(warned) == len(set(warned))                               # once per layer name
    if res["per_layer_spikes"]["fc_neuron"] == 0:
        assert "classifier (fc_neuron) emitted no spike" in log


def test_ctrl_c_while_imports_load():
    """Ctrl-C lands while train.py imports torch (simulated at that import): a line, no traceback."""
    script = ("import builtins, runpy\n"
              "real = builtins.__import__\n"
              "def imp(name, *a, **k):\n"
              "    if name == 'torch':\n"
              "        raise KeyboardInterrupt\n"
              "    return real(name, *a, **k)\n"
              "builtins.__import__ = imp\n"
              "runpy.run_path('train.py', run_name='__main__')\n")
    res = subprocess.run([sys.executable, "-c", script], cwd=HERE, capture_output=True, text=True, timeout=60)
    assert res.returncode == 130 and "Traceback" not in res.stderr
    assert res.stderr.strip() == "interrupted while loading; nothing was saved"
