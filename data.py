"""Datasets for AutoSNN: static images, neuromorphic recordings and synthetic data, as device batches.

Owns (paper sections 5 and 7): loading CIFAR-10/100, SVHN, Tiny-ImageNet-200, CIFAR10-DVS and
DVS128-Gesture from their original files, download with md5 checks, the search split (first 80% of the
training set by index = D_train, last 20% = D_val), batch-wise augmentation on the device, and two
synthetic datasets that need no files. Event-camera files, events -> frames and the frame cache are
events.py's. No model code.

    from data import load_dataset
    ds = load_dataset("cifar10", root="./data", download=True)
    train, val = ds.search_split(0.8)                 # D_train (augmented), D_val (test transforms)
    g = torch.Generator().manual_seed(0)
    for x, y in train.batches(96, shuffle=True, generator=g, device="cuda"):
        ...   # x: float32 [B, 3, 32, 32] normalised (event data: [B, T, 2, H, W] raw counts); y: int64 [B]

Expected layout under `root` (download=True fetches the first three; place the others by hand):

    cifar-10-python.tar.gz  -> cifar-10-batches-py/{data_batch_1..5, test_batch}
    cifar-100-python.tar.gz -> cifar-100-python/{train, test}
    svhn/{train_32x32.mat, test_32x32.mat}                                        (needs: pip install scipy)
    tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt}
        wget http://cs231n.stanford.edu/tiny-imagenet-200.zip && unzip tiny-imagenet-200.zip -d ./data
        (needs: pip install pillow; decoded once into tiny-imagenet-200/decoded_uint8.npz)
    cifar10dvs/<class>/cifar10_<class>_<i>.aedat     class in airplane automobile bird ... truck
        download the 10 class zips (each holds its <class>/ folder) from
        https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671 and run:
        for f in *.zip; do unzip "$f" -d ./data/cifar10dvs; done
    dvs128gesture/DvsGesture/{userXX_<light>.aedat, userXX_<light>_labels.csv, trials_to_train.txt, trials_to_test.txt}
        download DvsGesture.tar.gz from http://research.ibm.com/dvsgesture/ and run:
        mkdir -p ./data/dvs128gesture && tar -xzf DvsGesture.tar.gz -C ./data/dvs128gesture

Event data becomes T frames [T, 2, H=y, W=x] of per-pixel event counts (channel 1 = ON), upright, cached
once per sample under `<root>/<cifar10dvs|dvs128gesture>/` (events.py: the orientation, the split rules,
the cache key). Splits: CIFAR10-DVS per class by file index, first 90% train (900 / 100); DVS128-Gesture
the official trials lists, one sample per labelled segment, label = class - 1.

Transforms. Static: x/255, train-time random crop with 4-pixel zero padding *in raw pixel space* (the
padded pixels are black and then normalised to -mean/std, as in the original pad -> ToTensor -> Normalize),
horizontal flip p=0.5, normalise with the dataset mean/std, then optional cutout (one square per image,
zeroed after normalisation). Event data: raw counts, train-time horizontal flip only (the original applied
no DVS augmentation), optional cutout on all frames. Test splits and D_val: none.
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

import hashlib
import itertools
import os
import pickle
import queue
import re
import sys
import tarfile
import zlib
import threading
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType, SimpleNamespace

import numpy as np
import torch

import events
from files import AutoSNNError, atomic_write

DATASETS = ("cifar10", "cifar100", "svhn", "tinyimagenet", "cifar10dvs", "dvs128gesture", "synthetic",
            "synthetic-dvs")

# file name -> (url, md5). Override per call with load_dataset(..., sources={name: (url, md5)}).
SOURCES = MappingProxyType({
    "cifar-10-python.tar.gz": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                               "c58f30108f718f92721af3b95e74349a"),
    "cifar-100-python.tar.gz": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                                "eb9058c3a382ffc7106e4002c42a8d85"),
    "train_32x32.mat": ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
                        "e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test_32x32.mat": ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
                       "eb5a983be6a315427106f1b164d9cef3"),
})

# Per-channel (mean, std) of pixel/255; "synthetic" rounds the measured values (synthetic_images).
NORMALISATION = MappingProxyType({
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "tinyimagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "synthetic": ((0.5, 0.5, 0.5), (0.22, 0.22, 0.22)),
})
CIFAR10DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
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
    augment: random crop (static only) + horizontal flip. cutout: square side, 0 = off.
    mean/std: per-channel normalisation of static data (None for event data).
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
    cutout: int = 0
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
                    print(f"{len(self)} samples do not fit on {dev}; they stay in host memory", file=sys.stderr)
            mean, std = ((None, None) if self.mean is None else
                         (torch.tensor(v, device=dev).view(1, -1, 1, 1) for v in (self.mean, self.std)))
            self._copies[key] = SimpleNamespace(images=images, host=host, labels=self.labels.to(dev),
                                                mean=mean, std=std)
        return self._copies[key]

    def _read_files(self, rows: np.ndarray) -> torch.Tensor:
        """Cached frames of the samples at `rows` -> uint8 (int32 where a count exceeds 255) [B, T, 2, H, W]."""
        return torch.from_numpy(np.stack([events.read_frames(self.files[i]) for i in rows]))

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
            if not self.is_event:
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
            if not self.is_event:
                x = crop_padded(x, d[:, 0:2], CROP_PAD)
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
                 sources: dict | None = None) -> Dataset:
    """Load `name` (one of DATASETS). T and split_by apply to event data; n_train/n_test/seed to the
    synthetic sets (default 2000/500); cutout is the default for split("train"); sources overrides
    SOURCES entries ({file name: (url, md5)}) for download and checksum checks."""
    if name not in DATASETS:
        raise AutoSNNError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if not isinstance(T, int) or T < 1:
        raise AutoSNNError(f"T must be a positive integer, got {T!r}")
    if split_by not in ("number", "time"):
        raise AutoSNNError(f"split_by must be 'number' or 'time', got {split_by!r}")
    if cutout < 0:
        raise AutoSNNError(f"cutout must be >= 0 (0 = off), got {cutout}")
    srcs = {**SOURCES, **(sources or {})}
    if name in ("synthetic", "synthetic-dvs"):
        n_train, n_test = (2000 if n_train is None else n_train), (500 if n_test is None else n_test)
        if n_train < 1 or n_test < 1:
            raise AutoSNNError(f"n_train and n_test must be >= 1, got {n_train}, {n_test}")
        make = synthetic_images if name == "synthetic" else (lambda n, s: synthetic_events(n, s, T))
        (xtr, ytr), (xte, yte) = make(n_train, [seed, 0]), make(n_test, [seed, 1])
        return _in_memory(name, 10, xtr, ytr, xte, yte, cutout, is_event=name == "synthetic-dvs")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise AutoSNNError(f"the data root {root} is a file, not a folder; pass a folder (train.py: --data-root)")
    if name in ("cifar10dvs", "dvs128gesture"):
        return _event_dataset(name, root, T, split_by, cutout)
    loader = _load_svhn if name == "svhn" else _load_tinyimagenet if name == "tinyimagenet" else _load_cifar
    (xtr, ytr), (xte, yte) = loader(root, name, download, srcs)
    return _in_memory(name, {"cifar100": 100, "tinyimagenet": 200}.get(name, 10), xtr, ytr, xte, yte, cutout)


def _in_memory(name, num_classes, xtr, ytr, xte, yte, cutout, is_event=False) -> Dataset:
    for labels, what in ((ytr, "training"), (yte, "test")):
        if len(labels) == 0 or labels.min() < 0 or labels.max() >= num_classes:
            raise AutoSNNError(f"{name}: {what} labels must be non-empty and in [0, {num_classes})")
    mean, std = (None, None) if is_event else NORMALISATION[name]
    make = lambda x, y: Split(torch.from_numpy(np.asarray(y, np.int64)), images=torch.from_numpy(x),
                              is_event=is_event, mean=mean, std=std)
    return Dataset(name, num_classes, tuple(xtr.shape[1:]), is_event, make(xtr, ytr), make(xte, yte), cutout)


# ----------------------------------------------------------------------------------------------------------
# Download and files

def _download(url: str, path: Path, md5: str) -> None:
    """Fetch url into path + '.part' (truncating any stale one), fsync it, verify md5, then rename into place."""
    part = path.with_name(path.name + ".part")
    digest, done = hashlib.md5(), 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=60)
            except (OSError, ValueError) as e:
                raise AutoSNNError(f"could not download {url} ({e}); fetch it by hand and place it at {path}") from None
            with response:
                total = int(response.headers.get("Content-Length") or 0)
                while True:
                    try:
                        chunk = response.read(1 << 20)
                    except OSError as e:
                        raise AutoSNNError(f"the download of {url} broke off ({e}); try again, or fetch it by hand "
                                           f"and place it at {path}") from None
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    print(f"\r{path.name}: {done / 2**20:.1f} / {total / 2**20:.1f} MiB", end="", file=sys.stderr)
            out.flush()
            os.fsync(out.fileno())
        print(file=sys.stderr)
    except BaseException as e:
        try:
            part.unlink(missing_ok=True)
        except OSError:                                # not a file: nothing of ours to remove
            pass
        if isinstance(e, OSError):                     # the local side: full disk, no permission, a file in the way
            raise AutoSNNError(f"cannot write {part} ({e.strerror or e}); free space or choose another data "
                               f"folder") from None
        raise
    if digest.hexdigest() != md5:
        part.unlink()
        raise AutoSNNError(f"checksum mismatch for {url}: md5 {digest.hexdigest()}, expected {md5}; "
                           f"the download is corrupt or the source changed, try again")
    os.replace(part, path)


def _ensure(path: Path, download: bool, srcs: dict, missing_msg: str) -> Path:
    """Return path holding a verified copy of srcs[path.name]; download it when allowed. A file with a wrong
    checksum (interrupted, corrupt) is never used: it is fetched again or reported."""
    url, md5 = srcs[path.name]
    if path.exists():
        try:
            with open(path, "rb") as f:
                if hashlib.file_digest(f, "md5").hexdigest() == md5:
                    return path
        except OSError as e:
            raise AutoSNNError(f"cannot read {path} ({e.strerror or e})") from None
        if not download:
            raise AutoSNNError(f"{path} has the wrong md5 (corrupt or incomplete); delete it or pass download=True "
                             f"(train.py: --download)")
        print(f"{path} has the wrong md5; downloading it again", file=sys.stderr)
    elif not download:
        raise AutoSNNError(f"{missing_msg}; pass download=True (train.py: --download) to fetch {url}")
    _download(url, path, md5)
    return path


def _extract_tar(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            for m in tar.getmembers():
                if m.issym() or m.islnk() or not (dest / m.name).resolve().is_relative_to(dest.resolve()):
                    raise AutoSNNError(f"{archive} holds an unsafe member {m.name!r}; refusing to extract it")
            tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    except OSError as e:
        if e.errno is not None:                        # writing: full disk, no permission
            raise AutoSNNError(f"cannot extract {archive} into {dest} ({e.strerror or e})") from None
        raise AutoSNNError(f"{archive} is not a readable tar archive ({e}); delete it and download it again") from None
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise AutoSNNError(f"{archive} is not a readable tar archive ({e}); delete it and download it again") from None


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only dicts/lists of numbers, bytes and numpy arrays: a downloaded pickle cannot run code."""
    ALLOWED = {("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.numeric", "_frombuffer"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module.replace("numpy._core", "numpy.core"), name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        if module.startswith("numpy.core") and hasattr(np, "_core"):   # numpy >= 2 renamed numpy.core
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python pickle: {b'data': uint8 [N, 3072] (R, G, B planes of 32x32), label_key: N ints}."""
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as e:   # a truncated or foreign pickle raises many different types
        raise AutoSNNError(f"{path} is not a readable CIFAR pickle ({type(e).__name__}: {e}); delete it and extract "
                         f"the archive again") from None
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
        raise AutoSNNError(f"{path} lacks the keys b'data' and {label_key!r}; is it the right CIFAR archive?")
    data, labels = np.asarray(d[b"data"]), np.asarray(d[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
        raise AutoSNNError(f"{path}: expected uint8 data [N, 3072] and N labels, got {data.dtype} {data.shape} and "
                         f"{labels.shape} labels; the file is damaged, extract the archive again")
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar(root: Path, name: str, download: bool, srcs: dict):
    if name == "cifar10":
        archive, folder, train, test, key = ("cifar-10-python.tar.gz", "cifar-10-batches-py",
                                             [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels")
    else:
        archive, folder, train, test, key = ("cifar-100-python.tar.gz", "cifar-100-python", ["train"], ["test"],
                                             b"fine_labels")
    base = root / folder
    if not all((base / f).exists() for f in train + test):
        _ensure(root / archive, download, srcs, f"{name} not found: expected {base}/{{{','.join(train + test)}}} "
                                               f"or the archive {root / archive}")
        _extract_tar(root / archive, root)
        if missing := [f for f in train + test if not (base / f).exists()]:
            raise AutoSNNError(f"{root / archive} did not contain {folder}/{missing}; is it the right archive?")
    parts = [[_read_cifar_batch(base / f, key) for f in files] for files in (train, test)]
    return [(np.concatenate([x for x, _ in p]), np.concatenate([y for _, y in p])) for p in parts]


def _load_svhn(root: Path, name: str, download: bool, srcs: dict):
    """SVHN .mat: X uint8 [32, 32, 3, N] (H, W, C, N), y [N, 1] in 1..10 where 10 means digit 0."""
    out = []
    for fname in ("train_32x32.mat", "test_32x32.mat"):
        path = _ensure(root / "svhn" / fname, download, srcs,
                       f"SVHN not found: expected {root / 'svhn'}/{{train_32x32.mat,test_32x32.mat}}")
        try:
            import scipy.io
        except ImportError:
            raise AutoSNNError("reading SVHN's .mat files needs scipy: pip install scipy") from None
        try:
            mat = scipy.io.loadmat(path)
            x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1).astype(np.int64)
        except Exception as e:
            raise AutoSNNError(f"{path} is not a readable SVHN .mat file ({type(e).__name__}: {e})") from None
        if (x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or len(y) != x.shape[3]
                or not np.isin(y, np.arange(1, 11)).all()):
            raise AutoSNNError(f"{path}: expected uint8 X [32, 32, 3, N] and N labels in 1..10, got {x.dtype} {x.shape}")
        out.append((np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y % 10))
    return out


def _load_tinyimagenet(root: Path, *_):
    """Tiny-ImageNet-200 from its folders, decoded once into decoded_uint8.npz. Labels = index in sorted(wnids),
    the order an ImageFolder over train/ gives. Test = the official val split (val_annotations.txt)."""
    base = root / "tiny-imagenet-200"
    cache = base / "decoded_uint8.npz"
    if cache.exists():
        try:
            with np.load(cache) as z:
                return (z["train_x"], z["train_y"]), (z["test_x"], z["test_y"])
        except Exception as e:
            raise AutoSNNError(f"{cache} is damaged ({e}); delete it to decode the images again") from None
    if not (base / "wnids.txt").exists():
        raise AutoSNNError(f"Tiny-ImageNet not found: expected {base}/wnids.txt, train/<wnid>/images/*.JPEG and "
                                f"val/; run: wget http://cs231n.stanford.edu/tiny-imagenet-200.zip && unzip "
                                f"tiny-imagenet-200.zip -d {root}")
    try:
        from PIL import Image
    except ImportError:
        raise AutoSNNError("decoding Tiny-ImageNet's JPEG files needs Pillow: pip install pillow") from None
    wnids = {w: k for k, w in enumerate(sorted({w.strip() for w in (base / "wnids.txt").read_text().split()}))}
    train, test, ann = [], [], base / "val" / "val_annotations.txt"
    for w, k in wnids.items():
        files = sorted(p for p in (base / "train" / w / "images").glob("*") if p.suffix.lower() in (".jpeg", ".png"))
        if not files:
            raise AutoSNNError(f"{base / 'train' / w / 'images'} is missing or empty; unzip the archive again")
        train += [(p, k) for p in files]
    for line in filter(str.strip, ann.read_text().splitlines() if ann.exists() else []):
        fname, w = (line.split("\t") + ["", ""])[:2]
        if w not in wnids:
            raise AutoSNNError(f"{ann}: {fname} has class {w!r}, which is not in wnids.txt")
        test.append((base / "val" / "images" / fname, wnids[w]))
    if not train or not test:
        raise AutoSNNError(f"{base}: wnids.txt or {ann} is missing or empty; unzip the archive again")

    def decode(items):
        x = np.empty((len(items), 3, 64, 64), np.uint8)
        for i, (p, _) in enumerate(items):
            if not p.exists():
                raise AutoSNNError(f"{p} not found (listed in the dataset); unzip the archive again")
            try:
                with Image.open(p) as im:
                    a = np.asarray(im.convert("RGB"))
            except Exception as e:   # PIL raises several types for damaged or foreign files
                raise AutoSNNError(f"{p} is not a readable image ({type(e).__name__}: {e}); unzip the archive "
                                   f"again") from None
            if a.shape != (64, 64, 3):
                raise AutoSNNError(f"{p}: expected a 64x64 image, got {a.shape[:2]}")
            x[i] = a.transpose(2, 0, 1)
        return x, np.array([k for _, k in items], np.int64)

    (xtr, ytr), (xte, yte) = decode(train), decode(test)
    try:
        atomic_write(cache, lambda f: np.savez(f, train_x=xtr, train_y=ytr, test_x=xte, test_y=yte))
    except OSError as e:
        raise AutoSNNError(f"cannot write {cache} ({e.strerror or e}); make {base} writable") from None
    return (xtr, ytr), (xte, yte)


# ----------------------------------------------------------------------------------------------------------
# Event-camera datasets: which recordings form each split (reading and caching them: events.py)

def _cifar10dvs_samples(root: Path):
    """{split: [(aedat path, label)]}: per class, files sorted by their numeric index; the first
    (9 * n) // 10 train and the rest test (900 / 100 for the full 1000 recordings per class)."""
    base = root / "cifar10dvs"
    if not base.is_dir() or not any((base / c).is_dir() for c in CIFAR10DVS_CLASSES):
        raise AutoSNNError(f"CIFAR10-DVS not found: expected {base}/<class>/cifar10_<class>_<i>.aedat for the "
                                f"classes {', '.join(CIFAR10DVS_CLASSES)}; download the 10 class zips from https://"
                                f"figshare.com/articles/dataset/CIFAR10-DVS_New/4724671 and unzip them into {base}")
    out = {"train": [], "test": []}
    for label, cls in enumerate(CIFAR10DVS_CLASSES):
        folder = base / cls
        if not folder.is_dir():
            raise AutoSNNError(f"{folder} not found; unzip {cls}.zip into {base}")
        files = list(folder.glob("*.aedat"))
        if not files:
            raise AutoSNNError(f"{folder} holds no .aedat files; unzip {cls}.zip into {base} again")
        number = lambda f: int(m.group(1)) if (m := re.search(r"(\d+)\.aedat$", f.name)) else -1
        if bad := [f.name for f in files if number(f) < 0]:
            raise AutoSNNError(f"{folder}: file names must end in _<index>.aedat, got {bad[:3]}")
        files.sort(key=number)
        k = (9 * len(files)) // 10
        out["train"] += [(f, label) for f in files[:k]]
        out["test"] += [(f, label) for f in files[k:]]
    return out


def _gesture_samples(root: Path):
    """{split: [(aedat path, labels csv path)]} from the official trials_to_train/test.txt lists."""
    base = root / "dvs128gesture" / "DvsGesture"
    if not (base / "trials_to_train.txt").exists() or not (base / "trials_to_test.txt").exists():
        raise AutoSNNError(f"DVS128-Gesture not found: expected {base}/ with trials_to_train.txt, "
                                f"trials_to_test.txt, userXX_<lighting>.aedat and userXX_<lighting>_labels.csv; "
                                f"download DvsGesture.tar.gz from http://research.ibm.com/dvsgesture/ and run: "
                                f"tar -xzf DvsGesture.tar.gz -C {base.parent}")
    out = {}
    for split in ("train", "test"):
        try:
            names = [s.strip() for s in (base / f"trials_to_{split}.txt").read_text().splitlines() if s.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise AutoSNNError(f"cannot read {base / f'trials_to_{split}.txt'} ({e})") from None
        if not names:
            raise AutoSNNError(f"{base / f'trials_to_{split}.txt'} lists no recordings")
        out[split] = [(base / n, base / (n[:-len(".aedat")] + "_labels.csv")) for n in names]
        for aedat, csv in out[split]:
            if not aedat.exists() or not csv.exists():
                raise AutoSNNError(f"{aedat.name} or {csv.name} is missing from {base}; "
                                        f"extract DvsGesture.tar.gz again")
    return out


def _event_dataset(name: str, root: Path, T: int, split_by: str, cutout: int) -> Dataset:
    """Frames cached once per sample (events.py); a complete cache is used without the raw files."""
    base = root / name
    folder, key = events.cache_folder(base, T, split_by), events.cache_key(name, T, split_by)
    cached = {s: events.read_index(folder, s, key) for s in ("train", "test")}
    if None in cached.values():
        old = base / f"frames_T{T}_{split_by}"
        if old.is_dir():
            print(f"{old} holds frames of an earlier version (another orientation or time split); it is not "
                  f"used and can be deleted", file=sys.stderr)
        listing = _cifar10dvs_samples(root) if name == "cifar10dvs" else _gesture_samples(root)
        for split, items in listing.items():
            if cached[split] is None:
                samples = (((events.cifar10dvs_events(path), label) for path, label in items) if name == "cifar10dvs"
                           else itertools.chain.from_iterable(events.gesture_segments(a, c) for a, c in items))
                cached[split] = events.write_split(folder, split, samples, T, split_by, key, name)
    train, test = (Split(torch.tensor(cached[s][1], dtype=torch.long), files=tuple(cached[s][0]), is_event=True)
                   for s in ("train", "test"))
    return Dataset(name, 10 if name == "cifar10dvs" else 11, (T, 2, *events.SENSOR), True, train, test, cutout)


# ----------------------------------------------------------------------------------------------------------
# Synthetic data: no files, deterministic from the seed, labels i % 10 (exactly balanced in every block of 10)

def synthetic_images(n: int, seed, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Oriented gratings -> (uint8 [n, 3, size, size], int64 [n]). Class k: orientation +-(k % 5) * 22.5 deg
    (random sign, +-5 deg jitter) and frequency band k // 5 (1.5-2.5 or 3.5-5 cycles per image); random
    phase, Gaussian window (sigma 8-12 px) at a random position, random background colour, grating brighter
    or darker by 0.3-0.6 per channel, Gaussian pixel noise (std 0.08). Only orientation and frequency carry
    the class. Pixel mean/std over 2000 images: 0.50/0.22 per channel."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    # +-angle pairs form one class so a horizontal flip (training augmentation) never changes the class
    theta = rng.choice([-1, 1], n) * ((labels % 5) * np.pi / 8 + rng.uniform(-0.09, 0.09, n))
    cycles = np.where(labels < 5, rng.uniform(1.5, 2.5, n), rng.uniform(3.5, 5.0, n))
    phase, sigma = rng.uniform(0, 2 * np.pi, n), rng.uniform(8, 12, n)
    cy, cx = rng.uniform(0.3 * size, 0.7 * size, (2, n))
    bg = rng.uniform(0.2, 0.8, (n, 3))
    fg = np.clip(bg + rng.choice([-1, 1], (n, 1)) * rng.uniform(0.3, 0.6, (n, 3)), 0, 1)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c, s = (v[:, None, None] for v in (np.cos(theta), np.sin(theta)))
    grating = 0.5 + 0.5 * np.sin(2 * np.pi * cycles[:, None, None] * (xx * c + yy * s) / size + phase[:, None, None])
    window = np.exp(-((xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2) / (2 * sigma[:, None, None] ** 2))
    a = (grating * window)[:, None]                                                      # [n, 1, H, W]
    img = bg[:, :, None, None] * (1 - a) + fg[:, :, None, None] * a + rng.normal(0, 0.08, (n, 3, size, size))
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
