"""Bad options and divergence, in one place: every option of train.py, bench.py and runs.py a user can get
wrong, alone or together, is one line (exit code 2) before anything is written; options that do not
apply are refused or noted by one rule (plumbing/config.py); numbers parse in every notation; sizes are
checked before anything is allocated, by an estimate close to what a run holds; a training that diverges
stops with its last good checkpoint kept. Table-driven: a new case is a new row."""
import os
import random
import tracemalloc

import pytest
import torch
from conftest import TINY1, one_line, run_cli

import autosnn
import bench
import data
import files
import runs
import train
from benchmarks.measure import speedup
from evolve import SearchConfig, fitness
from files import AutoSNNError
from plumbing import config, memory, rundir
from search_space import AUTOSNN, sample_arch


pytestmark = pytest.mark.usefixtures("plotless")


@pytest.fixture
def ref(tiny_run):
    return tiny_run


def err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "usage:" not in err, err
    return err


# ---------------------------------------------------------------------------------------------
# train.py: one line, exit code 2, no run folder
# ---------------------------------------------------------------------------------------------

def no_cuda_words():
    return "not available" if not torch.cuda.is_available() else "CUDA device"


BAD = [
    # values of one option
    (["--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["--backbone", "ResNet"], "unknown backbone"),
    (["--stage", "train"], "unknown stage"),
    (["--stage", "retrain", "--arch", "SRB_k5-SRB_k5"], "2 blocks"),
    (["--stage", "retrain", "--arch", "SRB_k5-SRB_k5-skip-SRB_k3-SRB_k5"], "bad block 'skip'"),
    (["--stage", "search"], "needs --supernet"),
    (["--T", "0"], "--T must be"),
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
    (["--lam", "0.1"], "lambda must be <= 0"),
    (["--model-width", "-4"], "--model-width must be an integer >= 0"),
    (["--threads", "-1"], "--threads must be an integer >= 0"),
    (["--threads", "1000"], "--threads must be at most this machine's"),
    (["--log-every", "-1"], "--log-every must be an integer >= 0"),
    (["--eval-every", "0"], "--eval-every must be an integer >= 1"),     # once crashed after the folder existed
    (["--seed", str(2**70)], "--seed must be an integer in 0.."),
    (["--seed", str(2**64 - 1)], "--seed must be an integer in 0.."),  # retraining draws from seed + 1
    (["--seed", "-1"], "--seed must be an integer in 0.."),
    (["--search-seed", str(2**64)], "--search-seed must be an integer in 0.."),
    (["--cutout", "1000"], "larger than the 32x32 images"),
    (["--train-portion", "1.5"], "--train-portion must be in (0, 1)"),
    (["--amp", "fp16"], "--amp must be fp32 or bf16"),
    # negative numbers in any notation parse, then meet their range check (argparse alone: "expected one argument")
    (["--supernet-lr", "-1e-3"], "--supernet-lr must be > 0 (got -0.001)"),
    (["--retrain-lr", "-.5"], "--retrain-lr must be > 0 (got -0.5)"),
    (["--tau0", "-inf"], "--tau0 must be a finite number (got -inf)"),
    (["--v-th", "-1E+2"], "--v-th must be > 0 (got -100.0)"),
    # lambda bounded: the fitness cannot overflow, and --resume cannot repeat it
    (["--lam=-1e308"], "at least -10 (got --lam -1e+308)"),
    (["--lam", "-1e308"], "at least -10 (got --lam -1e+308)"),
    (["--lam", "-10.5"], "at least -10"),
    # options together
    (["--dry-run", "--preset", "paper"], "give one of --dry-run and --preset"),
    (["--neuron", "ann", "--T", "4"], "needs --T 1"),
    (["--stage", "all", "--supernet", "@SUPER"], "--supernet is for --stage search or --stage retrain"),
    (["--stage", "supernet", "--supernet", "@SUPER"], "--stage supernet trains its own super-network"),
    (["--stage", "retrain", "--arch", "AutoSNN", "--inherit", "--supernet", "@SUPER8"], "does not fit"),
    (["--dataset", "synthetic-dvs", "--stage", "retrain", "--model", "resnet19-zheng"], "takes input"),
    # options that shape the network or its data under a choice the run did not make: refused
    (["--split-by", "time"], "--split-by cuts event recordings into frames"),
    (["--split-by", "time", "--dataset", "synthetic-dvs"], "--split-by cuts event recordings into frames"),
    (["--tau0", "3", "--neuron", "if"], "--tau0 is the leak of --neuron plif or lif: drop --tau0 3.0"),
    (["--neuron", "ann", "--T", "1", "--lam", "0", "--v-th", "0.5"], "--v-th is the threshold of spiking neurons"),
    (["--model-width", "8"], "--model-width is for --model"),
    (["--dataset", "cifar10"], "--n-train sizes synthetic data only"),
    # where the run folder goes
    (["--out", ""], "--out '' names no folder"),
    (["--name", "../escaped"], "plain folder name"),
    (["--name", "n" * 300], "may have 255 bytes, and writing adds"),
    (["--name", "n" * 250], "may have 255 bytes, and writing adds"),
    (["--out", "/proc"], "cannot create the run folder in --out /proc: /proc does not take new folders"),
    (["--out", "/sys/kernel"], "cannot create the run folder"),
    (["--out", "@FILE"], "is a file, not a folder"),
    (["--download", "--data-root", "@FILE"], "is a file, not a folder"),
    # the super-network checkpoint given
    (["--stage", "search", "--supernet", "@CHILD"], "is a retrain checkpoint, not a supernet one"),
    (["--stage", "search", "--supernet", "@REF"], "is a folder; give the supernet.pt inside it"),
    (["--stage", "search", "--supernet", "/dev/null"], "/dev/null is not a regular file"),
    (["--stage", "search", "--supernet", "@NOPE"], "not found"),
    (["--stage", "search", "--supernet", "@JUNK"], "is not a readable checkpoint"),
    (["--stage", "search", "--supernet", "@SUPER", "--backbone", "AutoSNN_8"], "does not match the super-network"),
    (["--stage", "search", "--supernet", "@SUPER", "--dataset", "synthetic-dvs"], "does not match the super-network"),
    # sizes: refused before anything is allocated (an allocator's traceback otherwise)
    (["--T", "10000"], "for the training activations alone"),
    (["--T", "10000", "--stage", "retrain", "--arch", "AutoSNN"], "for the training activations alone"),
    (["--n-train", "100000000000"], "--n-train 100000000000 with --n-test 32 needs about"),
    (["--n-test", "100000000000"], "for making the synthetic data alone"),
    (["--dataset", "synthetic-dvs", "--n-train", "1000000000"], "for making the synthetic-dvs data alone"),
    (["--backbone", "AutoSNN_100000"], "--backbone AutoSNN_100000 needs about"),
    (["--stage", "retrain", "--model", "cifarnet-wu", "--model-width", "1000000"],
     "--model cifarnet-wu --model-width 1000000 needs about"),
]


@pytest.mark.parametrize("extra, words", BAD, ids=[" ".join(a)[:60] for a, _ in BAD])
def test_bad_input_one_line_no_folder(ref, tmp_path, monkeypatch, capsys, extra, words):
    monkeypatch.chdir(tmp_path)                 # where --out '' would put the run folder
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    super8 = tmp_path / "super8.pt"
    if "@SUPER8" in extra:            # a super-network checkpoint of another width, same data
        ck = torch.load(ref / "supernet.pt", weights_only=True)
        ck["model"] = autosnn.SpikingNetwork("AutoSNN_8", 10, T=2).state_dict()
        torch.save(ck, super8)
    subst = {"@FILE": str(tmp_path / "a_file"), "@CHILD": str(ref / "child.pt"), "@SUPER8": str(super8),
             "@REF": str(ref), "@SUPER": str(ref / "supernet.pt"), "@NOPE": str(tmp_path / "nope.pt"),
             "@JUNK": str(tmp_path / "junk.pt")}
    extra = [subst.get(a, a) for a in extra]
    out = tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    ref_files = {p.name: p.stat().st_mtime_ns for p in ref.iterdir()}
    code = train.main(TINY1 + ["--name", "bad"] + (["--out", str(out)] if "--out" not in extra else []) + extra)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    one_line(err, words)
    assert sorted(p.name for p in tmp_path.iterdir()) == before            # no run folder, nothing else
    assert not (tmp_path.parent / "escaped").exists()
    assert {p.name: p.stat().st_mtime_ns for p in ref.iterdir()} == ref_files      # a given checkpoint untouched


def test_dry_run_with_a_real_dataset_names_only_what_was_typed(tmp_path, cli):
    """--dry-run --dataset cifar10 without the files: the missing data, not the preset's --n-train."""
    res = cli(["--dry-run", "--dataset", "cifar10", "--data-root", tmp_path / "none", "--out", tmp_path])
    assert res.code == 2 and "--n-train" not in res.err and "cifar10" in res.err.lower(), res.err
    assert len(res.err.splitlines()) == 1 and sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_out(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    assert run_cli(ro, "x", base=TINY1) == 2
    assert "not writable" in capsys.readouterr().err and list(ro.iterdir()) == []


def test_existing_folder_and_resume_of_no_run(ref, tmp_path, capsys):
    assert train.main(TINY1 + ["--out", str(ref.parent), "--name", ref.name]) == 2
    one_line(capsys.readouterr().err.strip(), "already exists; continue it with --resume")
    assert train.main(["--resume", str(tmp_path)]) == 2
    one_line(capsys.readouterr().err.strip(), "is not a run folder (no config.json in it)")
    assert train.main(["--resume", str(ref), "--T", "3"]) == 2
    one_line(capsys.readouterr().err.strip(), "--resume takes its options from")


@pytest.mark.parametrize("argv, hint", [
    (["--supernet-epoch", "3"], "did you mean --supernet-epochs?"),
    (["--no-such-option", "1"], "unrecognized arguments: --no-such-option"),
])
def test_misspelled_option_one_line_with_hint(capsys, argv, hint):
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and hint in err and "usage" not in err


@pytest.mark.parametrize("argv, want", [
    (["--lam", "-1e-2"], {"lam": -0.01}), (["--lam=-1e-2"], {"lam": -0.01}), (["--lam", "-.5"], {"lam": -0.5}),
    (["--supernet-lr", "-1e-3"], {"supernet_lr": -1e-3}), (["--tau0", "-inf"], {"tau0": -float("inf")}),
    (["--v-th", "-1E+2"], {"v_th": -100.0}), (["--seed", "-1"], {"seed": -1}),
    (["--lam", "-0.16", "--T", "3"], {"lam": -0.16, "T": 3}),
])
def test_negative_numbers_are_values_in_every_notation(argv, want):
    assert vars(config.build_parser().parse_args(argv)) == want


# ---------------------------------------------------------------------------------------------
# Options that do not apply: one rule (plumbing/config.py)
# ---------------------------------------------------------------------------------------------

# options of a part of the pipeline the run does not run: noted once in the log, not refused
NOTES = [
    (["--stage", "retrain", "--arch", "AutoSNN", "--bn-recalib", "2"], ["--bn-recalib 2 is not used"]),
    (["--stage", "supernet", "--pick", "knee", "--lam", "-0.2"], ["--lam -0.2 is not used", "--pick knee is not used"]),
    (["--objectives", "acc,spikes,sops"], ["--objectives acc,spikes,sops is not used by this run (read by --stage all "
                                           "or search with --search-algo pareto)"]),
    (["--search-algo", "random", "--mutation-prob", "0.5"], ["--mutation-prob 0.5 is not used"]),
    (["--stage", "retrain", "--model", "cifarnet-wu", "--backbone", "AutoSNN_8"], ["--backbone AutoSNN_8 is not used"]),
    (["--stage", "search", "--supernet-epochs", "5", "--supernet", "S"], ["--supernet-epochs 5 is not used"]),
    (["--search-algo", "pareto", "--objectives", "acc,spikes,sops", "--bn-recalib", "2"], []),
    (["--stage", "retrain", "--arch", "AutoSNN", "--iterations", "20"], []),      # the default: nothing to say
]


@pytest.mark.parametrize("argv, notes", NOTES, ids=[" ".join(a)[:60] for a, _ in NOTES])
def test_options_a_stage_does_not_read_are_noted(argv, notes):
    given = vars(config.build_parser().parse_args(argv))
    given.pop("supernet_path", None)                       # a checkpoint is not needed to list the notes
    cfg, _ = config.make_config(dict(given))
    got = config.unused_options(cfg, given)
    assert len(got) == len(notes) and all(any(g.startswith(n) for g in got) for n in notes), got


def test_an_unused_option_is_logged_once(tmp_path):
    assert run_cli(tmp_path, "r", "--stage", "retrain", "--arch", "AutoSNN", "--retrain-epochs", "1",
                   "--bn-recalib", "2", base=TINY1) == 0
    log = (tmp_path / "r" / "log.txt").read_text()
    assert log.count("warning: --bn-recalib 2 is not used by this run (read by --stage all or search)") == 1


def test_a_preset_value_that_does_not_apply_is_dropped_silently():
    cfg, _ = config.make_config({"dry_run": True, "stage": "retrain", "arch": "AutoSNN"})
    assert (cfg.search.iterations, cfg.supernet.supernet_epochs) == (20, 600)       # the dry-run's 3 and 4: unused
    assert config.unused_options(cfg, {"stage", "arch"}) == []


# ---------------------------------------------------------------------------------------------
# Sizes before allocation: the estimate against what a run holds
# ---------------------------------------------------------------------------------------------

def estimated(monkeypatch, argv) -> dict:
    """The parameter and activation bytes train.check_networks weighs for a configuration."""
    parts = []
    monkeypatch.setattr(train, "check_fits", lambda p, have, where: parts.extend(p))
    cfg, _ = config.make_config(vars(config.build_parser().parse_args(argv + ["--dataset", "synthetic"])))
    train.check_networks(cfg, data.load_dataset("synthetic", n_train=8, n_test=4),
                         config.Env(cfg, torch.device("cpu")))
    return {"parameters": parts[0][0], "activations": parts[1][0]}


def measured(arch, backbone: str, T: int, batch: int) -> dict:
    """What one training step (forward, backward, Adam) of the network holds: its parameters with their
    gradients and Adam's moments, and the tensors autograd keeps for backward. arch None: the super-network
    on the path check_networks probes (its untouched candidates hold no gradient: parameters not measured)."""
    torch.manual_seed(0)
    net = autosnn.SpikingNetwork(backbone, 10, arch, T)
    path = sample_arch(net.backbone, random.Random(0)) if arch is None else None
    opt = torch.optim.Adam(net.parameters())
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, _ = net(torch.randn(batch, 3, 32, 32), path)
    autosnn.rate_loss(out, torch.arange(batch) % 10, T).backward()
    opt.step()
    held = sum(t.numel() * t.element_size() for p in net.parameters()
               for t in (p, p.grad, *opt.state[p].values()) if t is not None and t.dim() > 0)
    return {"parameters": held if arch is not None else None, "activations": sum(storages.values())}


@pytest.mark.parametrize("argv, arch", [
    (["--backbone", "AutoSNN_4", "--T", "2", "--batch-size", "8", "--stage", "retrain", "--arch", "AutoSNN"], AUTOSNN),
    (["--backbone", "AutoSNN_8", "--T", "4", "--batch-size", "4", "--stage", "retrain",
      "--arch", "SCB_k3-SCB_k3-SCB_k3-SCB_k3-SCB_k3"], "SCB_k3-SCB_k3-SCB_k3-SCB_k3-SCB_k3"),
    (["--backbone", "AutoSNN_4", "--T", "3", "--batch-size", "6"], None),            # the super-network
])
def test_memory_estimate_is_within_2x_of_a_training_step(monkeypatch, argv, arch):
    """The estimate against what a training step holds: a 4x error in either part makes this fail."""
    est = estimated(monkeypatch, argv)
    got = measured(arch, argv[1], int(argv[3]), int(argv[5]))
    for part in ("parameters", "activations"):
        if got[part] is not None:
            assert 0.5 <= est[part] / got[part] <= 2, (part, est, got)


@pytest.mark.parametrize("dataset, n, T", [("synthetic", 400, 2), ("synthetic-dvs", 300, 4), ("synthetic-dvs", 60, 8)])
def test_synthetic_data_estimate_is_within_2x_of_its_peak(dataset, n, T):
    tracemalloc.start()
    try:
        (data.synthetic_images(n, [0, 0]) if dataset == "synthetic" else data.synthetic_events(n, [0, 0], T))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert 0.5 <= memory.synthetic_bytes(dataset, n, T) / peak <= 2, (memory.synthetic_bytes(dataset, n, T), peak)


def test_memory_refusal_names_the_largest_part():
    with pytest.raises(AutoSNNError, match=r"^b needs about 0.5 GiB for B alone, more than the 0.25 GiB of cpu; fix b$"):
        memory.check_fits([(2**29, "b", "B", "fix b"), (2**20, "a", "A", "fix a")], 2**28, "cpu")
    with pytest.raises(AutoSNNError, match=r"for B \(0\.75 GiB in all\)"):
        memory.check_fits([(2**29, "b", "B", "fix b"), (2**28, "a", "A", "fix a")], 2**29 + 1, "cpu")
    memory.check_fits([(2**29, "b", "B", "fix b")], 2**29, "cpu")                  # exactly fits


# ---------------------------------------------------------------------------------------------
# The search's settings
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, words", [
    ({"lam": float("nan")}, "lambda"), ({"lam": -float("inf")}, "lambda"), ({"lam": 0.1}, "lambda must be <= 0"),
    ({"lam": -1e308}, "at least -10"), ({"spike_norm": float("nan")}, "--spike-norm"),
    ({"spike_norm": float("inf")}, "--spike-norm"), ({"spike_norm": -1.0}, "--spike-norm"),
    ({"iterations": 0}, "--iterations"), ({"pool": -1}, "--pool"), ({"topk": 0}, "--topk"),
    ({"mutations": -1}, "--mutations"), ({"crossovers": -2}, "--crossovers"), ({"tries": 0}, "--tries"),
    ({"bn_recalib": -1}, "--bn-recalib"), ({"iterations": 2.5}, "--iterations"),
    ({"mutation_prob": float("nan")}, "--mutation-prob"), ({"mutation_prob": 1.5}, "--mutation-prob"),
    ({"search_algo": "genetic"}, "--search-algo"), ({"pick": "budget:-1"}, "--pick"),
    ({"objectives": "acc"}, "--objectives"),
])
def test_search_config_rejects(kw, words):
    with pytest.raises(AutoSNNError, match=words):
        SearchConfig(**kw).check()


def test_fitness_rejects_nan_lambda_and_bad_normaliser_and_never_overflows():
    with pytest.raises(AutoSNNError):
        fitness(0.5, 100, 100, float("nan"))
    with pytest.raises(AutoSNNError, match="normaliser"):
        fitness(0.5, 100, 0.0, -0.08)
    assert fitness(0.5, 100, 0.0, 0.0) == 0.5          # lambda 0 does not use it
    # the bound: any spike ratio a run can produce stays finite, and the order is kept
    assert 0 < fitness(0.5, 1e-300, 1e10, -10.0) < float("inf")
    assert fitness(0.5, 1e-300, 1e10, -10.0) >= fitness(0.5, 1e-3, 1e10, -10.0)


# ---------------------------------------------------------------------------------------------
# Divergence: stop, keep the last good checkpoint
# ---------------------------------------------------------------------------------------------

def bn_buffer(net, name):
    return next(b for n, b in net.named_buffers() if n.endswith(name))


# A diverged network can keep a finite loss (nothing spikes); its weights give it away, and so do the
# BN running statistics, which no optimizer step touches (a check of parameters only let them through).
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
    assert run_cli(tmp_path, "x", "--stage", "retrain", "--arch", "AutoSNN", base=TINY1) == 2
    err = capsys.readouterr().err.strip()
    one_line(err, words)
    assert "last good checkpoint is kept" in err and "--resume" not in err        # resuming would repeat it
    ck = torch.load(tmp_path / "x" / "child.pt", weights_only=True)
    assert ck["epoch"] == 1 and all(v.isfinite().all() for v in ck["model"].values() if v.is_floating_point())
    assert not (tmp_path / "x" / "results.json").exists()


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real = train.loss_fn

    def poisoned(net, out, y):
        calls["n"] += 1
        loss = real(net, out, y)
        return loss * float("nan") if calls["n"] > 3 else loss      # epoch 2 of 3 batches/epoch
    monkeypatch.setattr(train, "loss_fn", poisoned)
    assert run_cli(tmp_path, "nan", "--stage", "supernet") == 2
    err = capsys.readouterr().err
    assert "became nan in epoch 2" in err and "last good checkpoint" in err
    ck = torch.load(tmp_path / "nan" / "supernet.pt", weights_only=False)
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_huge_learning_rate_stops_in_the_first_epoch(tmp_path, capsys):
    """--retrain-lr 1e9: weights around 1e21, finite, the loss stuck at 0.9; once results.json said exit 0."""
    assert run_cli(tmp_path, "x", "--stage", "retrain", "--arch", "AutoSNN", "--retrain-lr", "1e9", base=TINY1) == 2
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
# bench.py: the same checks as train.py, before anything runs
# ---------------------------------------------------------------------------------------------

BENCH_BAD = [
    (["--threads", "-1"], "--threads must be an integer >= 0"),
    (["--threads", "-3"], "--threads must be an integer >= 0"),
    (["--threads", "1000"], "--threads must be at most this machine's"),
    (["--device", "tpu"], "unknown --device 'tpu'"),
    (["--device", "mps"], "only cpu and cuda"),
    (["--device", "cuda:7"], no_cuda_words()),
    (["--batch", "-1"], "--batch must be an integer >= 1"),
    (["--T", "0"], "--T must be an integer >= 1"),
    (["--reps", "0"], "--reps must be an integer >= 1"),
    (["--warmup", "-1"], "--warmup must be an integer >= 0"),
    (["--scale-T", "2", "-4"], "--scale-T values must be integers >= 1"),
    (["--backbone", "ResNet"], "unknown backbone"),
    (["--arch", "SRB_k5-nope"], "bad block"),
    (["--quick", "--T", "4"], "--quick sets --T itself (to 2); drop --T or drop --quick"),
    (["--quick", "--batch=8", "--reps", "3"], "--quick sets --batch, --reps itself"),
    (["--search-quality", "@TRUNCATED"], "is not a readable checkpoint"),
    (["--search-quality", "@SEARCHPT"], "is a search checkpoint, not a supernet one"),
    (["--search-quality", "@WIDTH8"], "does not fit this run's network (size mismatch for"),
    (["--search-quality", "@NOPE"], "is not a run folder (no config.json in it)"),
]


@pytest.mark.parametrize("argv, words", BENCH_BAD, ids=[" ".join(a)[:50] for a, _ in BENCH_BAD])
def test_bench_bad_options_one_line(ref, tmp_path, capsys, argv, words):
    folders = {"@TRUNCATED": lambda d: (d / "supernet.pt").write_bytes((ref / "supernet.pt").read_bytes()[:1000]),
               "@SEARCHPT": lambda d: (d / "supernet.pt").write_bytes((ref / "search.pt").read_bytes()),
               "@WIDTH8": lambda d: torch.save({**torch.load(ref / "supernet.pt", weights_only=True), "model":
                                                autosnn.SpikingNetwork("AutoSNN_8", 10, T=2).state_dict()},
                                               d / "supernet.pt"),
               "@NOPE": lambda d: None}
    for i, a in enumerate(argv):
        if a in folders:
            d = tmp_path / a[1:]
            d.mkdir()
            folders[a](d)
            argv = argv[:i] + [str(d)] + argv[i + 1:]
    capsys.readouterr()
    assert bench.main(argv) == 2
    assert words in err_line(capsys)


def test_speedup_is_ours_over_the_reference():
    """The one ratio bench.py and benchmarks/original.py report: > 1 when ours is faster."""
    assert speedup(300.0, 100.0) == 3.0 and speedup(50.0, 100.0) == 0.5


# ---------------------------------------------------------------------------------------------
# runs.py: rerank's values, export's NIR target
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, words", [
    (["--norm", "0"], "normaliser must be a finite number > 0"), (["--norm", "-5"], "normaliser"),
    (["--norm", "nan"], "normaliser"), (["--lam", "nan"], "lambda"), (["--lam", "0.2"], "lambda"),
    (["--lam", "-1e308"], "at least -10"), (["--lam", "-1e-2", "--top", "-1"], "--top"), (["--top", "0"], "--top"),
    (["--budget", "-1"], "budget"), (["--budget", "nan"], "budget"), (["--budget", "10"], "raise --budget"),
    (["--pick", "budget:0"], "raise the budget"), (["--pick", "nearest"], "is not lambda, knee, knee:F"),
])
def test_rerank_bad_values(ref, capsys, extra, words):
    assert runs.main(["rerank", str(ref), *extra]) == 2
    assert words in err_line(capsys)


