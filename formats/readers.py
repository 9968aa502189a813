"""On-disk formats of AutoSNN's datasets: where each one's files lie, how they are fetched and read.

Owns: the expected layout under the data root, download with md5 checks, safe tar extraction, and the
readers of CIFAR-10/100 (python pickles), SVHN (.mat), Tiny-ImageNet-200 (JPEG folders) and the folder
layouts of CIFAR10-DVS and DVS128-Gesture (which recording belongs to which split). Its readers return
plain numpy arrays (static images uint8 [N, C, H, W], labels int64 [N]); datasets, splits and batches
are data.py's, the AEDAT files themselves and the frame cache formats/events.py's. No torch, no model code.

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

Labels are refused, never coerced, when they are not whole numbers (a string, 3.7): a truncated label
would train silently on the wrong class. Progress and notices go to the caller's `log(str)` callback
(None: silent); errors are AutoSNNError, one line naming the file.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import tarfile
import urllib.request
import zlib
from pathlib import Path
from types import MappingProxyType

import numpy as np

from files import AutoSNNError, atomic_write


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
CIFAR10DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _say(log, msg: str) -> None:
    if log is not None:
        log(msg)


# ----------------------------------------------------------------------------------------------------------
# Download and archives

def download(url: str, path: Path, md5: str, log=None) -> None:
    """Fetch url into path + '.part' (truncating any stale one), fsync it, verify md5, then rename into place.
    log(str) hears the start, every tenth of the size (when the server gives it) and the end."""
    part = path.with_name(path.name + ".part")
    digest, done, reported = hashlib.md5(), 0, 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=60)
            except (OSError, ValueError) as e:
                raise AutoSNNError(f"could not download {url} ({e}); fetch it by hand and place it at {path}") from None
            with response:
                total = int(response.headers.get("Content-Length") or 0)
                _say(log, f"downloading {url}" + (f" ({total / 2**20:.1f} MiB)" if total else "") + f" to {path}")
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
                    if total and done * 10 // total > reported:
                        reported = done * 10 // total
                        _say(log, f"{path.name}: {done / 2**20:.1f} / {total / 2**20:.1f} MiB")
            out.flush()
            os.fsync(out.fileno())
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
    _say(log, f"{path}: {done / 2**20:.1f} MiB, md5 verified")


def fetch(path: Path, allow_download: bool, sources: dict, missing_msg: str, log=None) -> Path:
    """Return path holding a verified copy of sources[path.name] ({file name: (url, md5)}); download it when
    allowed. A file with a wrong checksum (interrupted, corrupt) is never used: it is fetched again or reported."""
    url, md5 = sources[path.name]
    if path.exists():
        try:
            with open(path, "rb") as f:
                if hashlib.file_digest(f, "md5").hexdigest() == md5:
                    return path
        except OSError as e:
            raise AutoSNNError(f"cannot read {path} ({e.strerror or e})") from None
        if not allow_download:
            raise AutoSNNError(f"{path} has the wrong md5 (corrupt or incomplete); delete it or pass download=True "
                               f"(train.py: --download)")
        _say(log, f"{path} has the wrong md5; downloading it again")
    elif not allow_download:
        raise AutoSNNError(f"{missing_msg}; pass download=True (train.py: --download) to fetch {url}")
    download(url, path, md5, log)
    return path


def extract_tar(archive: Path, dest: Path) -> None:
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


# ----------------------------------------------------------------------------------------------------------
# Static images

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


def integer_labels(values, path) -> np.ndarray:
    """Class labels -> int64 array of the same shape. Integers, or floats that are whole numbers (3.0), pass;
    anything else (a string, 3.7, NaN) is one error naming `path`, so no label is silently truncated."""
    try:
        a = np.asarray(values)
    except ValueError:                                 # ragged nesting
        raise AutoSNNError(f"{path}: the labels are not a flat list of numbers; the file is damaged or not a "
                           f"dataset file") from None
    if a.dtype.kind in "iu":
        return a.astype(np.int64)
    flat = a.reshape(-1)
    if a.dtype.kind == "f":
        whole = np.isfinite(flat) & (flat == np.round(flat))
        if whole.all():
            return a.astype(np.int64)
        raise AutoSNNError(f"{path}: label {flat[~whole][0]} is not a whole number; the file is damaged or not "
                           f"a dataset file")
    got = f"{type(flat[0].item()).__name__} values such as {flat[0].item()!r}" if len(flat) else "no numbers"
    raise AutoSNNError(f"{path}: labels must be integers, got {got}; the file is damaged or not a dataset file")


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
    data, labels = np.asarray(d[b"data"]), integer_labels(d[label_key], path)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
        raise AutoSNNError(f"{path}: expected uint8 data [N, 3072] and N labels, got {data.dtype} {data.shape} and "
                           f"{labels.shape} labels; the file is damaged, extract the archive again")
    return data.reshape(-1, 3, 32, 32), labels


def load_static(name: str, root: Path, allow_download: bool, sources: dict, log=None):
    """((train x, train y), (test x, test y)) of a static dataset: x uint8 [N, C, H, W], y int64 [N].
    name: cifar10, cifar100, svhn or tinyimagenet."""
    if name == "svhn":
        return _load_svhn(root, allow_download, sources, log)
    if name == "tinyimagenet":
        return _load_tinyimagenet(root)
    return _load_cifar(root, name, allow_download, sources, log)


def _load_cifar(root: Path, name: str, allow_download: bool, sources: dict, log):
    if name == "cifar10":
        archive, folder, train, test, key = ("cifar-10-python.tar.gz", "cifar-10-batches-py",
                                             [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels")
    else:
        archive, folder, train, test, key = ("cifar-100-python.tar.gz", "cifar-100-python", ["train"], ["test"],
                                             b"fine_labels")
    base = root / folder
    if not all((base / f).exists() for f in train + test):
        fetch(root / archive, allow_download, sources,
              f"{name} not found: expected {base}/{{{','.join(train + test)}}} or the archive {root / archive}", log)
        extract_tar(root / archive, root)
        if missing := [f for f in train + test if not (base / f).exists()]:
            raise AutoSNNError(f"{root / archive} did not contain {folder}/{missing}; is it the right archive?")
    parts = [[_read_cifar_batch(base / f, key) for f in files] for files in (train, test)]
    return [(np.concatenate([x for x, _ in p]), np.concatenate([y for _, y in p])) for p in parts]


def _load_svhn(root: Path, allow_download: bool, sources: dict, log):
    """SVHN .mat: X uint8 [32, 32, 3, N] (H, W, C, N), y [N, 1] in 1..10 where 10 means digit 0."""
    out = []
    for fname in ("train_32x32.mat", "test_32x32.mat"):
        path = fetch(root / "svhn" / fname, allow_download, sources,
                     f"SVHN not found: expected {root / 'svhn'}/{{train_32x32.mat,test_32x32.mat}}", log)
        try:
            import scipy.io
        except ImportError:
            raise AutoSNNError("reading SVHN's .mat files needs scipy: pip install scipy") from None
        try:
            mat = scipy.io.loadmat(path)
            x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
        except Exception as e:
            raise AutoSNNError(f"{path} is not a readable SVHN .mat file ({type(e).__name__}: {e})") from None
        y = integer_labels(y, path)
        if (x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or len(y) != x.shape[3]
                or not np.isin(y, np.arange(1, 11)).all()):
            raise AutoSNNError(f"{path}: expected uint8 X [32, 32, 3, N] and N labels in 1..10, got {x.dtype} "
                               f"{x.shape}")
        out.append((np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y % 10))
    return out


def _load_tinyimagenet(root: Path):
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
# Event-camera datasets: which recordings form each split (reading and caching them: formats/events.py)

def cifar10dvs_recordings(root: Path):
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


def gesture_recordings(root: Path):
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


