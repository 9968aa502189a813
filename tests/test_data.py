"""Tests for data.py: the options, the normalisation constants against the paper's, the batch transforms
against hand-computed values, splits, determinism, the synthetic sets, and the input pipeline (copies per
device, no host sync per batch, pinned first batches). The on-disk formats: test_formats.py."""
import dataclasses

import numpy as np
import pytest
import torch
from conftest import PAPER_NORMALISATION, count_host_syncs, cuda_epoch_without_sync

import data
from data import load_dataset
from files import AutoSNNError


# ---------------------------------------------------------------------------------------------- options, constants

def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="cifar10, cifar100, svhn, tinyimagenet, cifar10dvs"):
        load_dataset("mnist")


@pytest.mark.parametrize("kwargs, match", [
    (dict(T=0), "T must be a positive integer, got 0"),
    (dict(T=2.5), "T must be a positive integer, got 2.5"),
    (dict(split_by="space"), "split_by must be 'number' or 'time', got 'space'"),
    (dict(cutout=-1), r"cutout must be >= 0 \(0 = off\), got -1"),
    (dict(n_train=0), "n_train and n_test must be >= 1, got 0, 500"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(AutoSNNError, match=match):
        load_dataset("synthetic", **kwargs)




@pytest.mark.parametrize("name", sorted(PAPER_NORMALISATION))
def test_normalisation_constants_are_the_papers_per_channel(name):
    mean, std = data.NORMALISATION[name]
    for c, channel in enumerate("RGB"):
        assert mean[c] == PAPER_NORMALISATION[name][0][c], f"{name} mean of {channel}"
        assert std[c] == PAPER_NORMALISATION[name][1][c], f"{name} std of {channel}"


# ---------------------------------------------------------------------------------------------- transforms

def test_crop_is_shift_with_zeros_entering():
    x = torch.arange(1, 2 * 1 * 5 * 5 + 1, dtype=torch.float32).view(2, 1, 5, 5)
    out = data.crop_padded(x, torch.tensor([[2, 2], [0, 3]]), pad=2)
    assert torch.equal(out[0], x[0])                                      # centre offset = identity
    # dy=0, dx=3 with pad 2: out[i, j] = x[i - 2, j + 1]; rows 0-1 and the last column are padding
    expected = torch.zeros(5, 5)
    expected[2:, :4] = x[1, 0, :3, 1:]
    assert torch.equal(out[1, 0], expected)


def test_flip_is_exact_mirror_where_masked():
    x = torch.arange(24.0).view(2, 1, 3, 4)
    out = data.flip_where(x, torch.tensor([True, False]))
    assert out[0, 0, 0].tolist() == [3.0, 2.0, 1.0, 0.0] and torch.equal(out[1], x[1])


def test_cutout_zeroes_exactly_the_clipped_square():
    x = torch.ones(2, 3, 10, 10)
    out = data.cutout(x, torch.tensor([[5, 5], [0, 9]]), size=4)
    expected = torch.ones(2, 10, 10)
    expected[0, 3:7, 3:7] = 0                                             # rows/cols [c - 2, c + 2)
    expected[1, 0:2, 7:10] = 0                                            # clipped at the top and right
    assert torch.equal(out, expected[:, None].expand(2, 3, 10, 10))


def test_train_batches_are_padded_crops_and_flips_of_the_originals():
    ds = load_dataset("synthetic", n_train=20, n_test=4)
    train = dataclasses.replace(ds.split("train"), crop=True)            # the static datasets' transform
    x, _ = next(train.batches(20, generator=torch.Generator().manual_seed(3)))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in data.NORMALISATION["synthetic"])
    got = ((x * std + mean) * 255).round()                                # back to raw pixels
    orig = ds.train_data.images.float()
    padded = torch.nn.functional.pad(orig, (4, 4, 4, 4))                  # raw-space zero padding
    found = set()
    for b in range(20):
        matches = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (0, 1)
                   if torch.equal((lambda c: c.flip(-1) if f else c)(padded[b, :, dy:dy + 32, dx:dx + 32]), got[b])]
        assert matches, f"image {b} is not a crop/flip of the original"
        found.add(matches[0])
    assert len(found) > 5                                                 # the offsets really vary


def test_synthetic_images_are_flipped_never_cropped():
    """Their classes are bar heights: a crop would move a bar into another class's band."""
    ds = load_dataset("synthetic", n_train=40, n_test=4)
    x, _ = next(ds.split("train").batches(40, generator=torch.Generator().manual_seed(3)))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in data.NORMALISATION["synthetic"])
    got, orig = ((x * std + mean) * 255).round(), ds.train_data.images.float()
    flipped = [torch.equal(got[b], orig[b].flip(-1)) for b in range(40)]
    assert all(f or torch.equal(got[b], orig[b]) for b, f in enumerate(flipped)) and 5 < sum(flipped) < 35


