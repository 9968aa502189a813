"""A dataset of your own as one numpy .npz file (`--dataset npz:PATH`), read and checked.

Keys (any other key is refused, so that a misspelled one is not silently ignored):

    x        uint8 [N, H, W, 3] or [N, 3, H, W]   static images (channels last or first), or
             integer [N, T, 2, H, W]              event frames: per-pixel counts, T frames per sample
    y        integer [N]                          class labels 0..K-1 (every class in the training set)
    x_test   like x, same sample shape            optional; with y_test
    y_test   integer [N_test]                     optional; with x_test
    hflip    0 or 1 (a scalar)                    optional, default 1: whether a horizontal flip keeps the
                                                  class (0 for digits, text, ...); turns the training flip off

Without x_test/y_test the last fifth of the file by index (floor(N / 5) samples) is the test set, the
rest the training set (so shuffle a file sorted by class first, or give x_test). Static images are
returned channels first; the network takes 3 x 32 x 32 or 3 x 64 x 64 images and event frames of
2 x 32 x 32 or 2 x 128 x 128 (autosnn.STEMS). No torch, no model code; errors are AutoSNNError, one
line naming the file.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from files import AutoSNNError


PREFIX = "npz:"
KEYS = ("x", "y", "x_test", "y_test", "hflip")
TEST_FRACTION = 5        # without x_test: the last N // 5 samples are the test set


def path_of(name: str) -> Path | None:
    """'npz:PATH' -> Path(PATH); any other dataset name -> None."""
    return Path(name[len(PREFIX):]) if name.startswith(PREFIX) else None


def read_npz(path, T: int) -> dict:
    """The checked contents of `path`: {"train": (x, y), "test": (x, y), "is_event", "hflip", "num_classes",
    "split": how the test set was made}. x: static uint8 [N, 3, H, W] (channels first), event integer
    [N, T, 2, H, W] (uint8, or int32 when a count exceeds 255); y int64 [N]."""
    path = Path(path)
    where = f"npz:{path}"
    if not path.is_file():
        raise AutoSNNError(f"{where}: no such file" + (" (it is a folder)" if path.is_dir() else ""))
    if not zipfile.is_zipfile(path):
        raise AutoSNNError(f"{where} is not a readable .npz file (not a zip archive); write it with "
                           f"numpy.savez(path, x=..., y=...)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise AutoSNNError(f"{where} is not a readable .npz file ({type(e).__name__}); write it with "
                           f"numpy.savez(path, x=..., y=...)") from None
    except ValueError:            # object arrays (pickles) are refused by allow_pickle=False
        raise AutoSNNError(f"{where} holds an object (pickled) array, which is not read; store plain numeric "
                           f"arrays") from None
    unknown = sorted(set(arrays) - set(KEYS))
    if unknown:
        raise AutoSNNError(f"{where}: unknown key {unknown[0]!r}; the keys are {', '.join(KEYS)}")
    for k in ("x", "y"):
        if k not in arrays:
            raise AutoSNNError(f"{where} lacks the key {k!r} (keys: x, y, and optionally x_test, y_test, hflip)")
    if ("x_test" in arrays) != ("y_test" in arrays):
        have, lack = ("x_test", "y_test") if "x_test" in arrays else ("y_test", "x_test")
        raise AutoSNNError(f"{where} has {have!r} but no {lack!r}: give both or neither")
    x = _samples(arrays["x"], where, "x", T)
    y = _labels(arrays["y"], len(x), where, "y")
    if "x_test" in arrays:
        xt = _samples(arrays["x_test"], where, "x_test", T)
        if xt.shape[1:] != x.shape[1:]:
            raise AutoSNNError(f"{where}: x_test samples have shape {xt.shape[1:]}, x samples {x.shape[1:]} "
                               f"(after putting channels first); they must match")
        yt = _labels(arrays["y_test"], len(xt), where, "y_test")
        split = "x_test/y_test of the file"
    else:
        n_test = len(x) // TEST_FRACTION
        if n_test == 0:
            raise AutoSNNError(f"{where}: {len(x)} samples are too few to hold out a test set (the last fifth); "
                               f"give more, or x_test and y_test")
        x, xt, y, yt = x[:-n_test], x[-n_test:], y[:-n_test], y[-n_test:]
        split = f"no x_test in the file: the last {n_test} of {len(x) + n_test} samples by index"
    K = int(max(y.max(), yt.max())) + 1
    missing = sorted(set(range(K)) - set(np.unique(y).tolist()))
    if K < 2 or missing:
        raise AutoSNNError(f"{where}: labels must be 0..K-1 with K >= 2 and every class in the training set"
                           + (f"; class {missing[0]} has no training sample" if missing else f"; got K = {K}")
                           + ("" if "x_test" in arrays else " (the test set is the last fifth: shuffle the file)"))
    return {"train": (x, y), "test": (xt, yt), "is_event": x.ndim == 5, "hflip": _hflip(arrays, where),
            "num_classes": K, "split": split}


def _samples(x: np.ndarray, where: str, key: str, T: int) -> np.ndarray:
    """Static images -> uint8 [N, 3, H, W]; event frames -> [N, T, 2, H, W] (uint8 or int32)."""
    if x.ndim not in (4, 5) or len(x) == 0:
        raise AutoSNNError(f"{where}: {key!r} has shape {x.shape}; expected images [N, H, W, 3] or [N, 3, H, W], "
                           f"or event frames [N, T, 2, H, W], with N >= 1")
    if x.ndim == 5:
        if x.dtype.kind not in "iu":
            raise AutoSNNError(f"{where}: event frames {key!r} must be integer counts, got {x.dtype}")
        if x.shape[1] != T or x.shape[2] != 2:
            raise AutoSNNError(f"{where}: event frames {key!r} have shape {x.shape}; with --T {T} they must be "
                               f"[N, {T}, 2, H, W] (T frames, OFF and ON)")
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= 2**31:
            raise AutoSNNError(f"{where}: event counts in {key!r} must be in [0, 2**31), got {lo}..{hi}")
        return x.astype(np.uint8 if hi <= 255 else np.int32, copy=False)
    if x.dtype != np.uint8:
        raise AutoSNNError(f"{where}: images {key!r} must be uint8 (0..255), got {x.dtype}; convert with "
                           f"np.round(x * 255).astype(np.uint8) if they are floats in [0, 1]")
    first, last = x.shape[1] == 3, x.shape[3] == 3
    if first == last:
        raise AutoSNNError(f"{where}: images {key!r} have shape {x.shape}; cannot tell the 3 colour channels "
                           f"(axis 1 or 3, exactly one of size 3; grey images: repeat them 3 times)")
    return np.ascontiguousarray(x if first else x.transpose(0, 3, 1, 2))


def _labels(y: np.ndarray, n: int, where: str, key: str) -> np.ndarray:
    if y.dtype.kind not in "iu":
        raise AutoSNNError(f"{where}: labels {key!r} must be integers, got {y.dtype}")
    if y.shape != (n,):
        raise AutoSNNError(f"{where}: labels {key!r} have shape {y.shape}; expected ({n},), one per sample")
    if y.min() < 0:
        raise AutoSNNError(f"{where}: labels {key!r} must be >= 0, got {int(y.min())}")
    return y.astype(np.int64)


def _hflip(arrays: dict, where: str) -> bool:
    if "hflip" not in arrays:
        return True
    h = arrays["hflip"]
    if h.shape != () or h.dtype.kind not in "biu" or int(h) not in (0, 1):
        raise AutoSNNError(f"{where}: 'hflip' must be a scalar 0 or 1, got {h.dtype} {h.shape}")
    return bool(h)


def normalisation(x: np.ndarray, where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) of pixel / 255 over uint8 images [N, C, H, W] (the training split)."""
    v = x.astype(np.float64) / 255.0
    mean, std = v.mean(axis=(0, 2, 3)), v.std(axis=(0, 2, 3))
    if not (std > 0).all():
        raise AutoSNNError(f"{where}: every training pixel of channel {int(np.argmin(std))} has the same value; "
                           f"nothing to normalise by")
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
