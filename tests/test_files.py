"""Tests of files.py's durable writes: the fsync order of atomic_write, a full disk recognised through
torch.save's exception chain, names too long for the filesystem, and create_folder leaving nothing
behind when it fails. (Kills inside the writer, and the sweep of temp files: test_reliability.py.)"""
import errno
import os
import stat

import pytest
import torch

import files
from files import AutoSNNError


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_fsyncs_the_whole_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("folder",) if stat.S_ISDIR(st.st_mode) else ("file", st.st_size))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("rename",))
        real_replace(src, dst)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "x.bin"
    files.atomic_write(target, lambda f: [f.write(b"a" * 100) for _ in range(1000)])   # partly still buffered
    # the file's bytes are all flushed when it is fsynced; the rename comes after; the folder last
    assert events == [("file", 100_000), ("rename",), ("folder",)]
    assert target.read_bytes() == b"a" * 100_000 and listing(tmp_path) == ["x.bin"]


class FullDisk:
    """A file object on a disk that fills after `room` bytes: write raises OSError(ENOSPC)."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, b):
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(b)
        return self.f.write(b)

    def flush(self):
        self.f.flush()


def test_a_full_disk_inside_torch_save_is_one_line_and_the_old_file_stays(tmp_path):
    target = tmp_path / "supernet.pt"
    files.atomic_write(target, lambda f: torch.save({"w": torch.ones(3)}, f))
    with pytest.raises(AutoSNNError) as e:
        files.atomic_write(target, lambda f: torch.save({"w": torch.zeros(100_000)}, FullDisk(f, 1000)))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("no space left on device while writing") and str(target) in msg
    assert torch.equal(torch.load(target)["w"], torch.ones(3)) and listing(tmp_path) == ["supernet.pt"]


def test_disk_full_walks_the_exception_chain():
    # what torch.save raises: RuntimeError("... unexpected pos ...") while handling the OSError
    with pytest.raises(RuntimeError, match="unexpected pos") as e, open(os.devnull, "wb") as f:
        torch.save(torch.zeros(100_000), FullDisk(f, 1000))
    assert files.disk_full(e.value)
    if os.path.exists("/dev/full"):             # the kernel's own ENOSPC, buried the same way
        with pytest.raises(Exception) as e, open("/dev/full", "wb") as f:
            torch.save(torch.zeros(100_000), f)
        assert files.disk_full(e.value)
    try:
        raise RuntimeError("outer") from OSError(errno.EDQUOT, "Disk quota exceeded")
    except RuntimeError as x:
        assert files.disk_full(x)
    assert not files.disk_full(RuntimeError("unexpected pos"))
    assert not files.disk_full(OSError(errno.EACCES, "Permission denied"))
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__context__, b.__context__ = b, a        # a cycle ends the walk
    assert not files.disk_full(a)


def longest_accepted(folder):
    n = 1
    while True:
        try:
            files.check_name(folder, "a" * (n + 1), "--name")
        except AutoSNNError:
            return n
        n += 1


def test_check_name_leaves_room_for_the_temp_suffix(tmp_path):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    n = longest_accepted(tmp_path / "runs")         # runs does not exist yet: its parent's limit applies
    # the worst temporary name, .<name>.tmp-<10-digit pid>, fits; one more byte is refused
    assert n + len(f".{files.TEMP_MARK}") + 10 <= limit and n > limit - 30
    for name in ("a" * (n + 1), "a" * 300, "é" * ((n + 2) // 2)):     # bytes count, not characters
        with pytest.raises(AutoSNNError, match=rf"--name is \d+ bytes long; .* use at most {n}$") as e:
            files.check_name(tmp_path / "runs", name, "--name")
        assert "\n" not in str(e.value)
    assert listing(tmp_path) == []
    # the longest accepted name really works, temp folder and all
    files.create_folder(tmp_path / "runs" / ("a" * n), {"config.json": "{}"})
    assert (tmp_path / "runs" / ("a" * n) / "config.json").read_text() == "{}"


@pytest.mark.parametrize("extra", [1, 50])
def test_create_folder_refuses_a_long_name_before_touching_anything(tmp_path, extra):
    n = longest_accepted(tmp_path)
    with pytest.raises(AutoSNNError, match="--name is"):
        files.create_folder(tmp_path / "runs" / ("a" * (n + extra)), {"config.json": "{}"})
    assert listing(tmp_path) == []


@pytest.mark.parametrize("fault", ["disk full", "interrupted"])
def test_create_folder_leaves_nothing_behind_when_a_write_fails(tmp_path, monkeypatch, fault):
    calls, real_fsync = [], os.fsync

    def fsync(fd):                 # the second file's fsync fails (NFS reports a full disk there)
        calls.append(fd)
        if len(calls) == 3:        # file 1, folder 1, file 2
            raise OSError(errno.ENOSPC, "No space left on device") if fault == "disk full" else KeyboardInterrupt
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "runs" / "x"
    expected = (AutoSNNError, f"^no space left on device while creating {path}$") if fault == "disk full" \
        else (KeyboardInterrupt, None)
    with pytest.raises(expected[0], match=expected[1]):
        files.create_folder(path, {"config.json": "{}", "notes.txt": "n"})
    assert listing(tmp_path / "runs") == []          # neither the folder nor its temporary sibling