@pytest.mark.parametrize("extra, words", [
    (["--nir", "@DIR"], "is a folder; give a file name"),
    (["--nir", "/proc/x.nir"], "cannot write /proc/x.nir"),
    (["--nir", "@DIR/no/such/x.nir"], "does not exist"),
    (["--nir", "@DIR/x.nir", "--dt", "inf"], "--dt must be a finite number > 0 (got inf)"),
    (["--nir", "@DIR/x.nir", "--dt", "-1e-3"], "--dt must be a finite number > 0 (got -0.001)"),
    (["--nir", "@DIR/x.nir", "--dt", "0"], "--dt must be a finite number > 0"),
])
def test_export_nir_target_one_line(ref, tmp_path, capsys, extra, words):
    if extra[1] == "/proc/x.nir":
        pytest.importorskip("nir")           # the write itself fails there
    extra = [a.replace("@DIR", str(tmp_path)) for a in extra]
    assert runs.main(["export", str(ref), *extra]) == 2
    assert words in err_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, hint", [
    (["rerank", "RUN", "--lamm", "-0.1"], "did you mean --lam?"),
    (["rerenk", "RUN"], "did you mean rerank?"),
    (["rerank", "RUN", "--bugdet=3"], "did you mean --budget?"),
    (["export", "RUN", "--lam", "1"], "(see runs.py export --help)"),      # no hint from another command
])
def test_runs_misspelled_option_is_one_line_with_a_hint(tmp_path, capsys, argv, hint):
    with pytest.raises(SystemExit) as e:
        runs.main([a.replace("RUN", str(tmp_path)) for a in argv])
    assert e.value.code == 2
    err = err_line(capsys)
    assert hint in err and err.startswith("runs.py")


