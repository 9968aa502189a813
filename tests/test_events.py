"""Tests for formats/events.py (and the event datasets of data.py): the AEDAT readers on hand-encoded bytes, the
CIFAR10-DVS orientation, both frame-split rules against hand-computed slices, the frame cache and its key,
and the background reading of cached frames (errors, early stops, no host sync per batch)."""
import json
import shutil
import struct
import threading
import time

import numpy as np
import pytest
import torch
from conftest import count_host_syncs, cuda_epoch_without_sync

import data
from data import load_dataset
from files import AutoSNNError
from formats import events, readers


# ---------------------------------------------------------------------------------------------- writers

AEDAT31_HEADER = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n"


def polarity_packet(events, overflow=0):
    """events: (x, y, p, t[, valid]) -> AEDAT 3.1 polarity packet (type 1, 8-byte events)."""
    body = b"".join(struct.pack("<Ii", (e[0] << 17) | (e[1] << 2) | (e[2] << 1) | (e[4] if len(e) > 4 else 1), e[3])
                    for e in events)
    n = len(events)
    return struct.pack("<hhiiiiii", 1, 1, 8, 4, overflow, n, n, n) + body


def other_packet():
    """A 2-event packet of type 2 (frame), 12 bytes each; its bytes would decode to junk if not skipped."""
    return struct.pack("<hhiiiiii", 2, 1, 12, 8, 0, 2, 2, 2) + bytes(range(200, 224))


def aedat20(events):
    """events: (raw x, y, raw polarity bit, t) -> AEDAT 2.0 file bytes (big-endian address, timestamp)."""
    return b"#!AER-DAT2.0\r\n# This is a raw AE data file\r\n" + b"".join(
        struct.pack(">II", (y << 8) | (x << 1) | p, t) for x, y, p, t in events)



# ---------------------------------------------------------------------------------------------- events

def test_events_to_frames_by_number():
    x, y, p = np.array([0, 1, 2, 3, 4]), np.array([0, 0, 1, 1, 2]), np.array([1, 0, 1, 1, 0])
    t = np.array([0, 1, 2, 3, 100])
    f = events.events_to_frames(x, y, p, t, T=2, size=(4, 8))
    assert f.shape == (2, 2, 4, 8) and f.sum() == 5
    # number: 5 // 2 = 2 per slice, the last slice takes the remainder (events 2, 3, 4)
    assert f[0, 1, 0, 0] == 1 and f[0, 0, 0, 1] == 1
    assert f[1, 1, 1, 2] == 1 and f[1, 1, 1, 3] == 1 and f[1, 0, 2, 4] == 1
    few = events.events_to_frames(x[:2], y[:2], p[:2], t[:2], T=3, size=(4, 8))
    assert few[2].sum() == 2 and few[:2].sum() == 0                       # N < T: all in the last slice
    zeros = np.zeros(300, int)
    many = events.events_to_frames(zeros, zeros, zeros + 1, np.arange(300), T=1, size=(1, 1))
    assert many[0, 1, 0, 0] == 300                                        # counts are not clipped at 255


def test_time_split_hand_computed_slices():
    """dt = (t_max - t_min) // T; slice k = [t_min + k*dt, t_min + (k+1)*dt), the remainder in the last."""
    # span 22, T = 4: dt = 5 -> [0, 5) [5, 10) [10, 15) [15, 22]; 22 % 4 = 2 extra units go to the last slice
    t = np.array([0, 5, 9, 10, 14, 15, 19, 21, 22])
    assert events.slice_index(t, 4, "time").tolist() == [0, 1, 1, 2, 2, 3, 3, 3, 3]
    assert events.slice_index(t + 1000, 4, "time").tolist() == [0, 1, 1, 2, 2, 3, 3, 3, 3]   # from t_min
    # span 10, T = 3: dt = 3 -> [100, 103) [103, 106) [106, 110]. The rule floor((t - t_min) * T / span)
    # would put t = 103 in slice 0 (counts 4, 3, 4 instead of 3, 3, 5).
    t = np.arange(100, 111)
    assert np.bincount(events.slice_index(t, 3, "time")).tolist() == [3, 3, 5]
    f = events.events_to_frames(t - 100, np.zeros(11, int), np.ones(11, int), t, T=3, split_by="time", size=(1, 11))
    assert f[:, 1, 0].nonzero()[0].tolist() == [0] * 3 + [1] * 3 + [2] * 5 and f[:, 0].sum() == 0
    assert f[0, 1, 0, :3].tolist() == [1, 1, 1] and f[2, 1, 0, 6:].tolist() == [1] * 5
    # file order does not matter: each event's slice depends on its own time only
    perm = np.random.default_rng(0).permutation(11)
    assert events.slice_index(t[perm], 3, "time").tolist() == events.slice_index(t, 3, "time")[perm].tolist()


