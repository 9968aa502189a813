"""--dataset npz:PATH (formats/npz.py, data.py): a dataset of your own in one .npz file. Layouts, the
normalisation from the training split, the test split without x_test, hflip, event frames, and one
line for every kind of bad file."""
import numpy as np
import pytest
import torch

from data import load_dataset
from files import AutoSNNError
from formats import npz


def images(n, seed=0, side=32):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8), (np.arange(n) % 3).astype(np.int64)


def write(tmp_path, name="d.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_channels_last_and_first_give_the_same_dataset(tmp_path):
    x, y = images(20)
    a = load_dataset(write(tmp_path, "a.npz", x=x, y=y, x_test=x[:5], y_test=y[:5]))
    b = load_dataset(write(tmp_path, "b.npz", x=x.transpose(0, 3, 1, 2), y=y, x_test=x[:5].transpose(0, 3, 1, 2),
                           y_test=y[:5]))
    assert a.input_shape == b.input_shape == (3, 32, 32) and a.num_classes == 3 and not a.is_event
    assert torch.equal(a.train_data.images, b.train_data.images) and torch.equal(a.train_data.images[:, :, 2, 5],
                                                                                 torch.from_numpy(x[:, 2, 5, :]))
    xa, _ = next(iter(a.test_data.batches(5)))
    xb, _ = next(iter(b.test_data.batches(5)))
    assert torch.equal(xa, xb)


def test_normalisation_is_the_training_splits_own(tmp_path):
    x, y = images(30)
    x[:, :, :, 1] //= 2                                   # channel 1 darker: its own mean and std
    xt = np.full((6, 32, 32, 3), 255, np.uint8)           # a bright test set must not move the statistics
    ds = load_dataset(write(tmp_path, x=x, y=y, x_test=xt, y_test=y[:6]))
    v = x.astype(np.float64) / 255
    assert ds.train_data.mean == pytest.approx(tuple(v.mean((0, 1, 2))), abs=1e-12)
    assert ds.train_data.std == pytest.approx(tuple(v.std((0, 1, 2))), abs=1e-12)
    batch, _ = next(iter(ds.test_data.batches(6)))
    want = (1.0 - torch.tensor(ds.train_data.mean)) / torch.tensor(ds.train_data.std)
    assert torch.allclose(batch[0, :, 0, 0], want.float())
    xs, _ = next(iter(ds.train_data.batches(30)))         # untransformed training set: mean 0, std 1 per channel
    assert torch.allclose(xs.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(xs.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)


def test_without_x_test_the_last_fifth_is_the_test_set(tmp_path):
    x, y = images(23)
    lines = []
    ds = load_dataset(write(tmp_path, x=x, y=y), log=lines.append)
    assert len(ds.train_data) == 19 and len(ds.test_data) == 4          # 23 // 5 = 4
    assert torch.equal(ds.test_data.labels, torch.from_numpy(y[19:]))
    assert torch.equal(ds.train_data.images, torch.from_numpy(x[:19].transpose(0, 3, 1, 2).copy()))
    assert "the last 4 of 23 samples" in lines[0] and "mean" in lines[0]


def test_hflip_0_turns_the_training_flip_off(tmp_path):
    x, y = images(8)
    on = load_dataset(write(tmp_path, "on.npz", x=x, y=y, x_test=x, y_test=y)).split("train")
    off = load_dataset(write(tmp_path, "off.npz", x=x, y=y, x_test=x, y_test=y, hflip=np.uint8(0))).split("train")
    assert on.hflip and not off.hflip
    # the same draws (crop offsets and flips); only the flip is not applied
    g = lambda: torch.Generator().manual_seed(3)
    (a, _), (b, _) = next(iter(on.batches(8, shuffle=True, generator=g()))), next(iter(off.batches(8, shuffle=True, generator=g())))
    flipped = torch.tensor([not torch.equal(p, q) for p, q in zip(a, b)])
    assert flipped.any() and not flipped.all()
    assert torch.equal(a[flipped], b[flipped].flip(-1))


def test_event_frames(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 300, (10, 4, 2, 32, 32)).astype(np.int64)      # counts above 255: int32
    ds = load_dataset(write(tmp_path, x=x, y=np.arange(10) % 2), T=4)
    assert ds.is_event and ds.input_shape == (4, 2, 32, 32) and ds.train_data.images.dtype == torch.int32
    batch, _ = next(iter(ds.test_data.batches(2)))
    assert torch.equal(batch, torch.from_numpy(x[8:]).float())          # raw counts, not normalised
    with pytest.raises(AutoSNNError, match=r"with --T 8 they must be \[N, 8, 2, H, W\]"):
        load_dataset(write(tmp_path, x=x, y=np.arange(10) % 2), T=8)


def test_the_pipeline_runs_on_an_npz_file(tmp_path, cli):
    x, y = images(40)
    name = write(tmp_path, "mine.npz", x=x, y=y)
    r = cli(["--dataset", name, "--backbone", "AutoSNN_4", "--T", "2", "--batch-size", "16", "--supernet-epochs", "1",
             "--log-every", "0", "--device", "cpu", "--out", tmp_path / "runs", "--stage", "supernet",
             "--watch-every", "0"])
    assert r.code == 0, r.err
    run = next((tmp_path / "runs").iterdir())
    assert run.name.startswith("supernet-mine-")               # the file's stem names the folder, no '/'
    assert "32 training and 8 test samples" in r.err and "normalised with the training split's mean" in r.err


x0, y0 = images(10)
BAD = [
    ({"y": y0}, "lacks the key 'x'"),
    ({"x": x0}, "lacks the key 'y'"),
    ({"x": x0, "y": y0, "X_test": x0}, "unknown key 'X_test'"),
    ({"x": x0, "y": y0, "x_test": x0}, "has 'x_test' but no 'y_test'"),
    ({"x": x0.astype(np.float32), "y": y0}, "must be uint8"),
    ({"x": x0[:, :, :, :2], "y": y0}, "cannot tell the 3 colour channels"),
    ({"x": np.zeros((10, 3, 32, 3), np.uint8), "y": y0}, "cannot tell the 3 colour channels"),
    ({"x": x0[..., 0], "y": y0}, "expected images"),
    ({"x": x0[:0], "y": y0[:0]}, "N >= 1"),
    ({"x": x0, "y": y0.astype(np.float64)}, "labels 'y' must be integers"),
    ({"x": x0, "y": y0[:9]}, r"expected \(10,\), one per sample"),
    ({"x": x0, "y": y0 - 1}, "must be >= 0"),
    ({"x": x0, "y": np.zeros(10, np.int64)}, "K >= 2"),
    ({"x": x0, "y": np.where(y0 == 1, 2, y0)}, "class 1 has no training sample"),
    ({"x": x0, "y": y0, "x_test": x0[:, :16, :16], "y_test": y0}, "must match"),
    ({"x": x0, "y": y0, "hflip": np.array([1, 0])}, "'hflip' must be a scalar 0 or 1"),
    ({"x": x0, "y": y0, "x_test": x0, "y_test": y0 + 5}, "class 3 has no training sample"),
    ({"x": np.zeros((10, 32, 32, 3), np.uint8), "y": y0}, "has the same value"),
    ({"x": x0[:4], "y": y0[:4]}, "too few to hold out a test set"),
    ({"x": np.array([[1, 2]], dtype=object), "y": y0}, "store plain numeric arrays"),
    ({"x": -np.ones((4, 8, 2, 32, 32), np.int16), "y": y0[:4]}, "must be in"),
    ({"x": np.zeros((4, 8, 2, 32, 32), np.float32), "y": y0[:4]}, "must be integer counts"),
]


@pytest.mark.parametrize("arrays, words", BAD, ids=[w for _, w in BAD])
def test_bad_files_are_one_line(tmp_path, arrays, words):
    path = tmp_path / "bad.npz"
    if any(a.dtype == object for a in arrays.values()):
        np.savez(path, **arrays)          # savez pickles object arrays; the reader refuses them
    else:
        np.savez(path, **arrays)
    with pytest.raises(AutoSNNError, match=words) as e:
        load_dataset(f"npz:{path}", T=8)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_missing_and_foreign_files_are_one_line(tmp_path):
    for path, words in ((tmp_path / "none.npz", "no such file"), (tmp_path, "it is a folder")):
        with pytest.raises(AutoSNNError, match=words):
            load_dataset(f"npz:{path}")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(AutoSNNError, match="not a readable .npz"):
        load_dataset(f"npz:{tmp_path / 'text.npz'}")
    assert npz.path_of("cifar10") is None


def test_train_cli_errors_on_a_bad_npz_before_any_folder(tmp_path, cli):
    np.savez(tmp_path / "bad.npz", x=x0, y=y0.astype(np.float32))
    r = cli(["--dataset", f"npz:{tmp_path / 'bad.npz'}", "--out", tmp_path / "runs", "--device", "cpu"])
    assert r.code == 2 and "must be integers" in r.err and len(r.err.splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    r = cli(["--dataset", "npz", "--out", tmp_path / "runs"])
    assert r.code == 2 and "npz:PATH" in r.err