def test_cutout_through_batches():
    ds = load_dataset("synthetic", n_train=4, n_test=4)                  # no pixel normalises to exactly 0
    plain, _ = next(ds.split("test").batches(4))
    cut, _ = next(dataclasses.replace(ds.test_data, cutout=16).batches(4, generator=torch.Generator().manual_seed(0)))
    for b in range(4):
        zero = (cut[b] != plain[b]).any(0)                                # pixels that changed
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert zero.sum() == len(rows) * len(cols) and len(rows) <= 16 and len(cols) <= 16   # one rectangle
        assert (cut[b][:, zero] == 0).all() and len(rows) >= 8 and len(cols) >= 8


# ---------------------------------------------------------------------------------------------- splits

def test_search_split_is_by_index_and_val_uses_test_transforms():
    ds = load_dataset("synthetic", n_train=50, n_test=10)
    train, val = ds.search_split(0.8)
    assert len(train) == 40 and len(val) == 10
    assert torch.equal(train.images, ds.train_data.images[:40]) and torch.equal(val.images, ds.train_data.images[40:])
    assert train.augment and not val.augment and val.cutout == 0
    v1 = torch.cat([x for x, _ in val.batches(4, generator=torch.Generator().manual_seed(1))])
    v2 = torch.cat([x for x, _ in val.batches(4)])
    whole = torch.cat([x for x, _ in ds.train_data.batches(50)])
    assert torch.equal(v1, v2) and torch.equal(v1, whole[40:])
    assert torch.equal(torch.cat([y for _, y in val.batches(3)]), ds.train_data.labels[40:])
    for bad in (0, 1, 1.5, -0.2):
        with pytest.raises(ValueError, match="fraction"):
            ds.search_split(bad)


@pytest.mark.parametrize("n, fraction, k", [
    (7, 0.8, 5),        # 5.6: floor 5, round 6
    (29, 0.5, 14),      # 14.5
    (19, 0.9, 17),      # 17.1 (the paper's D_val share would round the same way: no help)
    (100, 0.29, 29),    # 0.29 * 100 = 28.999999999999996 in floats: the decimal product is 29
])
def test_search_split_floors_the_training_part(n, fraction, k):
    """D_train = the first floor(fraction * N) samples (train_portion in the original: int(N * 0.8))."""
    ds = load_dataset("synthetic", n_train=n, n_test=10)
    train, val = ds.search_split(fraction)
    assert (len(train), len(val)) == (k, n - k)
    assert torch.equal(val.labels, ds.train_data.labels[k:])


