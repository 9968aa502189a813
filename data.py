"""Datasets for AutoSNN: static images, neuromorphic recordings and synthetic data, as device batches.

Owns: the datasets CIFAR-10/100, SVHN, Tiny-ImageNet-200, CIFAR10-DVS and
DVS128-Gesture as labelled splits, a dataset of your own as one .npz file (`npz:PATH`, formats/npz.py:
normalised with its training split's mean and std), the search split (first 80% of the training set by index = D_train,
last 20% = D_val), batch-wise augmentation on the device, and two synthetic datasets that need no files.
Where the files lie, download, checksums and the readers of each on-disk format are formats/readers.py's (its
docstring lists the expected layout under `root`); event-camera files, events -> frames and the frame
cache are formats/events.py's. No model code.

    from data import load_dataset
    ds = load_dataset("cifar10", root="./data", download=True)
    train, val = ds.search_split(0.8)                 # D_train (augmented), D_val (test transforms)
    g = torch.Generator().manual_seed(0)
    for x, y in train.batches(96, shuffle=True, generator=g, device="cuda"):
        ...   # x: float32 [B, 3, 32, 32] normalised (event data: [B, T, 2, H, W] raw counts); y: int64 [B]

Messages (a download's progress, a stale cache, samples that do not fit on the device) go to the
`log(str)` callback given to load_dataset, kept by its splits; without one the library is silent.

Event data becomes T frames [T, 2, H=y, W=x] of per-pixel event counts (channel 1 = ON), upright, cached
once per sample under `<root>/<cifar10dvs|dvs128gesture>/` (formats/events.py: the orientation, the split rules,
the cache key). Splits: CIFAR10-DVS per class by file index, first 90% train (900 / 100); DVS128-Gesture
the official trials lists, one sample per labelled segment, label = class - 1.

Transforms. Static: x/255, train-time random crop with 4-pixel zero padding *in raw pixel space* (the
padded pixels are black and then normalised to -mean/std, as in the original pad -> ToTensor -> Normalize),
horizontal flip p=0.5, normalise with the dataset mean/std, then optional cutout (one square per image,
zeroed after normalisation); the synthetic images get flips only (their classes are bar heights, which a
crop would move). Event data: raw counts, train-time horizontal flip only (the original applied no DVS
augmentation), optional cutout on all frames. Test splits and D_val: none.
Cutout (default off) is set per dataset, load_dataset(..., cutout=16), or per split, ds.split("train", cutout=16).

Input pipeline. In-memory samples (static images, synthetic events) are copied to the device once, as
uint8, on a split's first batches(device=...) call, and indexed there; when the device is out of memory
they stay in pinned host memory and each batch is copied without blocking. Event frames on disk are
read and pinned by a background thread, PREFETCH batches ahead. All random numbers are drawn on the
CPU from the caller's generator in a fixed order (permutation; per batch: crop, flip, cutout) and reach
the device in one non-blocking copy per batch, so a seed gives the same batches on any device and the
loop never waits for the device (no .item(), .cpu() or blocking copy per batch).
"""
from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType, SimpleNamespace

import numpy as np
import torch

from files import AutoSNNError
from formats import events, npz, readers


DATASETS = ("cifar10", "cifar100", "svhn", "tinyimagenet", "cifar10dvs", "dvs128gesture", "synthetic",
            "synthetic-dvs")

# Per-channel (R, G, B) (mean, std) of pixel/255, the paper's and the original's values (its transforms);
# "synthetic" rounds the measured values (synthetic_images).
NORMALISATION = MappingProxyType({
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "tinyimagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "synthetic": ((0.5, 0.5, 0.5), (0.22, 0.22, 0.22)),
})
CROP_PAD = 4       # zero padding of the random crop (the paper's and the original's 4 pixels)
PREFETCH = 2       # event batches the reading thread keeps ready


# ----------------------------------------------------------------------------------------------------------
# Batch transforms: whole-batch tensor ops, random values passed in explicitly (drawn on CPU by the caller)

