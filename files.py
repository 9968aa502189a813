"""The project's error type and its one durable file writer.

`AutoSNNError` is raised by library code for anything a user can fix (a bad option, a missing or
foreign file, an architecture that does not fit); the command lines print it as one line and exit
with code 2. Any other exception is a bug and keeps its traceback.

`atomic_write` is how every file in a run folder (and every data cache) is written: a temporary file
in the same folder, flushed and fsynced, renamed over the target, then the folder fsynced. A crash
at any moment leaves either the old file or the new one, never half of one, and no temporary file
survives an error or Ctrl-C (`remove_stale_temps` sweeps those left by a killed process).
`read_json` and `csv_text` read and write the small JSON and CSV files of a run folder.
`create_folder` makes a new folder with its first files in one rename, so a crash never leaves an
empty or half-made run folder. Durability assumes a filesystem that honours fsync and rename order.
A full disk is recognised however deep the writer buried it (`disk_full`), and a name too long for
the filesystem, temporary suffix included, is refused before anything is made (`check_name`).
"""
import argparse
import csv
import difflib
import errno
import io
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path


TEMP_MARK = ".tmp-"      # temporary names: .<name>.tmp-<pid>


def duration(seconds: float) -> str:
    """42s, 3m05s, 2h14m, 4d03h: a time span as a person reads it in a progress line."""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def progress(start: float, done: float, first: float, total: float) -> str:
    """'elapsed 12s ETA 30s' for `done` of `total` units, `first` of them done before `start`
    (a time.perf_counter() reading): the estimate uses this process's rate only, so a resumed run
    re-estimates it. One rule for every stage's progress line (units may be fractions of an epoch)."""
    elapsed = time.perf_counter() - start
    eta = elapsed / max(done - first, 1e-9) * (total - done)
    return f"elapsed {duration(elapsed)} ETA {duration(eta)}"


def python() -> str:
    """How a hint names this interpreter: its bare name when that name on PATH is this interpreter
    (python3 in a plain install or an activated venv), else its full path."""
    exe = Path(sys.executable)
    found = shutil.which(exe.name)
    return exe.name if found and Path(found).resolve() == exe.resolve() else str(exe)


class AutoSNNError(ValueError):
    """A mistake the user can fix. Printed as one line by the command lines (exit code 2)."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, without the usage text, with a "did you mean" for a
    misspelled option or sub-command (train.py's, runs.py's and bench.py's command lines). A value
    that reads as a negative number in any notation (-1e-3, -.5, -inf) is a value, never an option:
    argparse alone takes only -1 and -0.5 so, and says "expected one argument" for --lam -1e-2."""

    NEGATIVE_NUMBER = re.compile(r"^-(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$|^-(?:inf|infinity|nan)$", re.IGNORECASE)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = self.NEGATIVE_NUMBER      # what argparse consults while parsing

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


def disk_full(e: BaseException) -> bool:
    """True if `e` or any exception it was raised from or during (__cause__, __context__) is ENOSPC or
    EDQUOT. torch.save reports a failed write as `RuntimeError: unexpected pos ...` raised while the
    OSError(ENOSPC) from the file was being handled, so the outer error alone does not tell."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return False


def _temp_name(name: str) -> str:
    return f".{name}{TEMP_MARK}{os.getpid()}"


# the longest temporary suffix any process may add: a pid has at most 10 digits (pid_t is 32-bit)
_TEMP_EXTRA = len(_temp_name("")) - len(str(os.getpid())) + 10


def check_name(folder, name: str, what: str) -> None:
    """Refuse `name` (a file or folder to be made in `folder`, which need not exist yet) when its
    temporary form .<name>.tmp-<pid> would exceed the filesystem's NAME_MAX (255 bytes on most).
    what: how the user gave the name (e.g. "--name"), for the one-line error."""
    probe = Path(folder)
    while not probe.is_dir() and probe.parent != probe:
        probe = probe.parent
    try:
        limit = os.pathconf(probe, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):    # no pathconf (Windows) or no answer: the common limit
        limit = 255
    size = len(os.fsencode(name))
    if size + _TEMP_EXTRA > limit:
        raise AutoSNNError(f"{what} is {size} bytes long; names in {folder} may have {limit} bytes, and "
                           f"writing adds {_TEMP_EXTRA}: use at most {limit - _TEMP_EXTRA}")


def atomic_write(path, write) -> None:
    """Write `path` durably and atomically. write(f) receives a binary file object.

    The file's data is fsynced before the rename (else a crash could leave the new name pointing at
    empty blocks) and the folder after it (else the rename itself may be lost). A full disk raises
    AutoSNNError naming the file; the previous version of the file is untouched."""
    path = Path(path)
    tmp = path.with_name(_temp_name(path.name))
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
        if disk_full(e):
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


def check_writable(folder: Path, label: str) -> None:
    """One line (AutoSNNError naming `label`, the option) unless `folder` is an existing folder this process
    may create files in."""
    if not folder.is_dir():
        raise AutoSNNError(f"{label}: {folder} " + ("is a file, not a folder" if folder.exists() else "does not exist"))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise AutoSNNError(f"{label}: {folder} is not writable")


def create_folder(path, files: dict) -> None:
    """Create the folder `path` holding `files` ({name: text}) all at once: they are written into
    a temporary sibling folder that is then renamed into place, so a crash leaves either no folder or
    a complete one, and a failure leaves neither. Raises AutoSNNError if `path` exists, its name is
    too long for the filesystem, its parent cannot be written, or the disk is full."""
    path = Path(path)
    check_name(path.parent, path.name, "--name")
    tmp = path.with_name(_temp_name(path.name))
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
        if disk_full(e):
            raise AutoSNNError(f"no space left on device while creating {path}") from None
        if isinstance(e, OSError):
            if path.exists():
                raise AutoSNNError(f"{path} already exists; continue it with --resume {path} "
                                   f"or choose another --name") from None
            raise AutoSNNError(f"cannot create the run folder {path} ({e.strerror or e}); "
                               f"choose a writable --out") from None
        raise
    _fsync_dir(path.parent)


def csv_text(fields: list, rows: list[dict]) -> str:
    """CSV with a header row; missing values are empty."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def read_json(path: Path):
    """A JSON file's content; a missing, unreadable or damaged file is an AutoSNNError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AutoSNNError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AutoSNNError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    except json.JSONDecodeError as e:
        raise AutoSNNError(f"{path} is damaged (not valid JSON: {e.msg} at line {e.lineno})") from None