def test_time_split_when_dt_is_zero():
    """span < T gives dt = 0: slices 0..T-2 are empty intervals and every event lands in the last slice;
    no events gives empty frames."""
    assert events.slice_index(np.array([7, 7, 8]), 3, "time").tolist() == [2, 2, 2]
    assert events.slice_index(np.array([5]), 4, "time").tolist() == [3]
    assert events.slice_index(np.array([0, 4]), 4, "time").tolist() == [0, 3]   # span 4 = T: dt = 1
    empty = np.zeros(0, np.int64)
    assert events.events_to_frames(empty, empty, empty, empty, T=2, split_by="time", size=(2, 2)).sum() == 0
    with pytest.raises(AutoSNNError, match="split_by"):
        events.slice_index(np.array([1]), 2, "space")


def test_aedat31_bit_layout_overflow_and_skipped_packets(tmp_path):
    # hand-encoded event: x=5, y=3, p=1, valid -> data = 5<<17 | 3<<2 | 1<<1 | 1 = 0x000A000F; t = 7
    raw = struct.pack("<hhiiiiii", 1, 1, 8, 4, 1, 1, 1, 1) + bytes.fromhex("0f000a00") + struct.pack("<i", 7)
    path = tmp_path / "a.aedat"
    path.write_bytes(AEDAT31_HEADER + raw + other_packet() + polarity_packet([(127, 126, 0, 9), (1, 1, 1, 10, 0)]))
    x, y, p, t = events.read_aedat31(path)
    assert x.tolist() == [5, 127] and y.tolist() == [3, 126] and p.tolist() == [1, 0]   # invalid event dropped
    assert t.tolist() == [2 ** 31 + 7, 9]                                 # tsOverflow << 31 | timestamp


@pytest.mark.parametrize("cut, match", [(10, "truncated packet header"), (30, "truncated packet")])
def test_aedat31_truncated(tmp_path, cut, match):
    path = tmp_path / "a.aedat"
    good = AEDAT31_HEADER + polarity_packet([(1, 2, 1, 3), (4, 5, 0, 6)])
    path.write_bytes(good + polarity_packet([(1, 1, 1, 9)])[:cut])
    with pytest.raises(AutoSNNError, match=match):
        events.read_aedat31(path)
    path.write_bytes(b"#!AER-DAT3.1\r\n" + polarity_packet([(1, 2, 1, 3)]))
    with pytest.raises(AutoSNNError, match="END-HEADER"):
        events.read_aedat31(path)


def test_aedat20_bit_layout_orientation_and_truncation(tmp_path):
    # address 0x0304: raw y = 3, raw x = 2, raw polarity bit 0 -> p = 1 (ON)
    path = tmp_path / "c.aedat"
    path.write_bytes(b"#!AER-DAT2.0\r\n" + bytes.fromhex("00000304" "0000000a") + struct.pack(">II", 0x8000 | 5, 11)
                     + struct.pack(">II", (100 << 8) | (127 << 1) | 1, 12))
    x, y, p, t = events.read_aedat20(path)                                # the 0x8000 (sync) event is dropped
    assert x.tolist() == [2, 127] and y.tolist() == [3, 100] and p.tolist() == [1, 0] and t.tolist() == [10, 12]
    # CIFAR10-DVS upright: x = 127 - raw y, y = 127 - raw x
    x, y, p, t = events.cifar10dvs_events(path)
    assert x.tolist() == [124, 27] and y.tolist() == [125, 0] and p.tolist() == [1, 0]
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(AutoSNNError, match="truncated"):
        events.read_aedat20(path)