def test_train_parser_is_the_one_line_parser(capsys):
    """bench.py and runs.py use the same parser class as train.py (one-line errors, negative numbers)."""
    assert isinstance(config.build_parser(), files.Parser) and isinstance(runs.build_parser(), files.Parser)
    with pytest.raises(SystemExit):
        bench.main(["--T", "-1e-2"])            # a value (then a type error), never "expected one argument"
    assert "invalid int value: '-1e-2'" in capsys.readouterr().err


def test_busy_machine_hint():
    """A multi-thread CPU run on a busy machine gets one hint (OMP_WAIT_POLICY unset); a quiet machine,
    one thread or a policy already chosen gets none."""
    hint = config.busy_hint(2, 3.5, 2, {})
    assert "load average 3.5 on 2 CPUs" in hint and "OMP_WAIT_POLICY=PASSIVE" in hint and "--threads 1" in hint
    assert config.busy_hint(2, 1.9, 2, {}) is None
    assert config.busy_hint(1, 9.0, 2, {}) is None
    assert config.busy_hint(2, 9.0, 2, {"OMP_WAIT_POLICY": "ACTIVE"}) is None


@pytest.mark.parametrize("load, hinted", [(99.0, True), (0.0, False)])
def test_busy_machine_hint_reaches_the_log(tmp_path, monkeypatch, cli, load, hinted):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(train.os, "getloadavg", lambda: (load, load, load))
    r = cli(TINY1 + ["--stage", "supernet", "--supernet-epochs", "1", "--threads", "2", "--out", tmp_path, "--name", "b"])
    assert r.code == 0
    assert ("this machine is busy" in (tmp_path / "b" / "log.txt").read_text()) == hinted
