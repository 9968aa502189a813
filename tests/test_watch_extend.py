"""Watching the super-network learn (--watch-every: fixed paths on D_val every epoch) and extending a
finished run (--resume RUN --supernet-epochs N / --retrain-epochs N)."""
import json

import pytest
import torch

from conftest import TINY, assert_same_run, run_cli

pytestmark = pytest.mark.usefixtures("plotless")


def with_option(argv, name, value):
    argv = list(argv)
    argv[argv.index(name) + 1] = value
    return argv


def supernet_checkpoint(d):
    return torch.load(d / "supernet.pt", weights_only=True)


@pytest.mark.slow
def test_watching_leaves_the_training_as_it_was(tmp_path):
    """Watching (child copies, BN re-estimated on their own batches, generators of their own) must
    not change what the super-network learns: weights, optimiser, every generator state."""
    assert run_cli(tmp_path, "off", "--stage", "supernet", "--watch-every", "0") == 0
    assert run_cli(tmp_path, "on", "--stage", "supernet", "--watch-every", "1", "--watch-archs", "3",
                   "--watch-recalib", "1") == 0
    a, b = supernet_checkpoint(tmp_path / "off"), supernet_checkpoint(tmp_path / "on")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["rng"]["random"] == b["rng"]["random"] and torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert torch.equal(a["data_gen"], b["data_gen"]) and a["path_rng"] == b["path_rng"]
    assert str(a["optimizer"]) == str(b["optimizer"])
    rows = [json.loads(x) for x in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("stage") == "supernet"]
    assert [len(r["val_path_acc"]) for r in rows] == [3, 3] and rows[0]["val_tau"] is None
    for r in rows:
        assert r["val_acc"] == pytest.approx(sum(r["val_path_acc"]) / 3)
        assert r["val_spikes_sd"] >= 0 and r["val_spikes"] > 0
    log = (tmp_path / "on" / "log.txt").read_text()
    assert "watching 3 fixed paths on 20 D_val images every 1 epoch(s)" in log
    assert "| D_val, 3 fixed paths: acc" in log and "tau vs last" in log
    off = [json.loads(x) for x in (tmp_path / "off" / "metrics.jsonl").read_text().splitlines()]
    assert not any("val_acc" in r for r in off)


def test_watched_paths_are_evaluated_as_the_search_would(tmp_path):
    """The logged figures are those of evaluation.evaluate_archs on the same paths and batches."""
    import random

    from autosnn import SpikingNetwork
    from data import load_dataset
    from evaluation import distinct_archs, watch
    assert run_cli(tmp_path, "w", "--stage", "supernet", "--watch-every", "2", "--watch-archs", "2",
                   "--watch-images", "8", "--watch-recalib", "0") == 0
    rows = [json.loads(x) for x in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r.get("stage") == "supernet"][-1]
    net = SpikingNetwork.load(tmp_path / "w", supernet=True)
    seed = json.loads((tmp_path / "w" / "config.json").read_text())["run"]["seed"]
    val = load_dataset("synthetic", n_train=96, n_test=32, T=2).search_split(0.8)[1].subset(range(8))
    archs = distinct_archs(net.backbone, 2, random.Random(seed + 1))
    want = watch(net, archs, lambda: val.batches(64), None, None)
    assert last["val_path_acc"] == want["val_path_acc"] and last["val_path_spikes"] == want["val_path_spikes"]


