"""Tests for formats/readers.py, through data.load_dataset: the CIFAR-10/100, SVHN and Tiny-ImageNet readers on
tiny files written here in the exact on-disk format, labels that are not integers, download with md5
checks, safe archive extraction and every error path. (The event datasets' folders: test_events.py.)"""
import hashlib
import io
import pickle
import re
import shutil
import sys
import tarfile

import numpy as np
import pytest
import torch
from conftest import PAPER_NORMALISATION

from data import load_dataset
from files import AutoSNNError


CIFAR10_MEAN, CIFAR10_STD = (torch.tensor(v).view(1, 3, 1, 1) for v in PAPER_NORMALISATION["cifar10"])


def raw_pixels(x):
    """Undo CIFAR-10 normalisation: [B, 3, H, W] -> pixel values 0..255 (float)."""
    return (x * CIFAR10_STD + CIFAR10_MEAN) * 255


# ---------------------------------------------------------------------------------------------- writers

def write_pickle(path, obj):
    """Protocol 2 with numpy 1.x module names, like the published CIFAR pickles."""
    path.write_bytes(pickle.dumps(obj, protocol=2).replace(b"numpy._core.", b"numpy.core."))


def write_cifar10(root, per_batch=4, seed=0):
    """cifar-10-batches-py/ with 5 training batches and a test batch; returns (train_x, train_y, test_x, test_y)
    with images as uint8 [N, 3, 32, 32]."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch).tolist()
        write_pickle(folder / name, {b"batch_label": name.encode(), b"labels": y, b"data": x,
                                     b"filenames": [b"f.png"] * per_batch})
        xs.append(x.reshape(-1, 3, 32, 32))
        ys.append(np.array(y))
    return np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5]


def tar_gz(src_root, folder, archive):
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src_root / folder, arcname=folder)
    return hashlib.md5(archive.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------- CIFAR

def test_cifar10_pixels_labels_and_normalisation(tmp_path):
    xtr, ytr, xte, yte = write_cifar10(tmp_path)
    ds = load_dataset("cifar10", root=tmp_path)
    assert (ds.name, ds.num_classes, ds.input_shape, ds.is_event) == ("cifar10", 10, (3, 32, 32), False)
    assert len(ds.split("train")) == 20 and len(ds.split("test")) == 4
    x, y = next(ds.split("test").batches(100))
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (4, 3, 32, 32)
    assert torch.equal(y, torch.from_numpy(yte))
    assert torch.allclose(raw_pixels(x), torch.from_numpy(xte).float(), atol=1e-3)
    # pixel 0 of the pickle row is R at (0, 0); pixel 1024 is G at (0, 0)
    assert ds.train_data.images[0, 1, 0, 0] == np.frombuffer(xtr.tobytes(), np.uint8)[1024]
    assert torch.equal(ds.train_data.labels, torch.from_numpy(ytr))


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    x = np.arange(3 * 3072, dtype=np.uint8).reshape(3, 3072)
    for name in ("train", "test"):
        write_pickle(folder / name, {b"data": x, b"fine_labels": [99, 0, 42], b"coarse_labels": [1, 2, 3]})
    ds = load_dataset("cifar100", root=tmp_path)
    assert ds.num_classes == 100 and ds.train_data.labels.tolist() == [99, 0, 42]
    assert torch.equal(ds.test_data.images, torch.from_numpy(x.reshape(3, 3, 32, 32)))


@pytest.mark.parametrize("obj, match", [
    ({b"data": np.zeros((2, 3072), np.uint8)}, "lacks the keys"),
    ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, "expected uint8 data"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "expected uint8 data"),
])
def test_cifar_bad_pickle(tmp_path, obj, match):
    write_cifar10(tmp_path)
    write_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_3", obj)
    with pytest.raises(ValueError, match=match):
        load_dataset("cifar10", root=tmp_path)


def test_cifar_truncated_or_foreign_pickle(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match="not a readable CIFAR pickle"):
        load_dataset("cifar10", root=tmp_path)
    write_pickle(path, {b"data": io.BytesIO(b"code could hide here"), b"labels": []})   # a non-array object
    with pytest.raises(ValueError, match="unexpected object"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar10_label_out_of_range(tmp_path):
    write_cifar10(tmp_path)
    write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch",
                 {b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]})
    with pytest.raises(ValueError, match=r"in \[0, 10\)"):
        load_dataset("cifar10", root=tmp_path)


@pytest.mark.parametrize("labels, match", [
    (["cat", "dog"], "labels must be integers, got str values such as 'cat'"),
    ([True, False], "labels must be integers, got bool values such as True"),
    ([b"cat", b"dog"], "labels must be integers, got bytes"),
    ([3.7, 1.0], "label 3.7 is not a whole number"),                      # refused, not truncated to 3
    ([1.0, float("nan")], "label nan is not a whole number"),
    ([[1, 2], [3]], "the labels are not a flat list of numbers"),
])
def test_cifar_labels_that_are_not_integers_name_the_file(tmp_path, labels, match):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    write_pickle(path, {b"data": np.zeros((2, 3072), np.uint8), b"labels": labels})
    with pytest.raises(AutoSNNError, match=f"^{re.escape(str(path))}: {match}") as e:
        load_dataset("cifar10", root=tmp_path)
    assert "\n" not in str(e.value)


def test_whole_float_labels_are_kept(tmp_path):
    write_cifar10(tmp_path)
    write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch",
                 {b"data": np.zeros((3, 3072), np.uint8), b"labels": [3.0, 0.0, 9.0]})
    assert load_dataset("cifar10", root=tmp_path).test_data.labels.tolist() == [3, 0, 9]


# ---------------------------------------------------------------------------------------------- SVHN, Tiny-ImageNet

def test_svhn_mat_layout_and_label_10_is_zero(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(0)
    (tmp_path / "svhn").mkdir()
    X = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)          # H, W, C, N
    y = np.array([[10], [1], [9], [10], [5]], np.uint8)
    for name in ("train_32x32.mat", "test_32x32.mat"):
        scipy_io.savemat(tmp_path / "svhn" / name, {"X": X, "y": y})
    md5s = {n: ("http://unused", hashlib.md5((tmp_path / "svhn" / n).read_bytes()).hexdigest())
            for n in ("train_32x32.mat", "test_32x32.mat")}
    ds = load_dataset("svhn", root=tmp_path, sources=md5s)
    assert ds.train_data.labels.tolist() == [0, 1, 9, 0, 5]
    assert ds.train_data.images[3, 2, 7, 11] == X[7, 11, 2, 3]          # [N, C, H, W] <- [H, W, C, N]
    x, _ = next(ds.split("test").batches(5))                              # each channel with its own mean/std
    for c, (mean, std) in enumerate(zip(*PAPER_NORMALISATION["svhn"])):
        assert torch.allclose(x[:, c], (torch.from_numpy(X[:, :, c]).permute(2, 0, 1) / 255 - mean) / std, atol=1e-5)
    # the real files are checked against their published md5, so these stand-ins are refused
    with pytest.raises(ValueError, match="wrong md5"):
        load_dataset("svhn", root=tmp_path)


def test_svhn_float_label_is_refused_not_truncated(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    (tmp_path / "svhn").mkdir()
    X = np.zeros((32, 32, 3, 2), np.uint8)
    for name, y in (("train_32x32.mat", [[10.0], [3.0]]), ("test_32x32.mat", [[3.7], [1.0]])):
        scipy_io.savemat(tmp_path / "svhn" / name, {"X": X, "y": np.array(y)})
    md5s = {n: ("http://unused", hashlib.md5((tmp_path / "svhn" / n).read_bytes()).hexdigest())
            for n in ("train_32x32.mat", "test_32x32.mat")}
    with pytest.raises(AutoSNNError, match=r"test_32x32.mat: label 3.7 is not a whole number"):
        load_dataset("svhn", root=tmp_path, sources=md5s)


def test_svhn_missing_names_the_files(tmp_path):
    with pytest.raises(AutoSNNError, match="train_32x32.mat,test_32x32.mat"):
        load_dataset("svhn", root=tmp_path)


def write_tinyimagenet(root, image_module):
    """2 classes x 2 training images and 3 val images, PNG-encoded (lossless) under .JPEG names."""
    base = root / "tiny-imagenet-200"
    rng = np.random.default_rng(0)
    (base).mkdir(parents=True)
    (base / "wnids.txt").write_text("n0200\nn0100\n")                    # not sorted on purpose
    images = {}
    for w in ("n0100", "n0200"):
        (base / "train" / w / "images").mkdir(parents=True)
        for i in range(2):
            images[(w, i)] = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            image_module.fromarray(images[(w, i)]).save(base / "train" / w / "images" / f"{w}_{i}.JPEG", format="PNG")
    (base / "val" / "images").mkdir(parents=True)
    lines = []
    for i, w in enumerate(("n0200", "n0100", "n0200")):
        images[("val", i)] = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        image_module.fromarray(images[("val", i)]).save(base / "val" / "images" / f"val_{i}.JPEG", format="PNG")
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return base, images


def test_tinyimagenet_folders_and_decode_cache(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    base, images = write_tinyimagenet(tmp_path, Image)
    ds = load_dataset("tinyimagenet", root=tmp_path)
    assert ds.input_shape == (3, 64, 64) and ds.num_classes == 200
    assert ds.train_data.labels.tolist() == [0, 0, 1, 1]                 # sorted wnids: n0100 -> 0, n0200 -> 1
    assert ds.test_data.labels.tolist() == [1, 0, 1]
    assert np.array_equal(ds.train_data.images[2].numpy().transpose(1, 2, 0), images[("n0200", 0)])
    assert np.array_equal(ds.test_data.images[1].numpy().transpose(1, 2, 0), images[("val", 1)])
    assert (base / "decoded_uint8.npz").exists()
    shutil.rmtree(base / "train")                                        # the second load reads the cache only
    again = load_dataset("tinyimagenet", root=tmp_path)
    assert torch.equal(again.train_data.images, ds.train_data.images)


def test_tinyimagenet_bad_folders(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    base, _ = write_tinyimagenet(tmp_path, Image)
    for f in (base / "train" / "n0100" / "images").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match="missing or empty"):
        load_dataset("tinyimagenet", root=tmp_path)


def test_tinyimagenet_missing_and_without_pillow(tmp_path, monkeypatch):
    with pytest.raises(AutoSNNError, match="tiny-imagenet-200.zip"):
        load_dataset("tinyimagenet", root=tmp_path)
    (tmp_path / "tiny-imagenet-200").mkdir()
    (tmp_path / "tiny-imagenet-200" / "wnids.txt").write_text("n01\n")
    monkeypatch.setitem(sys.modules, "PIL", None)                        # import PIL now fails
    with pytest.raises(AutoSNNError, match="pip install pillow"):
        load_dataset("tinyimagenet", root=tmp_path)


# ---------------------------------------------------------------------------------------------- download

def make_archive(tmp_path):
    src = tmp_path / "src"
    expected = write_cifar10(src)
    archive = tmp_path / "cifar-10-python.tar.gz"
    md5 = tar_gz(src, "cifar-10-batches-py", archive)
    return {"cifar-10-python.tar.gz": (archive.as_uri(), md5)}, expected


def test_download_good_archive_replaces_stale_part(tmp_path, capsys):
    sources, (xtr, _, _, _) = make_archive(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    (root / "cifar-10-python.tar.gz.part").write_bytes(b"half of an old download")
    said = []
    ds = load_dataset("cifar10", root=root, download=True, sources=sources, log=said.append)
    assert said[0].startswith(f"downloading {sources['cifar-10-python.tar.gz'][0]}")
    assert said[-1].startswith(f"{root / 'cifar-10-python.tar.gz'}: ") and said[-1].endswith("md5 verified")
    assert capsys.readouterr() == ("", "")                                # the library itself prints nothing
    assert torch.equal(ds.train_data.images, torch.from_numpy(xtr))
    assert not (root / "cifar-10-python.tar.gz.part").exists()
    md5 = hashlib.md5((root / "cifar-10-python.tar.gz").read_bytes()).hexdigest()
    assert md5 == sources["cifar-10-python.tar.gz"][1]


def test_download_checksum_mismatch_keeps_nothing(tmp_path):
    sources, _ = make_archive(tmp_path)
    url, _ = sources["cifar-10-python.tar.gz"]
    root = tmp_path / "root"
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_dataset("cifar10", root=root, download=True, sources={"cifar-10-python.tar.gz": (url, "0" * 32)})
    assert list(root.iterdir()) == []


def test_corrupt_existing_archive_is_fetched_again_or_refused(tmp_path):
    sources, (xtr, _, _, _) = make_archive(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="wrong md5"):
        load_dataset("cifar10", root=root, sources=sources)
    said = []
    ds = load_dataset("cifar10", root=root, download=True, sources=sources, log=said.append)
    assert said[0] == f"{root / 'cifar-10-python.tar.gz'} has the wrong md5; downloading it again"
    assert torch.equal(ds.train_data.images, torch.from_numpy(xtr))


def test_missing_dataset_one_clear_error_and_part_unused(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz.part").write_bytes(b"x")
    with pytest.raises(AutoSNNError, match=r"cifar-10-batches-py/\{data_batch_1,.*test_batch\}.*download=True"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(AutoSNNError, match="could not download"):
        load_dataset("cifar10", root=tmp_path, download=True,
                     sources={"cifar-10-python.tar.gz": ((tmp_path / "nowhere.tar.gz").as_uri(), "0" * 32)})


@pytest.mark.parametrize("name", ["cifar10", "svhn", "cifar10dvs"])
def test_data_root_that_is_a_file(tmp_path, name):
    root = tmp_path / "data"
    root.write_text("not a folder")
    with pytest.raises(AutoSNNError, match=f"data root {root} is a file"):
        load_dataset(name, root=root, download=True)


def test_download_that_cannot_be_written_names_the_file(tmp_path):
    sources, _ = make_archive(tmp_path)
    root = tmp_path / "root"
    (root / "cifar-10-python.tar.gz.part").mkdir(parents=True)            # a folder where the download goes
    with pytest.raises(AutoSNNError, match=r"cannot write .*cifar-10-python.tar.gz.part"):
        load_dataset("cifar10", root=root, download=True, sources=sources)
    (root / "cifar-10-python.tar.gz").mkdir()                              # a folder where the archive goes
    with pytest.raises(AutoSNNError, match=r"cannot read .*cifar-10-python.tar.gz"):
        load_dataset("cifar10", root=root, download=True, sources=sources)


def test_archive_with_unsafe_member_is_refused(tmp_path):
    evil = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    md5 = hashlib.md5(evil.read_bytes()).hexdigest()
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(evil, root / evil.name)
    with pytest.raises(ValueError, match="unsafe member"):
        load_dataset("cifar10", root=root, sources={evil.name: ("http://unused", md5)})
    assert not (tmp_path / "escape.txt").exists()
