"""The files of a run folder read back: each carries its run's identity (plumbing/identity.py), so a folder
assembled from two runs is refused with both files named; each is checked against its schema
(plumbing/schema.py, formats/events.py), so a damaged file is one line naming it and what to do, or a
damaged metrics row is dropped with a warning; a --pick that chooses nothing is no dead end.
Foreign files are forged from one tiny run (another run id, another T), so no second run is trained."""
import json
import re
import shutil

import numpy as np
import pytest
import torch
from conftest import one_line

import data
import files
import runs
import train
from autosnn import SpikingNetwork, save_model
from files import AutoSNNError
from formats import events
from plumbing import schema


pytestmark = pytest.mark.usefixtures("plotless")
CHECKPOINTS = ("supernet.pt", "search.pt", "child.pt")


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A copy of the shared tiny run, free to damage."""
    d = tmp_path / "run"
    shutil.copytree(tiny_run, d)
    return d


def forge(path, **changes):
    """Rewrite one file of a run folder with changed top-level fields (torch file or JSON)."""
    if path.suffix == ".pt":
        doc = torch.load(path, weights_only=True)
        doc.update(changes)
        for k in [k for k, v in changes.items() if v is DROP]:
            del doc[k]
        torch.save(doc, path)
    else:
        doc = json.loads(path.read_text())
        doc.update(changes)
        for k in [k for k, v in changes.items() if v is DROP]:
            del doc[k]
        path.write_text(json.dumps(doc))


DROP = object()


def snapshot(d):
    return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}


# ---------------------------------------------------------------------------------------------
# A folder assembled from two runs: refused, both files named, nothing written
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [*CHECKPOINTS, "search.json", "model.pt", "supernet_model.pt", "config.json"])
def test_a_file_of_another_run_is_refused_naming_both(run_copy, capsys, name):
    forge(run_copy / name, run_id="another-run")
    before = snapshot(run_copy)
    assert train.main(["--resume", str(run_copy)]) == 2
    err = capsys.readouterr().err.strip()
    one_line(err, "a run folder holds the files of one run")
    # the foreign file and the one it disagrees with (config.json; for a foreign config.json, the first checkpoint)
    other = "supernet.pt" if name == "config.json" else "config.json"
    assert f"{run_copy / name} comes from run another-run" in err or f"{run_copy / name} from run another-run" in err
    assert str(run_copy / other) in err
    assert snapshot(run_copy) == before                    # refused before anything is written


@pytest.mark.parametrize("name, key, value, words", [
    ("supernet.pt", "T", 3, "supernet.pt was made with --T 3"),          # the same run id, a hand-edited file
    ("search.pt", "seed", 7, "search.pt was made with --seed 7"),
    ("child.pt", "backbone", "AutoSNN_8", "child.pt was made with --backbone 'AutoSNN_8'"),
])
def test_a_checkpoint_of_other_options_is_refused(run_copy, capsys, name, key, value, words):
    ck = torch.load(run_copy / name, weights_only=True)
    ck["config"]["run"][key] = value
    torch.save(ck, run_copy / name)
    assert train.main(["--resume", str(run_copy)]) == 2
    err = capsys.readouterr().err.strip()
    one_line(err, words)
    assert str(run_copy / "config.json") in err


def test_child_and_model_of_another_architecture_are_refused(run_copy, capsys):
    other = "SCB_k3-SCB_k3-SCB_k3-SCB_k3-SCB_k3"
    assert (run_copy / "best_arch.txt").read_text().strip() != other
    run_id = json.loads((run_copy / "config.json").read_text())["run_id"]
    save_model(SpikingNetwork("AutoSNN_4", 10, other, T=2), run_copy / "model.pt", run_id=run_id)
    assert train.main(["--resume", str(run_copy)]) == 2
    one_line(capsys.readouterr().err.strip(), f"model.pt holds the network {other}, {run_copy / 'best_arch.txt'} names")


@pytest.mark.parametrize("name", [*CHECKPOINTS, "search.json", "model.pt"])
def test_a_file_without_run_id_is_of_an_older_version(run_copy, capsys, name):
    forge(run_copy / name, run_id=DROP)
    assert train.main(["--resume", str(run_copy)]) == 2
    one_line(capsys.readouterr().err.strip(), "made by an older version of this project")


def test_a_config_of_an_older_version_is_rebuilt_from_the_checkpoints_or_refused(run_copy, capsys):
    forge(run_copy / "config.json", run_id=DROP)
    assert train.main(["--resume", str(run_copy)]) == 0          # the checkpoints hold the configuration
    assert json.loads((run_copy / "config.json").read_text())["run_id"] == \
        torch.load(run_copy / "supernet.pt", weights_only=True)["run_id"]
    forge(run_copy / "config.json", run_id=DROP)
    for name in CHECKPOINTS:
        (run_copy / name).unlink()
    assert train.main(["--resume", str(run_copy)]) == 2
    one_line(capsys.readouterr().err.strip(), "config.json records no run id: made by an older version")


def test_a_search_resumes_only_from_the_super_network_it_started_from(tiny_run, tmp_path, capsys):
    sup = tmp_path / "supernet.pt"
    shutil.copy(tiny_run / "supernet.pt", sup)
    argv = ["--stage", "search", "--supernet", str(sup), "--iterations", "1", "--pool", "2", "--out", str(tmp_path),
            "--name", "s", "--log-every", "0"]
    assert train.main(argv) == 0
    assert json.loads((tmp_path / "s" / "config.json").read_text())["supernet_run"] == \
        torch.load(sup, weights_only=True)["run_id"]
    forge(sup, run_id="retrained-since")                  # another run wrote its super-network there
    assert train.main(["--resume", str(tmp_path / "s")]) == 2
    one_line(capsys.readouterr().err.strip(), f"--supernet {sup} now holds the super-network of run retrained-since")


def edit_checkpoint(path, damage):
    ck = torch.load(path, weights_only=True)
    damage(ck)
    torch.save(ck, path)


@pytest.mark.parametrize("name, damage, words", [
    ("child.pt", lambda c: c.pop("history"), "child.pt lacks history: it is damaged, or was made by an older"),
    ("supernet.pt", lambda c: c.update(epoch="2"), "supernet.pt is damaged (epoch '2')"),
    ("search.pt", lambda c: c["search"]["history"][0].update(acc="x"), "search.pt: record 0 of \"history\" has acc 'x'"),
    ("search.pt", lambda c: c.update(search=5), "search.pt holds no search state"),
])
def test_a_damaged_checkpoint_is_one_line(run_copy, capsys, name, damage, words):
    edit_checkpoint(run_copy / name, damage)
    assert train.main(["--resume", str(run_copy)]) == 2
    one_line(capsys.readouterr().err.strip(), words)


def test_a_bad_value_in_a_saved_configuration_names_the_file(run_copy, tmp_path, capsys):
    """The user did not type it: the line names the file it came from (an option typed is named as typed)."""
    cfg = json.loads((run_copy / "config.json").read_text())
    cfg["search"]["lam"] = 5.0
    (run_copy / "config.json").write_text(json.dumps(cfg))
    assert train.main(["--resume", str(run_copy)]) == 2
    one_line(capsys.readouterr().err.strip(), f"error: {run_copy / 'config.json'}: lambda must be <= 0")
    assert train.main(["--resume", str(run_copy), "--threads", "1000"]) == 2
    one_line(capsys.readouterr().err.strip(), "error: --threads must be at most")
    edit_checkpoint(run_copy / "supernet.pt", lambda c: c["config"]["run"].update(T=-1))
    assert train.main(["--stage", "search", "--supernet", str(run_copy / "supernet.pt"), "--out", str(tmp_path),
                       "--name", "s"]) == 2
    one_line(capsys.readouterr().err.strip(), f"error: {run_copy / 'supernet.pt'}: --T must be an integer >= 1")
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------------------------------------
# The retrained network: SpikingNetwork.load and runs.py export check it against its run
# ---------------------------------------------------------------------------------------------

def other_arch(d):
    cfg = json.loads((d / "config.json").read_text())
    save_model(SpikingNetwork("AutoSNN_4", 10, "SCB_k3-SCB_k3-SCB_k3-SCB_k3-SCB_k3", T=2), d / "model.pt",
               run_id=cfg["run_id"])


def nan_weights(d):
    doc = torch.load(d / "model.pt", weights_only=True)
    next(iter(doc["state_dict"].values())).fill_(float("nan"))
    torch.save(doc, d / "model.pt")


MODEL_CASES = [
    (other_arch, "holds a network of arch SCB_k3-SCB_k3-SCB_k3-SCB_k3-SCB_k3, while"),
    (lambda d: forge(d / "model.pt", run_id="another-run"), "it comes from run another-run"),
    (lambda d: forge(d / "model.pt", run_id=None), "it comes from run None"),
    (nan_weights, "the weights are not finite (first: stem.conv.weight)"),
    (lambda d: edit_checkpoint(d / "model.pt", lambda doc: doc.update(state_dict={"a": 5})),
     "the weights are not a state dict of tensors"),
    (lambda d: (d / "best_arch.txt").write_bytes(b"\xff\xfe\x00"), "best_arch.txt: not text; the file is damaged"),
    (lambda d: (d / "best_arch.txt").write_text("SRB_k5-nonsense\n"), "best_arch.txt: bad block 'nonsense'"),
    (lambda d: shutil.copy(d / "supernet_model.pt", d / "model.pt"), "holds the super-network: load it with "
                                                                      "SpikingNetwork.load(path, supernet=True)"),
]


@pytest.mark.parametrize("damage, words", MODEL_CASES, ids=[w[:40] for _, w in MODEL_CASES])
def test_the_load_snippet_and_export_refuse_what_is_not_the_runs_network(run_copy, capsys, damage, words):
    damage(run_copy)
    with pytest.raises(AutoSNNError, match=re.escape(words)) as e:
        SpikingNetwork.load(run_copy)
    assert "\n" not in str(e.value)
    assert runs.main(["export", str(run_copy)]) == 2
    one_line(capsys.readouterr().err.strip(), words)


def test_a_child_is_not_a_super_network(tiny_run):
    with pytest.raises(AutoSNNError, match="holds a child network, not the super-network"):
        SpikingNetwork.load(tiny_run / "model.pt", supernet=True)
    assert SpikingNetwork.load(tiny_run).arch is not None and SpikingNetwork.load(tiny_run, supernet=True).arch is None


# ---------------------------------------------------------------------------------------------
# Schemas: metrics.jsonl rows and search.json records
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, why", [
    (b'{"stage": "supernet", "epoch": 1, "loss": 0.5}', None),
    (b'{"stage": "search", "generation": 2, "best_fitness": 0.3, "best_arch": "x"}', None),
    (b'{"stage": "supernet", "epoch": "two"}', "epoch 'two' is not an integer >= 1"),
    (b'{"stage": "supernet", "epoch": true}', "epoch True is not an integer >= 1"),
    (b'{"stage": "supernet", "epoch": 0}', "epoch 0 is not an integer >= 1"),
    (b'{"stage": "retrain", "epoch": 1, "acc": "high"}', "acc 'high' is not a number"),
    (b'{"epoch": 1}', "no stage name"),
    (b'[1, 2]', "not a JSON object"),
    (b'{"stage": "sup', "not JSON"),
    (b'\xff\xfe\x00 garbage', "not text"),
])
def test_metrics_rows(line, why):
    row, found = schema.read_metrics_row(line)
    assert found == why and (row is None) == (why is not None)


def test_damaged_metrics_rows_are_dropped_with_a_warning_on_resume(run_copy):
    path = run_copy / "metrics.jsonl"
    lines = path.read_bytes().split(b"\n")
    good = [ln for ln in lines if ln]
    path.write_bytes(b"\n".join([b'{"stage": "supernet", "epoch": "two"}', b"\xff\xfe binary", *good]) + b"\n")
    assert train.main(["--resume", str(run_copy)]) == 0
    assert path.read_bytes().split(b"\n")[:len(good)] == good      # the damaged rows gone, the rest kept
    log = (run_copy / "log.txt").read_text()
    assert "metrics.jsonl: dropped damaged line(s) 1 (epoch 'two' is not an integer >= 1), 2 (not text)" in log


GOOD = {"generation": 1, "arch": "SRB_k5-SRB_k5-skip_connect-SRB_k3-SRB_k5", "acc": 0.5, "spikes": 100.0,
        "fitness": 0.4, "neuron_spikes": 90.0}


@pytest.mark.parametrize("change, why", [
    ({}, None),
    ({"acc": "x"}, "has acc 'x', not a finite number in [0, 1]"),
    ({"acc": float("nan")}, "has acc nan"),
    ({"acc": 1.5}, "has acc 1.5"),
    ({"spikes": None}, "has spikes None, not a finite number >= 0"),
    ({"spikes": -1.0}, "has spikes -1.0"),
    ({"fitness": float("inf")}, "has fitness inf"),
    ({"arch": 5}, "has arch 5, not an architecture string"),
    ({"generation": "1"}, "has generation '1'"),
    ({"sops": "many"}, "has sops 'many'"),
    ({"acc": True}, "has acc True"),
])
def test_search_records(change, why):
    found = schema.record_problem({**GOOD, **change})
    assert found is None if why is None else why in found, found


@pytest.mark.parametrize("damage, words", [
    (lambda doc: doc["history"][0].update(acc="x"), "record 0 of \"history\" has acc 'x'"),
    (lambda doc: doc["history"][1].update(spikes=None), "record 1 of \"history\" has spikes None"),
    (lambda doc: doc["history"][0].update(arch=5), "has arch 5"),
    (lambda doc: [r.update(acc=float("nan")) for r in doc["history"]], "has acc nan"),
    (lambda doc: doc.update(pick=3), "\"pick\" is 3, of the wrong type"),
    (lambda doc: doc.update(lam="strong"), "\"lam\" is 'strong'"),
    (lambda doc: doc.pop("run_id"), "was made by an older version"),
])
def test_a_damaged_search_json_is_one_line_for_rerank_export_and_plot(run_copy, capsys, damage, words):
    doc = json.loads((run_copy / "search.json").read_text())
    damage(doc)
    (run_copy / "search.json").write_text(json.dumps(doc))
    for argv in (["rerank", str(run_copy)], ["export", str(run_copy)], ["plot", str(run_copy)]):
        if argv[0] == "plot":
            pytest.importorskip("matplotlib")
        capsys.readouterr()
        assert runs.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        one_line(err, words)
        assert str(run_copy / "search.json") in err


@pytest.mark.parametrize("damage, words", [
    (lambda c: c.update(run=5), "config.json is not a run configuration"),
    (lambda c: c["run"].update(T="two"), "option T = 'two' has the wrong type"),
    (lambda c: c.pop("run_id"), "config.json records no run id: made by an older version"),
])
def test_export_of_a_damaged_config_is_one_line(run_copy, capsys, damage, words):
    cfg = json.loads((run_copy / "config.json").read_text())
    damage(cfg)
    (run_copy / "config.json").write_text(json.dumps(cfg))
    assert runs.main(["export", str(run_copy)]) == 2
    one_line(capsys.readouterr().err.strip(), words)


def test_export_refuses_a_best_arch_the_search_never_evaluated(run_copy, capsys):
    (run_copy / "best_arch.txt").write_text("SCB_k3-SCB_k3-SCB_k3-SCB_k3-SCB_k3\n")
    (run_copy / "model.pt").unlink()
    assert runs.main(["export", str(run_copy)]) == 2
    one_line(capsys.readouterr().err.strip(), "which " + str(run_copy / "search.json") + " never evaluated")


def test_plot_skips_damaged_metrics_rows(run_copy):
    pytest.importorskip("matplotlib")
    path = run_copy / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows[0]["epoch"] = "two"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    notes = []
    from plumbing.plots import plot_run
    assert plot_run(run_copy, notes.append) == ["pareto.png", "curves.png"]
    assert any("line 1 is damaged (epoch 'two' is not an integer >= 1)" in n for n in notes), notes


# ---------------------------------------------------------------------------------------------
# Frame caches: labels, counts, shapes
# ---------------------------------------------------------------------------------------------

def cache(root, damage=None):
    """A CIFAR10-DVS frame cache of 12 training and 6 test samples (T = 2) under root, damaged by
    damage(index dict, cache folder)."""
    folder = events.cache_folder(root / "cifar10dvs", 2, "number")
    key = events.cache_key("cifar10dvs", 2, "number")
    rng = np.random.default_rng(0)

    def samples(n):
        for i in range(n):
            t = np.sort(rng.integers(0, 1000, 50))
            yield (rng.integers(0, 128, 50), rng.integers(0, 128, 50), rng.integers(0, 2, 50), t), i % 10
    events.write_split(folder, "train", samples(12), 2, "number", key)
    events.write_split(folder, "test", samples(6), 2, "number", key)
    if damage is not None:
        meta = json.loads((folder / "train.json").read_text())
        damage(meta, folder)
        (folder / "train.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize("damage, words", [
    (lambda m, f: m.update(labels=[str(v) for v in m["labels"]]), "label '0' is not a class index in 0..9"),
    (lambda m, f: m["labels"].__setitem__(3, 99), "label 99 is not a class index in 0..9"),
    (lambda m, f: m["labels"].__setitem__(3, True), "label True is not a class index"),
    (lambda m, f: m["labels"].pop(), "12 files and 11 labels"),
    (lambda m, f: m["files"].append("train/000099.npz"), "13 files and 12 labels"),
    (lambda m, f: m["files"].__setitem__(0, "../../elsewhere.npz"), "is not a sample file of train/"),
    (lambda m, f: m.update(labels={"a": 1}), "files and labels must be lists"),
])
def test_a_damaged_cache_index_is_one_line_before_anything_runs(tmp_path, damage, words):
    folder = cache(tmp_path, damage)
    with pytest.raises(AutoSNNError, match="delete .* to rebuild it") as e:
        data.load_dataset("cifar10dvs", tmp_path, T=2)
    assert words in str(e.value) and str(folder / "train.json") in str(e.value)


def test_a_cached_frame_of_another_shape_is_one_line_and_the_run_resumable(tmp_path, capsys):
    folder = cache(tmp_path)
    meta = json.loads((folder / "train.json").read_text())
    np.savez_compressed(folder / meta["files"][2], frames=np.zeros((2, 2, 64, 64), np.uint8))
    train_split = data.load_dataset("cifar10dvs", tmp_path, T=2).train_data     # the file is read with its batch
    with pytest.raises(AutoSNNError, match=r"are uint8 \[2, 2, 64, 64\], not counts of shape \[2, 2, 128, 128\]"):
        list(train_split.batches(4))
    argv = ["--dataset", "cifar10dvs", "--data-root", str(tmp_path), "--T", "2", "--backbone", "AutoSNN_4",
            "--batch-size", "4", "--stage", "retrain", "--arch", "AutoSNN", "--retrain-epochs", "1",
            "--log-every", "0", "--device", "cpu", "--out", str(tmp_path), "--name", "r"]
    assert train.main(argv) == 2
    one_line(capsys.readouterr().err.strip(), f"; continue with --resume {tmp_path / 'r'}")
    shutil.rmtree(folder)
    cache(tmp_path)                            # rebuilt (here: written again)
    assert train.main(["--resume", str(tmp_path / "r")]) == 0


# ---------------------------------------------------------------------------------------------
# No dead end: a pick that chooses nothing
# ---------------------------------------------------------------------------------------------

def test_a_pick_that_chooses_nothing_finishes_the_search_and_can_be_changed(tiny_run, tmp_path, capsys):
    """--pick budget:0: the search is done and saved; --stage all stops before retraining with the way out,
    --stage search ends with a warning; rerank --pick shows the front; --resume --pick chooses again."""
    argv = ["--stage", "search", "--supernet", str(tiny_run / "supernet.pt"), "--iterations", "1", "--pool", "3",
            "--pick", "budget:0", "--out", str(tmp_path), "--log-every", "0"]
    assert train.main(argv + ["--name", "s"]) == 0
    d = tmp_path / "s"
    assert not (d / "best_arch.txt").exists() and (d / "search.pt").is_file()
    assert "--pick budget:0 chooses nothing" in (d / "log.txt").read_text()
    capsys.readouterr()
    assert runs.main(["export", str(d)]) == 2
    err = capsys.readouterr().err.strip()
    one_line(err, "--pick budget:0 chooses nothing")
    assert f"{files.python()} train.py --resume {d} --pick RULE" in err
    assert runs.main(["rerank", str(d), "--pick", "knee"]) == 0
    knee = capsys.readouterr().out.splitlines()[1].split()[0]
    assert train.main(["--resume", str(d), "--pick", "knee"]) == 0
    assert (d / "best_arch.txt").read_text().strip() == knee
    assert json.loads((d / "config.json").read_text())["search"]["pick"] == "knee"
    assert json.loads((d / "search.json").read_text())["pick"] == "knee"
    assert train.main(["--resume", str(d), "--pick", "budget:0"]) == 0          # and back: no stale choice
    assert not (d / "best_arch.txt").exists()


def test_stage_all_stops_before_retraining_and_resumes_with_another_pick(run_copy, capsys):
    """The tiny run, resumed with a pick that chooses nothing after its retraining began: refused before
    anything changes; a folder without child.pt stops with the way out, which then works."""
    assert train.main(["--resume", str(run_copy), "--pick", "budget:0"]) == 2
    one_line(capsys.readouterr().err.strip(), "no architecture has spikes per image <= 0")
    for name in ("child.pt", "model.pt", "results.json", "best_arch.txt"):
        (run_copy / name).unlink()
    assert train.main(["--resume", str(run_copy), "--pick", "budget:0"]) == 2
    err = capsys.readouterr().err.strip()
    one_line(err, "the search is done and saved, but --pick budget:0 chooses nothing")
    assert not (run_copy / "best_arch.txt").exists() and not (run_copy / "child.pt").exists()
    assert train.main(["--resume", str(run_copy), "--pick", "lambda"]) == 0
    assert json.loads((run_copy / "results.json").read_text())["arch"] == (run_copy / "best_arch.txt").read_text().strip()


def test_a_pick_that_changes_the_choice_after_retraining_began_is_refused(run_copy, capsys):
    ck = torch.load(run_copy / "search.pt", weights_only=True)
    chosen = (run_copy / "best_arch.txt").read_text().strip()
    other = next(r for r in ck["search"]["history"] if r["arch"] != chosen)
    other.update(acc=1.0, spikes=1.0)                     # now the knee and the fittest
    torch.save(ck, run_copy / "search.pt")
    before = snapshot(run_copy)
    assert train.main(["--resume", str(run_copy), "--pick", "knee"]) == 2
    one_line(capsys.readouterr().err.strip(), f"--pick knee chooses {other['arch']}, but {run_copy / 'child.pt'} "
                                              f"already retrains {chosen}")
    assert snapshot(run_copy) == before