def test_batches_deterministic_per_seed_and_shapes():
    ds = load_dataset("synthetic", n_train=30, n_test=10)
    run = lambda seed: list(ds.split("train").batches(8, shuffle=True, generator=torch.Generator().manual_seed(seed)))
    a, b, c = run(0), run(0), run(1)
    assert [x.shape[0] for x, _ in a] == [8, 8, 8, 6]
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in c]))
    assert sorted(torch.cat([y for _, y in a]).tolist()) == sorted(ds.train_data.labels.tolist())
    with pytest.raises(ValueError, match="torch.Generator"):
        next(ds.split("train").batches(8, shuffle=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_batches_on_cuda():
    ds = load_dataset("synthetic", n_train=40, n_test=10, cutout=16)
    cpu = next(ds.split("train").batches(16, shuffle=True, generator=torch.Generator().manual_seed(5)))
    gpu = next(ds.split("train").batches(16, shuffle=True, generator=torch.Generator().manual_seed(5), device="cuda"))
    assert gpu[0].is_cuda and torch.allclose(cpu[0], gpu[0].cpu(), atol=1e-6) and torch.equal(cpu[1], gpu[1].cpu())


def test_synthetic_deterministic_and_balanced():
    a, b, c = (load_dataset("synthetic", seed=s, n_train=100, n_test=20) for s in (3, 3, 4))
    assert torch.equal(a.train_data.images, b.train_data.images)
    assert not torch.equal(a.train_data.images, c.train_data.images)
    assert not torch.equal(a.train_data.images[:20], a.test_data.images)
    assert a.train_data.images.dtype == torch.uint8 and a.input_shape == (3, 32, 32)
    assert torch.bincount(a.train_data.labels).tolist() == [10] * 10
    assert torch.bincount(a.test_data.labels).tolist() == [2] * 10
    full = load_dataset("synthetic").train_data                           # default size; documented mean/std
    assert torch.bincount(full.labels).tolist() == [200] * 10
    pixels = full.images.float() / 255
    assert abs(pixels.mean().item() - 0.5) < 0.02 and abs(pixels.std().item() - 0.22) < 0.02


def test_synthetic_classes_are_readable_and_mirror_symmetric():
    """The class is in the bar's height band and polarity (images: every image is its own mirror image,
    each row constant up to noise) and the folded direction (events: each class holds both mirror
    images), so the training flip keeps every sample in its own class."""
    x, y = data.synthetic_images(1000, [0, 0])
    rows = x.astype(float).mean((1, 3))                                   # [n, 32]: mean over channels and x
    dev = rows - np.median(rows, 1, keepdims=True)
    band = np.abs(dev).argmax(1)                                          # the bar's row
    assert (np.clip(np.round((band - 3.5) / 6.5), 0, 4) == y % 5).mean() > 0.95
    assert ((dev[np.arange(1000), band] < 0) == (y >= 5)).mean() > 0.99   # darker bars: classes 5-9
    columns = x.astype(float).mean((1, 2))                                # no column structure to flip
    assert np.abs(columns - columns.mean(1, keepdims=True)).max() < 12
    e, ye = data.synthetic_events(500, [0, 0], T=8)
    w = np.clip(e.sum(2) - 0.2, 0, None)                                  # [n, T, H, W], noise damped
    mass = w.sum((2, 3))
    cy = (w * np.arange(32)[:, None]).sum((2, 3)) / mass
    cx = (w * np.arange(32)).sum((2, 3)) / mass
    dy, dx = cy[:, -1] - cy[:, 0], cx[:, -1] - cx[:, 0]
    assert (np.round(np.degrees(np.arctan2(np.abs(dx), dy)) / 45) == ye % 5).mean() > 0.5   # chance: 0.2
    assert 0.3 < (dx[ye % 5 == 2] > 0).mean() < 0.7                      # sideways bars go left and right


def test_synthetic_dvs_events():
    ds = load_dataset("synthetic-dvs", T=6, n_train=40, n_test=10, seed=1)
    assert ds.is_event and ds.input_shape == (6, 2, 32, 32) and ds.num_classes == 10
    x, y = next(ds.split("test").batches(10))
    assert x.shape == (10, 6, 2, 32, 32) and x.dtype == torch.float32 and torch.equal(x, x.round())
    assert x[:, :, 0].sum() > 0 and x[:, :, 1].sum() > 0                   # both polarities fire
    assert torch.bincount(ds.train_data.labels).tolist() == [4] * 10
    again = load_dataset("synthetic-dvs", T=6, n_train=40, n_test=10, seed=1)
    assert torch.equal(again.train_data.images, ds.train_data.images)


# ---------------------------------------------------------------------------------------------- pipeline

def test_the_sync_counter_counts(monkeypatch):
    calls = count_host_syncs(monkeypatch)
    x = torch.ones(3)
    x.sum().item(), x.tolist(), bool(x[0]), torch.tensor([1.0], device="cpu")
    assert calls == ["item", "tolist", "__bool__", "torch.tensor(device=...)"]


@pytest.mark.parametrize("name", ["synthetic", "synthetic-dvs"])
def test_no_host_sync_per_batch(monkeypatch, name):
    """After the first batch (which makes the per-device copies), a batch calls nothing that waits for the
    device: augmentation, cutout and shuffling included."""
    ds = load_dataset(name, n_train=40, n_test=4, T=2, cutout=8)
    calls = count_host_syncs(monkeypatch)
    it = ds.split("train").batches(8, shuffle=True, generator=torch.Generator().manual_seed(0))
    next(it)
    calls.clear()
    assert len(list(it)) == 4 and calls == []


def test_constants_and_samples_are_copied_once_per_device():
    ds = load_dataset("synthetic", n_train=20, n_test=4)
    train = ds.split("train")
    for _ in range(2):
        list(train.batches(8, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert list(train._copies) == ["cpu"] and train._copies is ds.split("train")._copies   # same samples
    on = train._copies["cpu"]
    assert on.images is train.images and on.mean.shape == (1, 3, 1, 1)      # on the CPU: no copy at all
    part, rest = ds.search_split(0.5)
    assert part._copies == {} and part._copies is not train._copies        # a subset has its own samples


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["synthetic", "synthetic-dvs"])
def test_no_host_sync_per_batch_on_cuda(name):
    ds = load_dataset(name, n_train=64, n_test=8, T=2, cutout=8)
    split = ds.split("train")
    cpu, gpu = cuda_epoch_without_sync(split, 16, 0)
    assert split._copies[str(gpu[0][0].device)].images.dtype == torch.uint8   # the samples went over as uint8
    assert len(gpu) == 4
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert torch.equal(yc, yg.cpu()) and torch.allclose(xc, xg.cpu(), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_samples_that_do_not_fit_come_from_pinned_memory(monkeypatch):
    said = []
    ds = load_dataset("synthetic", n_train=40, n_test=4, cutout=8, log=said.append)
    split = ds.split("train")
    upload = torch.Tensor.to

    def to(self, *args, **kwargs):
        if self is split.images:
            raise torch.cuda.OutOfMemoryError("pretend the card is full")
        return upload(self, *args, **kwargs)
    monkeypatch.setattr(torch.Tensor, "to", to)
    gpu = list(split.batches(16, shuffle=True, generator=torch.Generator().manual_seed(2), device="cuda"))
    monkeypatch.undo()
    on = split._copies[str(gpu[0][0].device)]
    assert on.images is None and on.host.is_pinned() and gpu[0][0].is_cuda
    assert said == [f"40 samples do not fit on {gpu[0][0].device}; they stay in host memory"]
    cpu = list(split.batches(16, shuffle=True, generator=torch.Generator().manual_seed(2)))
    assert all(torch.allclose(a, b.cpu(), atol=1e-6) and torch.equal(ya, yb.cpu())
               for (a, ya), (b, yb) in zip(cpu, gpu))


# ---------------------------------------------------------------------------------------------- pinned batches

def test_first_seeded_batches_are_pinned():
    """Values of the first shuffled, augmented (crop as for the static datasets), cut-out batch for a fixed
    seed, recorded from this code (the static values once the synthetic images became bars; the event
    values since the input pipeline moved data to the device). A change to the order of random draws,
    the crop/flip/cutout arithmetic or the normalisation changes them."""
    ds = load_dataset("synthetic", n_train=40, n_test=10, seed=3, cutout=8)
    train = dataclasses.replace(ds.split("train"), crop=True)
    x, y = next(train.batches(8, shuffle=True, generator=torch.Generator().manual_seed(11)))
    assert y.tolist() == [1, 3, 6, 5, 9, 2, 1, 6]
    assert x.double().sum().item() == -8698.57293226663 and int((x == 0).sum()) == 1320
    for idx, v in [((0, 0, 0, 0), -0.008912655524909496), ((1, 2, 5, 7), -0.13368983566761017),
                   ((3, 1, 31, 0), -2.2727272510528564), ((5, 0, 16, 16), 1.4705883264541626),
                   ((7, 2, 10, 30), -2.2727272510528564)]:
        assert x[idx].item() == v
    ev = load_dataset("synthetic-dvs", T=3, n_train=40, n_test=10, seed=2, cutout=6)
    x, y = next(ev.split("train").batches(8, shuffle=True, generator=torch.Generator().manual_seed(5)))
    assert y.tolist() == [1, 6, 7, 5, 0, 0, 6, 3] and x.shape == (8, 3, 2, 32, 32)
    assert x.sum((1, 2, 3, 4)).tolist() == [657.0, 748.0, 967.0, 892.0, 773.0, 668.0, 857.0, 631.0]
    assert x[4, 0, 1, 16, 16] == 2.0
    column_weighted = (x * torch.arange(32.0)).sum((1, 2, 3, 4))         # sees the flips
    assert column_weighted.tolist() == [10197.0, 12639.0, 13941.0, 16149.0, 13158.0, 9960.0, 12227.0, 9108.0]
