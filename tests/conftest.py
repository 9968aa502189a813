"""Helpers shared by the test files: tiny command lines, running train.main with its exit code and
stderr, a fixture that skips the plots, a made-up evaluator for the search, comparing two runs,
counting host syncs, seeding, and the paper's normalisation constants."""
import json
from dataclasses import dataclass

import pytest
import torch


# a whole pipeline in seconds: 96 synthetic images, width 4, T = 2, 2 + 2 epochs, a 3 x 4 search, 2 paths watched
TINY = ["--dataset", "synthetic", "--n-train", "96", "--n-test", "32", "--backbone", "AutoSNN_4", "--T", "2",
        "--batch-size", "32", "--eval-batch-size", "64", "--supernet-epochs", "2", "--retrain-epochs", "2",
        "--iterations", "3", "--pool", "4", "--topk", "2", "--mutations", "2", "--crossovers", "1",
        "--log-every", "0", "--device", "cpu", "--watch-archs", "2", "--watch-recalib", "1"]
# smaller still (2 batches per epoch, 2 x 3 search), one thread: the killed subprocesses of
# test_reliability.py share 2 cores with everything else
TINY1 = TINY + ["--n-train", "64", "--iterations", "2", "--pool", "3", "--mutations", "1", "--threads", "1"]


# The paper's per-channel (R, G, B) mean and std of pixel / 255 (the original's transforms)
PAPER_NORMALISATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "tinyimagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),        # ImageNet's
}


def seeded(seed=0):
    """Seed torch's global generator and return a torch.Generator seeded the same way."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def no_plots(*args, **kwargs):
    return []        # plots are most of a tiny run's time; test_baselines.py tests them


@pytest.fixture
def plotless(monkeypatch):
    """train.main without drawing plots (use with pytestmark = pytest.mark.usefixtures("plotless"))."""
    import train
    monkeypatch.setattr(train, "plot_run", no_plots)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One uninterrupted tiny run (TINY1, all three stages), shared by the test files: the reference a
    resumed run must equal, and the files that bad input is tried against. Copy it before changing it."""
    import train
    out = tmp_path_factory.mktemp("tiny_run")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(train, "plot_run", no_plots)
        assert train.main(TINY1 + ["--out", str(out), "--name", "ref"]) == 0
    return out / "ref"


def run_cli(out, name, *extra, base=TINY) -> int:
    """train.main on a tiny configuration in out/name; returns the exit code."""
    import train
    return train.main(list(base) + ["--out", str(out), "--name", name, *extra])


@dataclass
class Result:
    code: int
    err: str           # stderr, stripped
    out: str


@pytest.fixture
def cli(capsys):
    """cli(argv) -> Result(code, err, out) of train.main(argv)."""
    import train

    def run(argv) -> Result:
        capsys.readouterr()
        code = train.main([str(a) for a in argv])
        c = capsys.readouterr()
        return Result(code, c.err.strip(), c.out)
    return run


def one_line(err: str, words: str) -> None:
    assert words in err and len(err.splitlines()) == 1 and "Traceback" not in err, err


def fake_eval(archs):
    """Deterministic made-up accuracy and spikes from the architecture string."""
    out = []
    for a in archs:
        h = sum(ord(c) * (i + 1) for i, c in enumerate(str(a)))
        out.append({"acc": 0.3 + (h % 97) / 200, "spikes": 5e4 + (h % 89) * 1e3, "neuron_spikes": 4e4})
    return out


def state_of(d):
    child = torch.load(d / "child.pt", weights_only=True)["model"]
    sup = torch.load(d / "supernet.pt", weights_only=True)["model"]
    return (json.loads((d / "search.json").read_text())["history"], (d / "best_arch.txt").read_text(),
            child, sup, json.loads((d / "results.json").read_text())["test_acc"])


def assert_same_run(a, b):
    """Two finished run folders hold the same search, architecture, weights and result."""
    ha, aa, ca, sa, ta = state_of(a)
    hb, ab, cb, sb, tb = state_of(b)
    assert ha == hb and aa == ab and ta == tb
    for k in ca:
        assert torch.equal(ca[k], cb[k]), k
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


HOST_SYNCS = ("item", "cpu", "tolist", "numpy", "__bool__", "__int__", "__float__")


def count_host_syncs(monkeypatch) -> list:
    """From now on, record every call that would make the host wait for a CUDA device: Tensor.item, .cpu,
    .tolist, .numpy, Python bool/int/float of a tensor, torch.tensor(..., device=...). Returns the list of
    call names (in any thread), which the caller may clear."""
    calls = []
    for name in HOST_SYNCS:
        def counted(self, *args, _orig=getattr(torch.Tensor, name), _name=name, **kwargs):
            calls.append(_name)
            return _orig(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    make = torch.tensor

    def tensor(*args, **kwargs):
        if kwargs.get("device") is not None:
            calls.append("torch.tensor(device=...)")
        return make(*args, **kwargs)
    monkeypatch.setattr(torch, "tensor", tensor)
    return calls


def count_syncs(monkeypatch, fn) -> int:
    """How many host syncs fn() makes (count_host_syncs while it runs)."""
    calls = count_host_syncs(monkeypatch)
    fn()
    monkeypatch.undo()
    return len(calls)


def cuda_epoch_without_sync(split, batch_size: int, seed: int) -> tuple[list, list]:
    """(CPU batches, CUDA batches) of one shuffled epoch of `split`. Every CUDA batch after the first (which
    copies the samples to the card) runs under sync debug mode "error", so a host sync raises."""
    it = split.batches(batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed), device="cuda")
    first = next(it)
    torch.cuda.set_sync_debug_mode("error")
    try:
        rest = list(it)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu = list(split.batches(batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)))
    return cpu, [first] + rest




def by_steps(n, x):
    """Neuron n's spikes from Neuron.step, one time step at a time. x: [T, B, ...]."""
    v, out = torch.zeros_like(x[0]), []
    for x_t in x:
        s, v = n.step(x_t, v)
        out.append(s)
    return torch.stack(out)