def crop_padded(x: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """Random crop with zero padding. x: [B, C, H, W], offsets: int64 [B, 2] = (dy, dx) in [0, 2*pad].

    out[b, c, i, j] = x[b, c, i + dy - pad, j + dx - pad], or 0 where that lies outside x. -> [B, C, H, W]
    """
    B, C, H, W = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)   # [B, H+2p, W+2p, C]
    rows = offsets[:, 0, None] + torch.arange(H, device=x.device)                    # [B, H]
    cols = offsets[:, 1, None] + torch.arange(W, device=x.device)                    # [B, W]
    b = torch.arange(B, device=x.device)[:, None, None]
    return padded[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def flip_where(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror the last (width) axis of the samples where mask is True. x: [B, ..., W], mask: bool [B]."""
    return torch.where(mask.view(-1, *[1] * (x.dim() - 1)), x.flip(-1), x)


def cutout(x: torch.Tensor, centres: torch.Tensor, size: int) -> torch.Tensor:
    """Zero one size x size square per sample, rows [cy - size//2, cy - size//2 + size) and likewise for
    columns, clipped at the borders, in every channel/frame. x: [B, ..., H, W], centres: int64 [B, 2] = (cy, cx)."""
    H, W = x.shape[-2:]
    lo = centres - size // 2                                                          # [B, 2]
    ys, xs = torch.arange(H, device=x.device), torch.arange(W, device=x.device)
    in_y = (ys >= lo[:, 0:1]) & (ys < lo[:, 0:1] + size)                              # [B, H]
    in_x = (xs >= lo[:, 1:2]) & (xs < lo[:, 1:2] + size)                              # [B, W]
    mask = (in_y[:, :, None] & in_x[:, None, :]).view(x.shape[0], *[1] * (x.dim() - 3), H, W)
    return x.masked_fill(mask, 0.0)


# ----------------------------------------------------------------------------------------------------------
# Getting samples onto the device without waiting for it

def _device(device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:      # one cache entry per card, however it was named
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _to(x: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """A host tensor on `dev`. To CUDA it goes through pinned memory without blocking the host (the
    copy is ordered on the current stream before the kernels that read it)."""
    if dev.type == "cpu":
        return x
    if dev.type == "cuda":
        return (x if x.is_pinned() else x.pin_memory()).to(dev, non_blocking=True)
    return x.to(dev)


def _prefetched(load, chunks, pin_on: torch.device | None, depth: int = PREFETCH):
    """Yield load(c) (a CPU tensor, pinned when pin_on is a CUDA device) for each c in `chunks`, computed
    by a background thread at most `depth` items ahead. An exception in the thread is raised here;
    closing this generator (the consumer stopped early or failed) stops the thread and waits for it."""
    q = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def work():
        try:
            if pin_on is not None:
                torch.cuda.set_device(pin_on)         # pinned blocks belong to the consumer's card
            for c in chunks:
                x = load(c)
                if not put((x.pin_memory() if pin_on is not None else x, None)):
                    return
            put((None, None))
        except BaseException as e:                    # handed to the consumer, raised there
            put((None, e))

    thread = threading.Thread(target=work, name="autosnn-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            x, error = q.get()
            if error is not None:
                raise error
            if x is None:
                return
            yield x
    finally:
        stop.set()
        thread.join()


# ----------------------------------------------------------------------------------------------------------
# Splits and batches

@dataclass(frozen=True, eq=False)   # holds tensors: compare fields explicitly
class Split:
    """A labelled set of samples and the transforms its batches get.

    labels: int64 [N]. Samples come from `images` (in memory; static uint8 [N, C, H, W], event counts
    [N, T, 2, H, W]) or `files` (one cached .npz per event sample, read per batch so memory stays bounded).
    augment: random crop (static data with `crop`) + horizontal flip (unless hflip is False). cutout: square side,
    0 = off.
    mean/std: per-channel normalisation of static data (None for event data).
    log: where a notice goes (samples that do not fit on the device), None: nowhere.
    sample_shape: the [T, 2, H, W] every sample read from `files` must have (a damaged cache: one line).
    _copies: per-device copies of the samples, labels and normalisation constants, made on first use;
    shared with the splits dataclasses.replace makes from this one (same samples), fresh for a subset.
    """
    labels: torch.Tensor
    images: torch.Tensor | None = None
    files: tuple[str, ...] | None = None
    is_event: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: bool = False
    crop: bool = True
    cutout: int = 0
    hflip: bool = True
    log: Callable[[str], None] | None = field(default=None, repr=False)
    sample_shape: tuple | None = None
    _copies: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> Split:
        """The samples at `indices` (a range or int list), same transforms."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return replace(self, labels=self.labels[idx], _copies={},
                       images=None if self.images is None else self.images[idx],
                       files=None if self.files is None else tuple(self.files[i] for i in idx.tolist()))

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                device="cpu"):
        """Yield (x, y) on `device`: x float32 [B, C, H, W] normalised (static) or [B, T, 2, H, W] raw
        counts (event); y int64 [B]; the last batch may be smaller. `generator` (a CPU torch.Generator)
        drives the order and every augmentation draw, so a seed gives the same batches on any device;
        it may be None only when nothing is random (shuffle=False, no augmentation, no cutout)."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise AutoSNNError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if generator is None and (shuffle or self.augment or self.cutout):
            raise AutoSNNError("shuffling and augmentation need a torch.Generator: pass "
                               "generator=torch.Generator().manual_seed(seed)")
        if generator is not None and generator.device.type != "cpu":
            raise AutoSNNError("pass a CPU torch.Generator; random numbers are drawn on the CPU and then moved")
        return self._batches(batch_size, shuffle, generator, _device(device))

    def _batches(self, batch_size: int, shuffle: bool, g: torch.Generator | None, dev: torch.device):
        n = len(self)
        order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)   # first draw, at the first batch
        on = self._on(dev)
        order_on = _to(order, dev)
        starts = range(0, n, batch_size)
        host = None
        if self.files is not None:
            rows = order.numpy()
            host = _prefetched(self._read_files, (rows[s:s + batch_size] for s in starts),
                               dev if dev.type == "cuda" else None)
        elif on.images is None:                       # device out of memory: gather into pinned buffers
            host = (self._gather_pinned(on.host, order[s:s + batch_size]) for s in starts)
        try:
            for s in starts:
                idx = order_on[s:s + batch_size]
                x = on.images.index_select(0, idx) if host is None else _to(next(host), dev)
                draws = self._draws(len(idx), x.shape[-2:], g)
                yield self._transform(x, draws, on, dev), on.labels.index_select(0, idx)
        finally:
            if host is not None:
                host.close()

    def _on(self, dev: torch.device) -> SimpleNamespace:
        """This split's samples (None if read from files or kept on the host), labels and normalisation
        constants on `dev`, copied there once."""
        key = str(dev)
        if key not in self._copies:
            images, host = self.images, None
            if images is not None and dev.type != "cpu":
                try:
                    images = images.to(dev)           # once, as uint8 (CIFAR's training set: 150 MB)
                except torch.cuda.OutOfMemoryError:
                    images, host = None, (images.pin_memory() if dev.type == "cuda" else images)
                    if self.log is not None:
                        self.log(f"{len(self)} samples do not fit on {dev}; they stay in host memory")
            mean, std = ((None, None) if self.mean is None else
                         (torch.tensor(v, device=dev).view(1, -1, 1, 1) for v in (self.mean, self.std)))
            self._copies[key] = SimpleNamespace(images=images, host=host, labels=self.labels.to(dev),
                                                mean=mean, std=std)
        return self._copies[key]

    def _read_files(self, rows: np.ndarray) -> torch.Tensor:
        """Cached frames of the samples at `rows` -> uint8 (int32 where a count exceeds 255) [B, T, 2, H, W]."""
        return torch.from_numpy(np.stack([events.read_frames(self.files[i], self.sample_shape) for i in rows]))

    @staticmethod
    def _gather_pinned(host: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        out = torch.empty((len(idx), *host.shape[1:]), dtype=host.dtype, pin_memory=True)
        return torch.index_select(host, 0, idx, out=out)

    def _draws(self, B: int, hw, g: torch.Generator | None) -> torch.Tensor | None:
        """This batch's random numbers -> int64 [B, 5] = (crop dy, crop dx, flip, cutout cy, cutout cx), or
        None. Drawn in this order (crop, flip, cutout; each only when used): part of reproducibility."""
        if not (self.augment or self.cutout):
            return None
        d = torch.zeros(B, 5, dtype=torch.long)
        if self.augment:
            if self.crop and not self.is_event:
                d[:, 0:2] = torch.randint(0, 2 * CROP_PAD + 1, (B, 2), generator=g)
            d[:, 2] = torch.rand(B, generator=g) < 0.5
        if self.cutout:
            for col, size in zip((3, 4), hw):
                d[:, col] = torch.randint(0, size, (B,), generator=g)
        return d

    def _transform(self, x: torch.Tensor, draws, on: SimpleNamespace, dev: torch.device) -> torch.Tensor:
        x = x.float() if self.is_event else x.float().div_(255.0)
        d = None if draws is None else _to(draws, dev)
        if self.augment:
            if self.crop and not self.is_event:
                x = crop_padded(x, d[:, 0:2], CROP_PAD)
            if self.hflip:              # drawn either way: one order of draws for every dataset
                x = flip_where(x, d[:, 2].bool())
        if not self.is_event:
            x = (x - on.mean) / on.std
        if self.cutout:
            x = cutout(x, d[:, 3:5], self.cutout)
        return x


@dataclass(frozen=True, eq=False)   # holds tensors: compare fields explicitly
class Dataset:
    """A dataset: name, num_classes, input_shape ((C, H, W) static, (T, 2, H, W) event), is_event, and the
    un-augmented training and test sets. `cutout` is the default cutout of split("train")."""
    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    is_event: bool
    train_data: Split
    test_data: Split
    cutout: int = 0

    def split(self, which: str, cutout: int | None = None) -> Split:
        """"train": the full training set with training augmentation (+ cutout); "test": no transforms."""
        if which == "train":
            return replace(self.train_data, augment=True, cutout=self.cutout if cutout is None else int(cutout))
        if which == "test":
            return self.test_data
        raise AutoSNNError(f"unknown split {which!r}; use 'train' or 'test'")

    def search_split(self, fraction: float = 0.8, cutout: int | None = None) -> tuple[Split, Split]:
        """(D_train, D_val): the first floor(fraction * N) training samples by index, with training
        augmentation, and the rest with test-time transforms (the original augmented D_val)."""
        if not 0 < fraction < 1:
            raise AutoSNNError(f"fraction must be in (0, 1), got {fraction}")
        n = len(self.train_data)
        k = int(n * fraction + 1e-9)
        if k == 0 or k == n:
            raise AutoSNNError(f"fraction {fraction} of {n} training samples leaves an empty part")
        return self.split("train", cutout).subset(range(k)), self.train_data.subset(range(k, n))


def load_dataset(name: str, root="./data", download: bool = False, T: int = 8, split_by: str = "number",
                 n_train: int | None = None, n_test: int | None = None, seed: int = 0, cutout: int = 0,
                 sources: dict | None = None, log: Callable[[str], None] | None = None) -> Dataset:
    """Load `name` (one of DATASETS, or npz:PATH: formats/npz.py). T and split_by apply to event data; n_train/n_test/seed to the
    synthetic sets (default 2000/500); cutout is the default for split("train"); sources overrides
    readers.SOURCES entries ({file name: (url, md5)}) for download and checksum checks. log(str) receives
    the notices of loading and of the splits' batches (None: silent)."""
    if name not in DATASETS and npz.path_of(name) is None:
        raise AutoSNNError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}, npz:PATH")
    if not isinstance(T, int) or T < 1:
        raise AutoSNNError(f"T must be a positive integer, got {T!r}")
    if split_by not in ("number", "time"):
        raise AutoSNNError(f"split_by must be 'number' or 'time', got {split_by!r}")
    if cutout < 0:
        raise AutoSNNError(f"cutout must be >= 0 (0 = off), got {cutout}")
    if name in ("synthetic", "synthetic-dvs"):
        n_train, n_test = (2000 if n_train is None else n_train), (500 if n_test is None else n_test)
        if n_train < 1 or n_test < 1:
            raise AutoSNNError(f"n_train and n_test must be >= 1, got {n_train}, {n_test}")
        make = synthetic_images if name == "synthetic" else (lambda n, s: synthetic_events(n, s, T))
        (xtr, ytr), (xte, yte) = make(n_train, [seed, 0]), make(n_test, [seed, 1])
        return _in_memory(name, 10, xtr, ytr, xte, yte, cutout, log, is_event=name == "synthetic-dvs",
                          crop=False)       # the synthetic classes are positions: flips only
    if npz.path_of(name) is not None:
        return _npz_dataset(name, T, cutout, log)
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise AutoSNNError(f"the data root {root} is a file, not a folder; pass a folder (train.py: --data-root)")
    if name in ("cifar10dvs", "dvs128gesture"):
        return _event_dataset(name, root, T, split_by, cutout, log)
    (xtr, ytr), (xte, yte) = readers.load_static(name, root, download, {**readers.SOURCES, **(sources or {})}, log)
    return _in_memory(name, {"cifar100": 100, "tinyimagenet": 200}.get(name, 10), xtr, ytr, xte, yte, cutout, log)


