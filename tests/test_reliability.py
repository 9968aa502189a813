"""Faults and bad input (train.py, files.py): kills at chosen moments, a full disk, divergence, every
bad option a new user tried; and the run folder's promises (weights-only checkpoints, no per-batch
host sync, RNG states that resume on any device count)."""
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
from conftest import TINY1, assert_same_run, no_plots, one_line, run_cli

import autosnn
import files
import train
from plumbing import rundir
from search_space import AUTOSNN


HERE = Path(__file__).resolve().parent.parent      # the repository root
pytestmark = pytest.mark.usefixtures("plotless")


def cli(out, name, *extra):
    return run_cli(out, name, *extra, base=TINY1)


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """One uninterrupted tiny run (all three stages): the reference for every resumed one."""
    out = tmp_path_factory.mktemp("ref")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(train, "plot_run", no_plots)
        assert cli(out, "ref") == 0
    return out / "ref"


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


def test_kill_while_creating_the_folder_leaves_nothing(tmp_path, capsys):
    argv = TINY1 + ["--stage", "supernet", "--supernet-epochs", "1", "--out", str(tmp_path), "--name", "x"]
    killed("folder", 1, argv)
    assert not (tmp_path / "x").exists()
    assert train.main(argv) == 0                 # no dead end: the same command simply runs
    assert (tmp_path / "x" / "supernet.pt").is_file() and temps(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit code 2, no run folder
# ---------------------------------------------------------------------------------------------

def no_cuda_words():
    return "not available" if not torch.cuda.is_available() else "CUDA device"


BAD = [
    (["--supernet-lr", "-0.001"], "--supernet-lr must be > 0"),
    (["--supernet-lr", "nan"], "--supernet-lr must be a finite number"),
    (["--supernet-lr", "0"], "--supernet-lr must be > 0"),
    (["--retrain-lr", "inf"], "--retrain-lr must be a finite number"),
    (["--tau0", "1.0"], "--tau0 must be > 1"),
    (["--tau0", "inf"], "--tau0 must be a finite number"),
    (["--v-th", "nan"], "--v-th must be a finite number"),
    (["--v-th", "-1"], "--v-th must be > 0"),
    (["--n-train", "1"], "leaves an empty D_train or D_val"),
    (["--device", "mps"], "only cpu and cuda"),
    (["--device", "gpu"], "unknown --device 'gpu'"),
    (["--device", "cuda:7"], no_cuda_words()),
    (["--spike-norm", "inf"], "--spike-norm must be a finite number"),
    (["--spike-norm", "nan"], "--spike-norm must be a finite number"),
    (["--spike-norm", "-3"], "--spike-norm must be >= 0"),
    (["--lam", "nan"], "--lam must be a finite number"),
    (["--model-width", "-4"], "--model-width must be an integer >= 0"),
    (["--threads", "-1"], "--threads must be an integer >= 0"),
    (["--threads", "1000"], "--threads must be at most this machine's"),
    (["--log-every", "-1"], "--log-every must be an integer >= 0"),
    (["--eval-every", "0"], "--eval-every must be an integer >= 1"),          # once crashed after the folder existed
    (["--seed", str(2**70)], "--seed must be an integer in 0.."),
    (["--seed", "-1"], "--seed must be an integer in 0.."),
    (["--search-seed", str(2**64)], "--search-seed must be an integer in 0.."),
    (["--T", "10000"], "for the training activations alone"),
    (["--T", "10000", "--stage", "retrain", "--arch", "AutoSNN"], "for the training activations alone"),
    (["--cutout", "1000"], "larger than the 32x32 images"),
    (["--name", "../escaped"], "plain folder name"),
    (["--name", "n" * 300], "may have 255 bytes, and writing adds"),
    (["--name", "n" * 250], "may have 255 bytes, and writing adds"),
    (["--dry-run", "--preset", "paper"], "give one of --dry-run and --preset"),
    (["--neuron", "ann", "--T", "4"], "needs --T 1"),
    (["--train-portion", "1.5"], "--train-portion must be in (0, 1)"),
    (["--amp", "fp16"], "--amp must be fp32 or bf16"),
    (["--out", "/proc"], "cannot create the run folder in --out /proc: /proc does not take new folders"),
    (["--out", "/sys/kernel"], "cannot create the run folder"),
    (["--out", "@FILE"], "is a file, not a folder"),
    (["--download", "--data-root", "@FILE"], "is a file, not a folder"),
    (["--stage", "search", "--supernet", "@CHILD"], "is a retrain checkpoint, not a supernet one"),
    (["--stage", "search", "--supernet", "@REF"], "is a folder; give the supernet.pt inside it"),
    (["--stage", "all", "--supernet", "@SUPER"], "--supernet is for --stage search or --stage retrain"),
    (["--stage", "supernet", "--supernet", "@SUPER"], "--stage supernet trains its own super-network"),
    (["--stage", "retrain", "--arch", "AutoSNN", "--inherit", "--supernet", "@SUPER8"], "does not fit"),
    (["--dataset", "synthetic-dvs", "--stage", "retrain", "--model", "resnet19-zheng"], "takes input"),
]


@pytest.mark.parametrize("extra, words", BAD, ids=[" ".join(a)[:60] for a, _ in BAD])
def test_bad_input_one_line_no_folder(ref, tmp_path, capsys, extra, words):
    (tmp_path / "a_file").write_text("x")
    super8 = tmp_path / "super8.pt"
    if "@SUPER8" in extra:            # a super-network checkpoint of another width, same data
        ck = torch.load(ref / "supernet.pt", weights_only=True)
        ck["model"] = autosnn.SpikingNetwork("AutoSNN_8", 10, T=2).state_dict()
        torch.save(ck, super8)
    subst = {"@FILE": str(tmp_path / "a_file"), "@CHILD": str(ref / "child.pt"), "@SUPER8": str(super8),
             "@REF": str(ref), "@SUPER": str(ref / "supernet.pt")}
    extra = [subst.get(a, a) for a in extra]
    out = tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    code = train.main(TINY1 + ["--name", "bad"] + (["--out", str(out)] if "--out" not in extra else []) + extra)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    one_line(err, words)
    assert sorted(p.name for p in tmp_path.iterdir()) == before            # no run folder, nothing else
    assert not (tmp_path.parent / "escaped").exists()


def test_dry_run_with_a_real_dataset_names_only_what_was_typed(tmp_path, cli):
    """--dry-run --dataset cifar10 without the files: the missing data, not the preset's --n-train."""
    res = cli(["--dry-run", "--dataset", "cifar10", "--data-root", tmp_path / "none", "--out", tmp_path])
    assert res.code == 2 and "--n-train" not in res.err and "cifar10" in res.err.lower(), res.err
    assert len(res.err.splitlines()) == 1 and sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_out(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    assert cli(ro, "x") == 2
    assert "not writable" in capsys.readouterr().err and list(ro.iterdir()) == []


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


def test_misspelled_option_one_line_with_hint(capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--supernet-epoch", "3"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean --supernet-epochs?" in err and "usage" not in err


def test_ctrl_c_before_the_folder_says_nothing_saved(tmp_path, monkeypatch, capsys):
    def interrupt(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "load_data", interrupt)
    assert cli(tmp_path, "x") == 130
    assert "nothing was saved" in capsys.readouterr().err and not (tmp_path / "x").exists()


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
    try:
        assert cli(tmp_path, "x") == 128 + sig
        assert signal.getsignal(signal.SIGTERM) is guard            # main() put the handler back
    finally:
        signal.signal(signal.SIGTERM, previous)
    name = "SIGTERM" if sig == signal.SIGTERM else "SIGINT"
    line = f"interrupted ({name}); continue with: {files.python()} train.py --resume {tmp_path / 'x'}"
    assert capsys.readouterr().err.strip() == line
    assert (tmp_path / "x" / "log.txt").read_text().splitlines()[-1] == line
    monkeypatch.setattr(train, "train_supernet", real)
    assert train.main(["--resume", str(tmp_path / "x")]) == 0 and (tmp_path / "x" / "results.json").is_file()


# ---------------------------------------------------------------------------------------------
# Full disk, divergence
# ---------------------------------------------------------------------------------------------

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


def bn_buffer(net, name):
    return next(b for n, b in net.named_buffers() if n.endswith(name))


# A diverged network can keep a finite loss (nothing spikes); its weights give it away, and so do the
# BN running statistics, which no optimizer step touches (a check of parameters alone misses them).
POISONS = {
    "weight nan": (lambda net: next(net.parameters()).fill_(float("nan")), "weights became non-finite in epoch 2"),
    "bn running_var inf": (lambda net: bn_buffer(net, "running_var").fill_(float("inf")),
                           "weights became non-finite in epoch 2 (first: stem.bn"),
    "bn running_mean 1e7": (lambda net: bn_buffer(net, "running_mean").fill_(1e7),
                            "larger than 1e+06 in magnitude in epoch 2 (first: stem.bn"),
}


@pytest.mark.parametrize("poison", POISONS)
def test_diverged_weights_stop_training(tmp_path, monkeypatch, capsys, poison):
    real, calls = train.train_epoch, {"n": 0}
    spoil, words = POISONS[poison]

    def poisoned(net, *a, **k):
        m = real(net, *a, **k)
        calls["n"] += 1
        if calls["n"] == 2:
            with torch.no_grad():
                spoil(net)
        return m
    monkeypatch.setattr(train, "train_epoch", poisoned)
    assert cli(tmp_path, "x", "--stage", "retrain", "--arch", "AutoSNN") == 2
    err = capsys.readouterr().err.strip()
    one_line(err, words)
    assert "last good checkpoint is kept" in err
    ck = torch.load(tmp_path / "x" / "child.pt", weights_only=True)
    assert ck["epoch"] == 1 and all(v.isfinite().all() for v in ck["model"].values() if v.is_floating_point())
    assert not (tmp_path / "x" / "results.json").exists()


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


def test_huge_learning_rate_stops_in_the_first_epoch(tmp_path, capsys):
    """--retrain-lr 1e9: weights around 1e21, finite, the loss stuck at 0.9; once results.json said exit 0."""
    assert cli(tmp_path, "x", "--stage", "retrain", "--arch", "AutoSNN", "--retrain-lr", "1e9") == 2
    err = capsys.readouterr().err.strip()
    one_line(err, "larger than 1e+06 in magnitude in epoch 1")
    assert "no checkpoint yet" in err and not (tmp_path / "x" / "results.json").exists()


def test_classifier_firing_always_with_a_flat_loss_stops(tmp_path):
    """Three epochs of a saturated classifier and a flat loss stop; two, or a moving loss, do not."""
    net = autosnn.SpikingNetwork("AutoSNN_4", 10, AUTOSNN, T=2)
    run = rundir.Run(tmp_path)

    def epoch(e, loss=0.9, rate=1.0):
        return {"epoch": e, "loss": loss, "classifier": "fc_neuron", "classifier_rate": rate,
                "layers": {"fc_neuron": 1.0}}
    history = [epoch(1), epoch(2)]
    with pytest.raises(files.AutoSNNError, match="fired at every step for 3 epochs"):
        train.check_epoch(net, epoch(3), history, "retraining", tmp_path / "child.pt", run)
    train.check_epoch(net, epoch(3), history[1:], "retraining", tmp_path / "child.pt", run)
    train.check_epoch(net, epoch(3, loss=0.5), history, "retraining", tmp_path / "child.pt", run)
    train.check_epoch(net, epoch(3, rate=0.5), history, "retraining", tmp_path / "child.pt", run)
    silent = {**epoch(3, rate=0.0), "layers": {"fc_neuron": 0.0}}          # never fires: a warning only
    train.check_epoch(net, silent, [epoch(1, rate=0.0), epoch(2, rate=0.0)], "retraining", tmp_path / "c.pt", run)
    assert "classifier (fc_neuron) emitted no spike" in (tmp_path / "log.txt").read_text()


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
    assert "fc_neuron" in res["silent_layers"] or res["per_layer_spikes"]["fc_neuron"] > 0
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
