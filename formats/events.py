"""Event-camera data for AutoSNN: AEDAT files, events -> frames, and the per-sample frame cache.

Owns (CIFAR10-DVS and DVS128-Gesture): reading AEDAT 2.0 (CIFAR10-DVS) and AEDAT 3.1
(DVS128-Gesture) recordings into event arrays x, y, p, t (int64 [N]), the CIFAR10-DVS orientation, cutting
a DVS128-Gesture recording into its labelled segments, integrating events into T frames, and caching the
frames of every sample on disk. Which files make up a dataset and its splits is formats/readers.py's job; the
datasets and their batches are data.py's. Nothing is printed: progress goes to the caller's `log` callback.

Bit layouts
    AEDAT 2.0 (jAER DVS128): '#' header lines, then big-endian (uint32 address, uint32 timestamp [us])
        pairs. Address bit 0 = polarity (0 = ON), bits 1-7 = raw x, bits 8-14 = raw y; bit 15 (external
        / sync event) or bit 31 (not a DVS event) set marks a special event, which is dropped: its low
        bits are no pixel. (spikingjelly 2.0.0's CIFAR10-DVS reader keeps every word, filter_dvs=False.)
        p = 1 - bit 0, so p = 1 is ON.
    AEDAT 3.1 (libcaer): header ending '#!END-HEADER', then packets: a 28-byte little-endian header
        (int16 type, int16 source, int32 eventSize, tsOffset, tsOverflow, capacity, eventNumber, valid)
        and eventNumber * eventSize bytes. Polarity packets (type 1) hold 8-byte events: uint32 data
        (bit 0 valid, bit 1 polarity (1 = ON), bits 2-16 y, bits 17-31 x) and int32 timestamp [us];
        t = tsOverflow << 31 | timestamp. Invalid events and other packet types are skipped.

Orientation (frames are [T, 2, H, W] with H = y growing downwards, W = x growing to the right)
    CIFAR10-DVS: x = 127 - raw y, y = 127 - raw x, the upright image as in spikingjelly 2.0.0, so
        flipping the last (W) axis mirrors the object left-right. (The original code's reader gave
        x = 127 - raw x, y = raw y: the upright image turned by 90 degrees, on which a W flip is an
        up-down flip of the object.)
    DVS128-Gesture: x, y as recorded; that is already upright.

Events -> frames (split_by; t_min, t_max = smallest and largest timestamp of the sample, N events)
    "number": slice k holds events [k * (N // T), (k + 1) * (N // T)) in file order; the last slice
        also holds the remainder (all N events when N < T).
    "time":   dt = (t_max - t_min) // T (integer division); slice k holds t in [t_min + k*dt,
        t_min + (k+1)*dt) and the last slice everything from t_min + (T-1)*dt to t_max inclusive, so
        the remainder of the span goes to the last slice (spikingjelly's and the original's boundaries).
        When dt == 0 (span < T, e.g. one event) slices 0..T-2 are the empty intervals [t_min, t_min)
        and every event lands in the last slice, as the formula says (and as the number split does
        when N < T).
    frames[k, p, y, x] counts the events of polarity p at (x, y) in slice k; nothing is clipped.

Frame cache: `<root>/<dataset>/frames_v{CACHE_VERSION}_T{T}_{split_by}/{train,test}/<i>.npz`, one
compressed file per sample ("frames": the smallest unsigned dtype that holds the largest count), and
`{train,test}.json` = {"key": cache_key(...), "files": [...], "labels": [...]}, written last, so a
complete index means a complete split. The key names the version, T, split_by, the orientation and the
time-split formula; an index with another key is refused. Version 1 (folders `frames_T{T}_{split_by}`)
had the mirrored CIFAR10-DVS orientation and another time split: it is never read, delete it.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from files import AutoSNNError, atomic_write


SENSOR = (128, 128)   # DVS128: H (y), W (x)
CACHE_VERSION = 2
TIME_SPLIT = "dt = (t_max - t_min) // T, slice k = [t_min + k*dt, t_min + (k+1)*dt), remainder to the last"
ORIENTATION = {"cifar10dvs": "x = 127 - raw y, y = 127 - raw x (upright)",
               "dvs128gesture": "x = raw x, y = raw y (upright)"}


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise AutoSNNError(f"cannot read {path} ({e.strerror or e})") from None


# ----------------------------------------------------------------------------------------------------------
# AEDAT readers

def _skip_header(data: bytes, path: Path, end: bytes | None) -> int:
    """Byte offset after the '#' header lines; with `end`, the header must close with that line."""
    pos = 0
    while data[pos:pos + 1] == b"#":
        nl = data.find(b"\n", pos)
        line, pos = data[pos:nl if nl >= 0 else len(data)], (nl + 1 if nl >= 0 else len(data))
        if end is not None and line.rstrip(b"\r") == end:
            return pos
    if end is not None:
        raise AutoSNNError(f"{path}: no {end.decode()} line; not an AEDAT 3.1 file or a damaged header")
    return pos


def read_aedat20(path) -> tuple[np.ndarray, ...]:
    """Events of an AEDAT 2.0 DVS128 file -> raw x, raw y, p (1 = ON), t: int64 [N], in file order."""
    path = Path(path)
    data = _read_bytes(path)
    pos = _skip_header(data, path, None)
    if (len(data) - pos) % 8:
        raise AutoSNNError(f"{path}: {len(data) - pos} event bytes is not a multiple of 8; the file is truncated, "
                           f"fetch it again")
    ev = np.frombuffer(data, ">u4", offset=pos).reshape(-1, 2).astype(np.int64)
    addr, t = ev[(ev[:, 0] & 0x80008000) == 0].T
    return (addr >> 1) & 0x7F, (addr >> 8) & 0x7F, 1 - (addr & 1), t


def read_aedat31(path) -> tuple[np.ndarray, ...]:
    """Polarity events of an AEDAT 3.1 file -> x, y, p (1 = ON), t: int64 [N], in file order."""
    path = Path(path)
    data = _read_bytes(path)
    pos = _skip_header(data, path, b"#!END-HEADER")
    words, times = [], []
    while pos < len(data):
        if len(data) - pos < 28:
            raise AutoSNNError(f"{path}: truncated packet header at byte {pos}; the file is damaged, fetch it again")
        etype, _, size, _, overflow, _, number, _ = struct.unpack_from("<hhiiiiii", data, pos)
        pos += 28
        if size < 1 or number < 0 or pos + size * number > len(data):
            raise AutoSNNError(f"{path}: truncated packet at byte {pos - 28} ({number} events of {size} bytes); "
                               f"the file is damaged, fetch it again")
        if etype == 1:
            if size != 8:
                raise AutoSNNError(f"{path}: polarity events of {size} bytes (expected 8) at byte {pos - 28}")
            ev = np.frombuffer(data, "<u4", 2 * number, pos).reshape(-1, 2).astype(np.int64)
            valid = (ev[:, 0] & 1) == 1
            words.append(ev[valid, 0])
            times.append((overflow << 31) | ev[valid, 1])
        pos += size * number
    w, t = (np.concatenate(a) if a else np.zeros(0, np.int64) for a in (words, times))
    return (w >> 17) & 0x7FFF, (w >> 2) & 0x7FFF, (w >> 1) & 1, t


# ----------------------------------------------------------------------------------------------------------
# Samples of the two datasets

def cifar10dvs_events(path) -> tuple[np.ndarray, ...]:
    """One CIFAR10-DVS recording -> upright x, y, p, t int64 [N] (x = 127 - raw y, y = 127 - raw x)."""
    raw_x, raw_y, p, t = read_aedat20(path)
    if len(t) == 0:
        raise AutoSNNError(f"{path} holds no events; the file is damaged, fetch it again")
    return 127 - raw_y, 127 - raw_x, p, t


def gesture_segments(aedat, csv):
    """Yield ((x, y, p, t), label) per row of a DVS128-Gesture labels file `csv` (header
    'class,startTime_usec,endTime_usec'): the events of `aedat` with start <= t < end, label = class - 1."""
    aedat, csv = Path(aedat), Path(csv)
    x, y, p, t = read_aedat31(aedat)
    if len(t) and max(x.max(), y.max()) >= 128:
        raise AutoSNNError(f"{aedat}: event addresses outside the 128x128 sensor; is this a DVS128 recording?")
    try:
        lines = [s.strip() for s in csv.read_text().splitlines() if s.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise AutoSNNError(f"cannot read {csv} ({e})") from None
    if not lines or lines[0].replace(" ", "") != "class,startTime_usec,endTime_usec":
        raise AutoSNNError(f"{csv}: expected the header 'class,startTime_usec,endTime_usec'")
    for line in lines[1:]:
        try:
            cls, start, end = (int(v) for v in line.split(","))
        except ValueError:
            raise AutoSNNError(f"{csv}: bad row {line!r}; expected three integers") from None
        if not 1 <= cls <= 11 or start >= end:
            raise AutoSNNError(f"{csv}: row {line!r} needs a class in 1..11 and start < end")
        keep = (t >= start) & (t < end)
        if not keep.any():
            span = f"[{t.min()}, {t.max()}]" if len(t) else "(no events)"
            raise AutoSNNError(f"{csv}: segment [{start}, {end}) holds no events of {aedat.name}, whose events "
                               f"span {span}; the labels do not match the recording")
        yield (x[keep], y[keep], p[keep], t[keep]), cls - 1


# ----------------------------------------------------------------------------------------------------------
# Events -> frames

def slice_index(t: np.ndarray, T: int, split_by: str) -> np.ndarray:
    """The frame (0..T-1) of each event, t: int64 [N] -> int64 [N] (module docstring: the two rules)."""
    n = len(t)
    if split_by == "number":
        per = n // T
        return np.minimum(np.arange(n) // per, T - 1) if per else np.full(n, T - 1)
    if split_by == "time":
        if n == 0:
            return np.zeros(0, np.int64)
        t0 = t.min()
        dt = (t.max() - t0) // T
        return np.minimum((t - t0) // dt, T - 1) if dt else np.full(n, T - 1)
    raise AutoSNNError(f"split_by must be 'number' or 'time', got {split_by!r}")


def events_to_frames(x, y, p, t, T: int, split_by: str = "number", size=SENSOR) -> np.ndarray:
    """Integrate N events (int arrays [N]) into frames[k, p, y, x] = event count -> int64 [T, 2, H, W],
    size = (H, W). split_by: "number" or "time" (module docstring)."""
    H, W = size
    flat = ((slice_index(np.asarray(t), T, split_by) * 2 + p) * H + y) * W + x
    return np.bincount(flat, minlength=T * 2 * H * W).reshape(T, 2, H, W)


# ----------------------------------------------------------------------------------------------------------
# Frame cache

def cache_folder(dataset_folder, T: int, split_by: str) -> Path:
    return Path(dataset_folder) / f"frames_v{CACHE_VERSION}_T{T}_{split_by}"


def cache_key(name: str, T: int, split_by: str) -> dict:
    """What the cached frames depend on; stored in each index and compared on load."""
    return {"version": CACHE_VERSION, "dataset": name, "T": T, "split_by": split_by,
            "orientation": ORIENTATION[name], "time_split": TIME_SPLIT}


def read_index(folder: Path, split: str, key: dict, num_classes: int):
    """(files [absolute paths], labels) of a complete cached split, or None when it is not cached yet.
    Every label an integer in [0, num_classes), one per file, each file a sample file of this split."""
    index = folder / f"{split}.json"
    if not index.exists():
        return None
    try:
        meta = json.loads(index.read_text())
        files, labels, found = meta["files"], meta["labels"], meta["key"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AutoSNNError(f"the frame cache index {index} is damaged ({type(e).__name__}); delete {folder} "
                           f"to rebuild it") from None
    if found != key:
        raise AutoSNNError(f"the frame cache {folder} was made with other settings ({found}); delete it to rebuild it")
    why = index_problem(files, labels, split, num_classes)
    if why is not None:
        raise AutoSNNError(f"the frame cache index {index} is damaged ({why}); delete {folder} to rebuild it")
    return [str(folder / f) for f in files], labels


def index_problem(files, labels, split: str, num_classes: int) -> str | None:
    """What is wrong with a cache index's lists, or None."""
    if not isinstance(files, list) or not isinstance(labels, list):
        return "files and labels must be lists"
    if len(files) != len(labels) or not files:
        return f"{len(files)} files and {len(labels)} labels"
    bad = next((v for v in labels if not (isinstance(v, int) and not isinstance(v, bool) and 0 <= v < num_classes)),
               None)
    if bad is not None or any(isinstance(v, bool) for v in labels):
        return f"label {bad!r} is not a class index in 0..{num_classes - 1}"
    bad = next((f for f in files if not (isinstance(f, str) and f.startswith(f"{split}/") and ".." not in f)), None)
    if bad is not None:
        return f"file {bad!r} is not a sample file of {split}/"
    return None