def _in_memory(name, num_classes, xtr, ytr, xte, yte, cutout, log, is_event=False, crop=True, norm=None,
               hflip=True) -> Dataset:
    for labels, what in ((ytr, "training"), (yte, "test")):
        if len(labels) == 0 or labels.min() < 0 or labels.max() >= num_classes:
            raise AutoSNNError(f"{name}: {what} labels must be non-empty and in [0, {num_classes})")
    mean, std = (None, None) if is_event else (norm or NORMALISATION[name])
    make = lambda x, y: Split(torch.from_numpy(np.asarray(y, np.int64)), images=torch.from_numpy(x),
                              is_event=is_event, mean=mean, std=std, crop=crop, hflip=hflip, log=log)
    return Dataset(name, num_classes, tuple(xtr.shape[1:]), is_event, make(xtr, ytr), make(xte, yte), cutout)


def _npz_dataset(name: str, T: int, cutout: int, log) -> Dataset:
    """A dataset of your own (formats/npz.py): normalised with the mean and std of its training split."""
    d = npz.read_npz(npz.path_of(name), T)
    (xtr, ytr), (xte, yte) = d["train"], d["test"]
    norm = None if d["is_event"] else npz.normalisation(xtr, name)
    if log is not None:
        log(f"{name}: {len(ytr)} training and {len(yte)} test samples ({d['split']}), {d['num_classes']} classes, "
            + ("event frames" if d["is_event"] else f"normalised with the training split's mean "
               f"{', '.join(f'{m:.4f}' for m in norm[0])} and std {', '.join(f'{s:.4f}' for s in norm[1])}")
            + ("" if d["hflip"] else "; no training flip (hflip = 0)"))
    return _in_memory(name, d["num_classes"], xtr, ytr, xte, yte, cutout, log, d["is_event"], norm=norm,
                      hflip=d["hflip"])