def test_aedat20_special_events_are_dropped(tmp_path):
    """jAER's DVS128 address word: bit 15 flags an external (sync) event and bit 31 a non-DVS one; their low
    bits would otherwise read as a pixel, so both are dropped. (spikingjelly's CIFAR10-DVS reader keeps
    every word: its filter_dvs defaults to False.)"""
    words = [((3 << 8) | (2 << 1), 10),                                  # DVS: raw x 2, raw y 3, ON
             ((1 << 31) | (3 << 8) | (2 << 1), 11),                       # bit 31, same pixel
             ((1 << 31) | (1 << 15) | (7 << 8) | (9 << 1) | 1, 12),       # bits 31 and 15
             ((1 << 31), 13),                                             # bit 31 alone: would read as (0, 0)
             ((5 << 8) | (4 << 1) | 1, 14)]                               # DVS: raw x 4, raw y 5, OFF
    path = tmp_path / "cifar10_cat_0.aedat"
    path.write_bytes(b"#!AER-DAT2.0\r\n# This is a raw AE data file\r\n"
                     + b"".join(struct.pack(">II", a, t) for a, t in words))
    x, y, p, t = events.read_aedat20(path)
    assert (x.tolist(), y.tolist(), p.tolist(), t.tolist()) == ([2, 4], [3, 5], [1, 0], [10, 14])
    x, y, p, t = events.cifar10dvs_events(path)
    assert (x.tolist(), y.tolist(), t.tolist()) == ([124, 122], [125, 123], [10, 14])
    frames = events.events_to_frames(x, y, p, t, T=1)
    assert frames.sum() == 2 and frames[0, 1, 125, 124] == 1 and frames[0, 0, 127, 127] == 0


def write_gesture(root, csv_train="class,startTime_usec,endTime_usec\n3,100,200\n11,200,300\n"):
    base = root / "dvs128gesture" / "DvsGesture"
    base.mkdir(parents=True)
    seg1 = [(10, 20, 1, 100), (11, 20, 0, 120), (10, 20, 1, 150), (127, 0, 1, 160), (5, 6, 0, 199)]
    seg2 = [(0, 127, 1, 200), (0, 127, 1, 250), (3, 4, 0, 299)]
    rec = [(1, 1, 1, 50)] + seg1[:3] + [(9, 9, 1, 170, 0)] + seg1[3:] + seg2 + [(2, 2, 0, 300)]
    (base / "user01_fluorescent.aedat").write_bytes(AEDAT31_HEADER + polarity_packet(rec[:5]) + other_packet()
                                                    + polarity_packet(rec[5:]))
    (base / "user01_fluorescent_labels.csv").write_text(csv_train)
    (base / "user02_led.aedat").write_bytes(AEDAT31_HEADER + polarity_packet([(64, 64, 1, 1000 + i) for i in range(7)]))
    (base / "user02_led_labels.csv").write_text("class,startTime_usec,endTime_usec\n1,1000,1007\n")
    (base / "trials_to_train.txt").write_text("user01_fluorescent.aedat\n")
    (base / "trials_to_test.txt").write_text("user02_led.aedat\n\n")
    return base, seg1, seg2


