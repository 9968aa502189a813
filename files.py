"""The project's error type and its one durable file writer.

`AutoSNNError` is raised by library code for anything a user can fix (a bad option, a missing or
foreign file, an architecture that does not fit); the command lines print it as one line and exit
with code 2. Any other exception is a bug and keeps its traceback.

`atomic_write` is how every file in a run folder (and every data cache) is written: a temporary file
in the same folder, flushed and fsynced, renamed over the target, then the folder fsynced. A crash
at any moment leaves either the old file or the new one, never half of one, and no temporary file
survives an error or Ctrl-C (`remove_stale_temps` sweeps those left by a killed process).
`create_folder` makes a new folder with its first files in one rename, so a crash never leaves an
empty or half-made run folder. Durability assumes a filesystem that honours fsync and rename order.
"""
import argparse
import difflib
import errno
import os
import shutil
import time
from pathlib import Path

TEMP_MARK = ".tmp-"      # temporary names: .<name>.tmp-<pid>


def progress(start: float, done: int, first: int, total: int) -> str:
    """'elapsed 12s ETA 30s' for `done` of `total` units, `first` of them done before `start`
    (a time.perf_counter() reading): the estimate uses this process's rate only, so a resumed run
    re-estimates it. One rule for every stage's progress line."""
    elapsed = time.perf_counter() - start
    eta = elapsed / max(done - first, 1) * (total - done)
    return f"elapsed {elapsed:.0f}s ETA {eta:.0f}s"


class AutoSNNError(ValueError):
    """A mistake the user can fix. Printed as one line by the command lines (exit code 2)."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, without the usage text, with a "did you mean" for a
    misspelled option or sub-command (train.py's and evolve.py's command lines)."""

    def error(self, message):
        names = set(self._option_string_actions)
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                names |= set(action.choices)
        if "invalid choice:" in message:        # "argument cmd: invalid choice: 'rerenk' (choose from ...)"
            words = message.split("invalid choice:", 1)[1].split()[:1]
        else:                                   # "unrecognized arguments: --lamm 1", "argument --T: ..."
            words = [w.split("=")[0] for w in message.replace(":", " ").split() if w.startswith("--")]
        words = [w.strip("'\",") for w in words]
        guesses = [g for w in words if w not in names
                   for g in difflib.get_close_matches(w, sorted(names), n=1, cutoff=0.6)]
        hint = f"; did you mean {guesses[0]}?" if guesses else ""
        self.exit(2, f"{self.prog}: error: {message}{hint} (see {self.prog} --help)\n")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:          # a platform without directory handles: rename is as durable as it gets
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write) -> None:
    """Write `path` durably and atomically. write(f) receives a binary file object.

    A full disk raises AutoSNNError naming the file; the previous version of the file is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise AutoSNNError(f"no space left on device while writing {path}; "
                               f"the previous version of it is intact") from None
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:          # exists but belongs to someone else
        return True
    return True


def remove_stale_temps(folder) -> list:
    """Delete temporary files and folders (.<name>.tmp-<pid>) that a killed writer left in `folder`
    (not recursive); those of a process still running are kept. Returns the removed names."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if not (p.name.startswith(".") and TEMP_MARK in p.name):
            continue
        pid = p.name.rsplit(TEMP_MARK, 1)[1]
        if pid.isdigit() and _alive(int(pid)):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p.name)
        except OSError:
            pass
    return removed


def create_folder(path, files: dict) -> None:
    """Create the folder `path` holding `files` ({name: text}) all at once: they are written into
    a temporary sibling folder that is then renamed into place, so a crash leaves either no folder or
    a complete one. Raises AutoSNNError if `path` exists or its parent cannot be written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")
    if path.exists() or path.is_symlink():
        raise AutoSNNError(f"{path} already exists; continue it with --resume {path} or choose another --name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent)
        tmp.mkdir()
        for name, text in files.items():
            atomic_write_text(tmp / name, text)
        os.rename(tmp, path)    # fails on an existing non-empty folder; never merges into one
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            if path.exists():
                raise AutoSNNError(f"{path} already exists; continue it with --resume {path} "
                                   f"or choose another --name") from None
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise AutoSNNError(f"no space left on device while creating {path}") from None
            raise AutoSNNError(f"cannot create the run folder {path} ({e.strerror or e}); "
                               f"choose a writable --out") from None
        raise
    _fsync_dir(path.parent)