# ----------------------------------------------------------------------------------------------------------
# Event-camera datasets: frames cached once per sample (which files: formats/readers.py; reading, caching: formats/events.py)

def _event_dataset(name: str, root: Path, T: int, split_by: str, cutout: int, log) -> Dataset:
    """Frames cached once per sample (formats/events.py); a complete cache is used without the raw files."""
    base = root / name
    folder, key = events.cache_folder(base, T, split_by), events.cache_key(name, T, split_by)
    num_classes = 10 if name == "cifar10dvs" else 11
    cached = {s: events.read_index(folder, s, key, num_classes) for s in ("train", "test")}
    if None in cached.values():
        old = base / f"frames_T{T}_{split_by}"
        if old.is_dir() and log is not None:
            log(f"{old} holds frames of an earlier version (another orientation or time split); it is not "
                f"used and can be deleted")
        listing = readers.cifar10dvs_recordings(root) if name == "cifar10dvs" else readers.gesture_recordings(root)
        for split, items in listing.items():
            if cached[split] is None:
                samples = (((events.cifar10dvs_events(path), label) for path, label in items) if name == "cifar10dvs"
                           else itertools.chain.from_iterable(events.gesture_segments(a, c) for a, c in items))
                cached[split] = events.write_split(folder, split, samples, T, split_by, key, name, log)
    shape = (T, 2, *events.SENSOR)
    train, test = (Split(torch.tensor(cached[s][1], dtype=torch.long), files=tuple(cached[s][0]), is_event=True,
                         log=log, sample_shape=shape) for s in ("train", "test"))
    return Dataset(name, num_classes, shape, True, train, test, cutout)