def expected_frames(events, T):
    """Naive per-event loop: slice i // (N // T), capped at T - 1."""
    f = np.zeros((T, 2, 128, 128), np.int64)
    for i, (x, y, p, _) in enumerate(events):
        f[min(i // (len(events) // T), T - 1), p, y, x] += 1
    return f


def test_dvs128_gesture_segments_frames_and_cache(tmp_path):
    base, seg1, seg2 = write_gesture(tmp_path)
    ds = load_dataset("dvs128gesture", root=tmp_path, T=2)
    assert (ds.num_classes, ds.input_shape, ds.is_event) == (11, (2, 2, 128, 128), True)
    train, test = ds.split("train"), ds.split("test")
    assert train.files is not None and train.images is None               # read per batch, not held in memory
    assert train.labels.tolist() == [2, 10] and test.labels.tolist() == [0]
    x, y = next(ds.split("test").batches(8))
    assert x.shape == (1, 2, 2, 128, 128) and x[0, 0, 1, 64, 64] == 3 and x[0, 1, 1, 64, 64] == 4
    frames, _ = next(ds.train_data.batches(2))
    assert np.array_equal(frames[0].numpy(), expected_frames(seg1, 2))
    assert np.array_equal(frames[1].numpy(), expected_frames(seg2, 2))
    assert frames[0, 0, 1, 20, 10] == 1 and frames[0, 1, 1, 20, 10] == 1 and frames[0, 1, 1, 0, 127] == 1
    shutil.rmtree(base)                                                   # second load: cache only, no parsing
    again = load_dataset("dvs128gesture", root=tmp_path, T=2)
    assert torch.equal(next(again.train_data.batches(2))[0], frames)
    with pytest.raises(AutoSNNError, match="DvsGesture.tar.gz"):     # the cache is keyed by T
        load_dataset("dvs128gesture", root=tmp_path, T=3)


@pytest.mark.parametrize("csv, match", [
    ("class,startTime_usec,endTime_usec\n3,400,500\n", "holds no events"),
    ("class,startTime_usec,endTime_usec\n12,100,200\n", "class in 1..11"),
    ("class,startTime_usec,endTime_usec\n3,200,100\n", "start < end"),
    ("label,start,end\n3,100,200\n", "header"),
])
def test_gesture_labels_that_do_not_match(tmp_path, csv, match):
    write_gesture(tmp_path, csv_train=csv)
    with pytest.raises(AutoSNNError, match=match):
        load_dataset("dvs128gesture", root=tmp_path, T=2)


def test_gesture_missing_files(tmp_path):
    with pytest.raises(AutoSNNError, match="trials_to_train.txt"):
        load_dataset("dvs128gesture", root=tmp_path)
    base, _, _ = write_gesture(tmp_path)
    (base / "user02_led_labels.csv").unlink()
    with pytest.raises(AutoSNNError, match="user02_led_labels.csv"):
        load_dataset("dvs128gesture", root=tmp_path)


def write_cifar10dvs(root):
    """airplane: 11 recordings (index 0..10), every other class 2; recording i of airplane has i + 1 events;
    truck's second recording has 600 events at one pixel (counts above 255 per frame)."""
    base = root / "cifar10dvs"
    for c, cls in enumerate(readers.CIFAR10DVS_CLASSES):
        (base / cls).mkdir(parents=True)
        for i in range(11 if c == 0 else 2):
            events = [(2, 3, 0, 10 * k) for k in range(i + 1)] if c == 0 else [(c, c, 1, 5), (c, c, 1, 6)]
            if cls == "truck" and i == 1:
                events = [(7, 8, 1, k) for k in range(600)]
            (base / cls / f"cifar10_{cls}_{i}.aedat").write_bytes(aedat20(events))
    return base


def test_cifar10dvs_split_rule_flip_and_cache(tmp_path):
    base = write_cifar10dvs(tmp_path)
    ds = load_dataset("cifar10dvs", root=tmp_path, T=2)
    assert ds.num_classes == 10 and ds.input_shape == (2, 2, 128, 128)
    # per class, by numeric index: first (9 n) // 10 train, rest test -> airplane 9 / 2, others 1 / 1
    assert len(ds.train_data) == 9 + 9 and len(ds.test_data) == 2 + 9
    assert ds.train_data.labels.tolist() == [0] * 9 + list(range(1, 10))
    test_x = torch.cat([x for x, _ in ds.split("test").batches(4)])
    assert test_x[0].sum() == 10 and test_x[1].sum() == 11               # recordings 9 and 10, not "10" < "2"
    # raw (x, y) = (2, 3) -> upright x = 127 - 3 = 124, y = 127 - 2 = 125; raw polarity bit 0 -> ON
    assert test_x[1, :, 1, 125, 124].sum() == 11 and test_x[1].sum() == 11
    assert test_x[1, 0, 1, 125, 124] == 5 and test_x[1, 1, 1, 125, 124] == 6   # 11 // 2 = 5, the rest in slice 1
    assert test_x[-1, :, 0, 120, 119].tolist() == [300, 300]              # raw (7, 8); not clipped by the cache dtype
    plain = torch.cat([x for x, _ in ds.train_data.batches(18)])
    aug = torch.cat([x for x, _ in ds.split("train").batches(6, generator=torch.Generator().manual_seed(0))])
    flipped = [torch.equal(a, p.flip(-1)) for a, p in zip(aug, plain)]
    assert all(f or torch.equal(a, p) for f, a, p in zip(flipped, aug, plain)) and 0 < sum(flipped) < 18
    for cls in readers.CIFAR10DVS_CLASSES:                                   # raw recordings gone: the cache is used
        shutil.rmtree(base / cls)
    again = load_dataset("cifar10dvs", root=tmp_path, T=2)
    assert torch.equal(torch.cat([x for x, _ in again.split("test").batches(4)]), test_x)
    with pytest.raises(AutoSNNError, match="CIFAR10-DVS not found"):  # keyed by split_by: needs the raw files
        load_dataset("cifar10dvs", root=tmp_path, T=2, split_by="time")


def test_cifar10dvs_bad_folders(tmp_path):
    with pytest.raises(AutoSNNError, match="figshare"):
        load_dataset("cifar10dvs", root=tmp_path)
    base = write_cifar10dvs(tmp_path)
    for f in (base / "ship").iterdir():
        f.unlink()
    with pytest.raises(AutoSNNError, match="no .aedat files"):
        load_dataset("cifar10dvs", root=tmp_path)
    shutil.rmtree(base / "ship")
    with pytest.raises(AutoSNNError, match="ship"):
        load_dataset("cifar10dvs", root=tmp_path)


def test_cifar10dvs_empty_recording(tmp_path):
    base = write_cifar10dvs(tmp_path)
    (base / "dog" / "cifar10_dog_0.aedat").write_bytes(aedat20([]))
    with pytest.raises(AutoSNNError, match="holds no events"):
        load_dataset("cifar10dvs", root=tmp_path)




# ---------------------------------------------------------------------------------------------- cache key

def test_cache_key_names_version_orientation_and_split(tmp_path, capsys):
    write_cifar10dvs(tmp_path)
    old = tmp_path / "cifar10dvs" / "frames_T2_number"                   # a version-1 cache: never read
    (old / "test").mkdir(parents=True)
    (old / "test.json").write_text('{"files": [], "labels": []}')
    said = []
    ds = load_dataset("cifar10dvs", root=tmp_path, T=2, log=said.append)
    assert len(said) == 1 and said[0].startswith(f"{old} holds frames of an earlier version")
    assert len(ds.test_data) == 11 and capsys.readouterr() == ("", "")   # the library itself prints nothing
    folder = tmp_path / "cifar10dvs" / f"frames_v{events.CACHE_VERSION}_T2_number"
    meta = json.loads((folder / "test.json").read_text())
    assert meta["key"] == events.cache_key("cifar10dvs", 2, "number")
    assert "127 - raw y" in meta["key"]["orientation"] and "// T" in meta["key"]["time_split"]
    meta["key"]["orientation"] = "x = 127 - raw x, y = raw y"
    (folder / "test.json").write_text(json.dumps(meta))
    with pytest.raises(AutoSNNError, match=f"{folder}.*other settings"):
        load_dataset("cifar10dvs", root=tmp_path, T=2)
    (folder / "test.json").write_text("{")
    with pytest.raises(AutoSNNError, match="test.json is damaged"):
        load_dataset("cifar10dvs", root=tmp_path, T=2)


def test_cache_progress_goes_to_the_callers_log(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(events, "_write", lambda path, write: None)       # progress only, no 1000 files
    one = ((np.array([1]), np.array([2]), np.array([1]), np.array([0])), 0)
    said = []
    events.write_split(tmp_path, "train", [one] * 1000, 2, "number", {}, "cifar10dvs", said.append)
    assert said == [f"cifar10dvs train: {k} samples cached in {tmp_path}" for k in (500, 1000)]
    events.write_split(tmp_path, "test", [one] * 500, 2, "number", {}, "cifar10dvs")   # no log: silent
    assert capsys.readouterr() == ("", "")
    monkeypatch.undo()
    write_cifar10dvs(tmp_path)                                            # load_dataset hands its log down
    handed = []
    write = events.write_split
    monkeypatch.setattr(events, "write_split", lambda *a: handed.append(a[-1]) or write(*a))
    load_dataset("cifar10dvs", root=tmp_path, T=2, log=said.append)
    assert handed == [said.append] * 2


def test_damaged_cached_frames_name_the_file(tmp_path):
    write_cifar10dvs(tmp_path)
    ds = load_dataset("cifar10dvs", root=tmp_path, T=2)
    victim = ds.test_data.files[1]
    with open(victim, "r+b") as f:
        f.truncate(20)
    with pytest.raises(AutoSNNError, match=f"{victim} are unreadable"):
        list(ds.split("test").batches(4))
    assert not prefetch_threads()


def test_unwritable_cache_folder_is_one_error(tmp_path):
    write_cifar10dvs(tmp_path)
    (tmp_path / "cifar10dvs" / f"frames_v{events.CACHE_VERSION}_T2_number").write_text("a file in the way")
    with pytest.raises(AutoSNNError, match="cannot create the frame cache"):
        load_dataset("cifar10dvs", root=tmp_path, T=2)


# ---------------------------------------------------------------------------------------------- background reading

def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "autosnn-prefetch"]


def file_split(tmp_path, n=10, augment=False, cutout=0):
    """n cached samples of T = 2 frames on a 128x128 sensor; sample i has i + 1 events."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        x, y = rng.integers(0, 128, (2, i + 1))
        samples.append(((x, y, rng.integers(0, 2, i + 1), np.arange(i + 1)), i % 3))
    key = events.cache_key("cifar10dvs", 2, "number")
    files, labels = events.write_split(tmp_path, "train", samples, 2, "number", key)
    return data.Split(torch.tensor(labels), files=tuple(files), is_event=True, augment=augment, cutout=cutout)


def test_frames_are_read_ahead_by_a_bounded_thread(tmp_path, monkeypatch):
    split = file_split(tmp_path)
    threads_seen = []
    read = events.read_frames
    monkeypatch.setattr(events, "read_frames",
                        lambda p, shape=None: threads_seen.append(threading.current_thread().name) or read(p, shape))
    it = split.batches(1)
    x, y = next(it)
    assert x.shape == (1, 2, 2, 128, 128) and x.sum() == 1 and y.tolist() == [0]
    time.sleep(0.3)
    # one batch consumed, at most PREFETCH waiting in the queue and one more held by the blocked thread
    assert len(threads_seen) <= 1 + data.PREFETCH + 1
    rest = list(it)
    assert [int(x.sum()) for x, _ in rest] == list(range(2, 11)) and len(threads_seen) == 10
    assert set(threads_seen) == {"autosnn-prefetch"} and not prefetch_threads()


def test_reading_thread_stops_when_the_consumer_stops_or_fails(tmp_path):
    split = file_split(tmp_path)
    for _ in split.batches(1):
        break
    assert not prefetch_threads()
    with pytest.raises(RuntimeError, match="consumer failed"):
        for _ in split.batches(2):
            raise RuntimeError("consumer failed")
    assert not prefetch_threads()
    it = split.batches(3)
    next(it)
    it.close()
    assert not prefetch_threads()


def test_file_batches_no_host_sync_and_same_as_in_memory(tmp_path, monkeypatch):
    split = file_split(tmp_path, augment=True, cutout=30)
    frames = torch.from_numpy(np.stack([events.read_frames(f) for f in split.files]))
    memory = data.Split(split.labels, images=frames, is_event=True, augment=True, cutout=30)
    calls = count_host_syncs(monkeypatch)
    run = lambda s: list(s.batches(3, shuffle=True, generator=torch.Generator().manual_seed(4)))
    on_disk = run(split)
    assert calls == ["numpy"]                         # once per epoch: the order handed to the reading thread
    in_memory = run(memory)
    assert all(torch.equal(a, b) and torch.equal(ya, yb) for (a, ya), (b, yb) in zip(on_disk, in_memory))
    assert len(on_disk) == 4 and on_disk[0][0].dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_file_batches_no_host_sync_on_cuda(tmp_path):
    cpu, gpu = cuda_epoch_without_sync(file_split(tmp_path, augment=True, cutout=30), 3, 4)
    assert len(gpu) == 4
    assert all(torch.equal(a, b.cpu()) and torch.equal(ya, yb.cpu()) for (a, ya), (b, yb) in zip(cpu, gpu))
