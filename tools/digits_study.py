"""Does the search help? The study behind the README's section of that name, on real handwritten digits.

    pip install scikit-learn                            # for this tool only (load_digits); never a runtime need
    python3 tools/digits_study.py --out study          # the data, the pipeline, fidelity, search comparison
    python3 tools/digits_study.py --out study --npz-only    # only write study/digits.npz

1. scikit-learn's `load_digits` (1,797 real 8 x 8 handwritten digits, 16 grey levels, from the UCI
   optical-recognition set) becomes study/digits.npz for `--dataset npz:PATH`: pixels 0..16 scaled to
   0..255, each pixel repeated 4 x 4 (nearest-neighbour upscaling: no pixel is invented) to the 32 x 32
   input of the network's static stem, and the grey channel repeated 3 times, since the stem takes 3 x 32
   x 32 images (autosnn.STEMS). Test set: 20% of each class (360 images, seeded); the other 1,437 train,
   in a seeded random order, so D_val (the last 20% of them, 288) holds every class. hflip = 0: a mirrored
   digit is not the same digit, so the training flip is off (the 4-pixel random crop stays: one source pixel).
2. The pipeline's super-network (`train.py --stage supernet`), its fixed paths watched on D_val every epoch.
3. `bench.py --fidelity`: N architectures retrained stand-alone, the super-network's ranking against theirs.
4. `bench.py --search-quality`: evolution, random and pareto search on that super-network over 3 seeds.

Every step is the command a user would type (printed, run as a subprocess, resumable: rerun this tool to
continue), and each one's wall time and CPU time (user + sys of the child processes) plus the load
average are written to study/cost.json. The options below change the budget; the defaults are the
README's study.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
UPSCALE = 4              # 8 x 8 -> 32 x 32
TEST_FRACTION = 0.2


def make_npz(path: Path, seed: int = 0) -> dict:
    """Write the digits as an npz for --dataset npz:PATH (see the module docstring). Returns counts."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("this tool needs scikit-learn for load_digits: pip install scikit-learn") from None
    d = load_digits()
    grey = np.round(d.images * (255 / 16)).astype(np.uint8)                       # [1797, 8, 8]
    big = grey.repeat(UPSCALE, axis=1).repeat(UPSCALE, axis=2)                     # [1797, 32, 32]
    x = np.repeat(big[:, :, :, None], 3, axis=3)                                   # [1797, 32, 32, 3]
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for k in range(10):                                  # 20% of every class
        idx = np.flatnonzero(y == k)
        test[rng.choice(idx, int(round(len(idx) * TEST_FRACTION)), replace=False)] = True
    train_idx = rng.permutation(np.flatnonzero(~test))
    test_idx = np.flatnonzero(test)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, x=x[train_idx], y=y[train_idx], x_test=x[test_idx], y_test=y[test_idx],
                        hflip=np.uint8(0))
    os.replace(tmp, path)
    return {"train": len(train_idx), "test": len(test_idx)}