# ----------------------------------------------------------------------------------------------------------
# Synthetic data: no files, deterministic from the seed, labels i % 10 (exactly balanced in every block of 10)

def synthetic_images(n: int, seed, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal bars -> (uint8 [n, 3, size, size], int64 [n]). Class k: one full-width bar, 2-3 rows
    thick, at height band k % 5 (rows 3, 9.5, 16, 22.5, 29 of 32, +-1 row), brighter (k < 5) or darker
    (k >= 5) than the background by 0.25-0.4 per channel; random grey-ish background (0.18-0.82 per
    channel), Gaussian pixel noise (std 0.08). A left-right flip keeps every class; a crop would move
    the band, so this set is augmented by flips only. Pixel mean/std over 2000 images: 0.50/0.22 per
    channel. The classes are easy on purpose: a small super-network learns them within the dry run's
    minute (the bands are read by the classifier, which sees positions), so its search ranks something.
    (Position-free cues such as oriented gratings stay at chance for far longer.)"""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    bg = rng.uniform(0.18, 0.82, (n, 3))
    top = np.rint(3 + 6.5 * (labels % 5) * size / 32 + rng.uniform(-1, 1, n)).astype(int)
    thick = rng.integers(2, 4, n)
    rows = np.arange(size)
    bar = (rows[None, :] >= top[:, None]) & (rows[None, :] < (top + thick)[:, None])        # [n, size]
    contrast = np.where(labels < 5, 1.0, -1.0)[:, None] * rng.uniform(0.25, 0.4, (n, 3))      # [n, 3]
    img = bg[:, :, None, None] + contrast[:, :, None, None] * bar[:, None, :, None]
    img = img + rng.normal(0, 0.08, (n, 3, size, size))
    img = np.broadcast_to(img, (n, 3, size, size))
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8), labels.astype(np.int64)


def synthetic_events(n: int, seed, T: int, size: int = 32, substeps: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Moving bars -> (uint8 counts [n, T, 2, size, size], int64 [n]). Class k: a bar (width 2-5 px, length
    8-20 px, up to 6 px off centre) moving at (k % 5) * 45 deg (+-5 deg) from straight down, to the left or
    right at random, over 8-13 px (k < 5) or 18-26 px (k >= 5) in the T frames. Pixels a bright bar enters
    fire ON (p = 1), those it leaves OFF (p = 0); a dark bar (half the samples) swaps them, so only the
    motion across frames gives the direction. Edges are sampled at `substeps` instants per frame, 40% of
    edge events are dropped, Poisson noise (0.08 per pixel, polarity and frame) is added: about 1,600
    events per sample at T = 8."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    # alpha = angle from straight down; left/right mirror images share a class, so a flip keeps the class
    alpha = (labels % 5) * np.pi / 4 + rng.uniform(-0.09, 0.09, n)
    dx, dy = rng.choice([-1, 1], n) * np.sin(alpha), np.cos(alpha)
    travel = np.where(labels < 5, rng.uniform(8, 13, n), rng.uniform(18, 26, n))
    width, length = rng.uniform(2, 5, n), rng.uniform(8, 20, n)
    lateral, start = rng.uniform(-6, 6, n), rng.uniform(-5, 5, n) - travel / 2
    bright = rng.random(n) < 0.5
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - (size - 1) / 2
    out = np.empty((n, T, 2, size, size), np.uint8)
    for lo in range(0, n, 256):                         # chunks bound the memory of the occupancy tensor
        sl = slice(lo, min(lo + 256, n))
        c, s = (v[sl, None, None, None] for v in (dx, dy))
        along, across = xx * c + yy * s, -xx * s + yy * c                            # [b, 1, H, W]
        tau = np.arange(T * substeps + 1) / (T * substeps)                           # [S + 1] in [0, 1]
        centre = start[sl, None] + travel[sl, None] * tau                            # [b, S + 1]
        occ = ((np.abs(along - centre[:, :, None, None]) < width[sl, None, None, None] / 2)
               & (np.abs(across - lateral[sl, None, None, None]) < length[sl, None, None, None] / 2)).astype(np.int8)
        step = np.diff(occ, axis=1).reshape(-1, T, substeps, size, size)             # +1 enter, -1 leave
        enter, leave = (step > 0).sum(2), (step < 0).sum(2)                          # [b, T, H, W]
        on = np.where(bright[sl, None, None, None], enter, leave)                    # a dark bar swaps ON/OFF
        edges = np.stack([enter + leave - on, on], 2)                                # [b, T, 2, H, W]: OFF, ON
        counts = rng.binomial(edges, 0.6) + rng.poisson(0.08, edges.shape)
        if counts.max() > 255:
            raise AutoSNNError("synthetic event counts overflow uint8; lower substeps")
        out[sl] = counts
    return out, labels.astype(np.int64)