@pytest.mark.slow
def test_extending_a_finished_run_equals_a_straight_one(tmp_path, cli):
    """2 + 2 epochs, extended to 3 + 3 with --resume, ends where a 3 + 3 run does; the old search
    and retraining are set aside."""
    straight = with_option(with_option(TINY, "--supernet-epochs", "3"), "--retrain-epochs", "3")
    assert run_cli(tmp_path, "straight", base=straight) == 0
    assert run_cli(tmp_path, "ext") == 0
    old_best = (tmp_path / "ext" / "best_arch.txt").read_text()
    r = cli(["--resume", tmp_path / "ext", "--supernet-epochs", "3", "--retrain-epochs", "3"])
    assert r.code == 0, r.err
    assert_same_run(tmp_path / "straight", tmp_path / "ext")
    aside = tmp_path / "ext" / "superseded" / "supernet-2-epochs"
    assert (aside / "best_arch.txt").read_text() == old_best and (aside / "search.pt").is_file()
    cfg = json.loads((tmp_path / "ext" / "config.json").read_text())
    assert (cfg["supernet"]["supernet_epochs"], cfg["retrain"]["retrain_epochs"]) == (3, 3)
    assert [e["option"] for e in cfg["extended"]] == ["supernet_epochs", "retrain_epochs"]
    # a plain resume now continues the extended run (nothing to do); the same extension again is a no-op
    assert cli(["--resume", tmp_path / "ext"]).code == 0
    assert cli(["--resume", tmp_path / "ext", "--supernet-epochs", "3"]).code == 0
    assert_same_run(tmp_path / "straight", tmp_path / "ext")
    rows = [json.loads(x) for x in (tmp_path / "ext" / "metrics.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows if r.get("stage") == "search"] == [1, 2, 3]    # no stale rows


@pytest.mark.slow
def test_extending_only_the_retraining(tmp_path, cli):
    assert run_cli(tmp_path, "straight", base=with_option(TINY, "--retrain-epochs", "3")) == 0
    assert run_cli(tmp_path, "ext") == 0
    assert cli(["--resume", tmp_path / "ext", "--retrain-epochs", "3"]).code == 0
    assert_same_run(tmp_path / "straight", tmp_path / "ext")
    assert not (tmp_path / "ext" / "superseded").exists()


def test_bad_extensions_are_one_line(tmp_path, cli):
    assert run_cli(tmp_path, "s", "--stage", "supernet", "--watch-every", "0") == 0
    for argv, words in ((["--supernet-epochs", "1"], "can only extend a stage, and"),
                        (["--retrain-epochs", "5"], "has no such stage to extend"),
                        (["--lam", "-0.2"], "drop --lam")):
        r = cli(["--resume", tmp_path / "s"] + argv)
        assert r.code == 2 and words in r.err and len(r.err.splitlines()) == 1, r.err
    assert run_cli(tmp_path, "sgd", "--stage", "retrain", "--arch", "AutoSNN", "--optimizer", "sgd",
                   "--retrain-epochs", "1") == 0
    r = cli(["--resume", tmp_path / "sgd", "--retrain-epochs", "2"])
    assert r.code == 2 and "SGD retraining steps its learning rate" in r.err


def test_balanced_paths_use_every_candidate_once_per_block():
    import random

    from search_space import balanced_paths, get_backbone
    bb = get_backbone("AutoSNN_4")
    draw = balanced_paths(bb, random.Random(0))
    paths = [draw() for _ in range(15)]
    for b in range(3):
        block = paths[5 * b:5 * b + 5]
        for pos in range(len(bb.searched)):
            assert sorted(p[pos] for p in block) == sorted(bb.candidates), (b, pos)
    assert paths[:5] != paths[5:10]
    again = balanced_paths(bb, random.Random(0))
    assert [again() for _ in range(15)] == paths


@pytest.mark.slow
def test_fair_sampling_and_cosine_schedule_reach_the_training(tmp_path, monkeypatch, cli):
    """--path-sampling fair: the paths the super-network trains on come in balanced blocks;
    --supernet-schedule cosine: the learning rate ends at 0; neither extends."""
    import train
    seen, real = [], train.train_epoch

    def spy(net, optimizer, batches, n_batches, path, *args, **kwargs):
        def recorded():
            seen.append(path())
            return seen[-1]
        return real(net, optimizer, batches, n_batches, recorded, *args, **kwargs)
    monkeypatch.setattr(train, "train_epoch", spy)
    assert run_cli(tmp_path, "f", "--stage", "supernet", "--batch-size", "16", "--watch-every", "0",
                   "--path-sampling", "fair", "--supernet-schedule", "cosine") == 0
    assert len(seen) == 10                      # 2 epochs of 5 batches: one block each
    for block in (seen[:5], seen[5:]):
        for pos in range(5):
            assert len({p[pos] for p in block}) == 5
    ck = supernet_checkpoint(tmp_path / "f")
    assert ck["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    r = cli(["--resume", tmp_path / "f", "--supernet-epochs", "3"])
    assert r.code == 2 and "cosine learning rate is scheduled over the planned epochs" in r.err
    r = cli(TINY + ["--path-sampling", "fairer", "--out", tmp_path, "--name", "x"])
    assert r.code == 2 and "--path-sampling must be uniform or fair" in r.err