def write_split(folder: Path, split: str, samples, T: int, split_by: str, key: dict, name: str = "", log=None):
    """Cache the frames of `samples` (an iterable of ((x, y, p, t), label)) as folder/split/<i>.npz and
    then the index folder/split.json. Returns (files [absolute paths], labels). log(str), when given,
    hears the progress every 500 samples."""
    try:
        (folder / split).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AutoSNNError(f"cannot create the frame cache {folder / split} ({e.strerror or e})") from None
    files, labels = [], []
    for i, ((x, y, p, t), label) in enumerate(samples):
        frames = events_to_frames(x, y, p, t, T, split_by)
        frames = frames.astype(np.min_scalar_type(max(int(frames.max()), 1)))   # nothing is clipped
        files.append(f"{split}/{i:06d}.npz")
        labels.append(int(label))
        _write(folder / files[-1], lambda f: np.savez_compressed(f, frames=frames))
        if log is not None and (i + 1) % 500 == 0:
            log(f"{name} {split}: {i + 1} samples cached in {folder}")
    text = json.dumps({"key": key, "files": files, "labels": labels})
    _write(folder / f"{split}.json", lambda f: f.write(text.encode()))
    return [str(folder / f) for f in files], labels


def _write(path: Path, write) -> None:
    try:
        atomic_write(path, write)                      # a full disk is already one error line there
    except OSError as e:                               # read-only or foreign folder
        raise AutoSNNError(f"cannot write the frame cache file {path} ({e.strerror or e})") from None


def read_frames(path, shape: tuple | None = None) -> np.ndarray:
    """Cached frames of one sample -> uint8 [T, 2, H, W], or int32 where a count exceeds 255. shape: the
    [T, 2, H, W] every sample of the cache has (checked when given)."""
    try:
        with np.load(path) as z:
            frames = z["frames"]
    except Exception as e:   # missing, truncated or foreign files raise many types
        raise AutoSNNError(f"cached frames {path} are unreadable ({type(e).__name__}: {e}); delete "
                           f"{Path(path).parent.parent} to rebuild them") from None
    if frames.dtype.kind != "u" or (shape is not None and tuple(frames.shape) != tuple(shape)):
        raise AutoSNNError(f"cached frames {path} are {frames.dtype} {list(frames.shape)}, not counts of shape "
                           f"{list(shape or ['T', 2, 'H', 'W'])}: the cache is damaged; delete "
                           f"{Path(path).parent.parent} to rebuild it")
    return frames if frames.dtype == np.uint8 else frames.astype(np.int32)
