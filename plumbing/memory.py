"""How much memory a run needs, estimated before it is allocated, so that an absurd size (--n-train
1e11, --backbone AutoSNN_100000, --model-width 1000000, --T 10000) is one line before the run folder
exists instead of an allocator's traceback.

    check_data(cfg, host_bytes())                    # before the data is made or loaded
    check_fits([part, ...], have, "cpu")             # after: the networks (built on the meta device) and data

Each part is (bytes, subject, purpose, fix). The figures are estimates within a factor of 2 of what the
process holds (tests/test_options.py compares each with a measurement): enough to refuse what cannot
fit, not to promise that what passes fits beside everything else on the machine.
"""
from __future__ import annotations

import os

from files import AutoSNNError


BYTES_PER_PARAMETER = 16     # float32 weight, its gradient, Adam's two moments
# Backpropagation through time keeps about 4 float32 tensors per neuron and step (input current,
# membrane, spike, BN output); measured 0.7-0.8x of this for the saved tensors of a training step.
BYTES_PER_NEURON_STEP = 16
# synthetic_images draws in float64 over the whole set: about 24 bytes per byte of the uint8 images it
# returns (measured 74 KB per 3 KB image); synthetic_events works in chunks of 256 samples, each holding
# about 32 bytes per pixel and sub-step (4 per frame) besides the uint8 frames it returns.
SYNTHETIC_IMAGE_FACTOR = 24
SYNTHETIC_EVENT_CHUNK, SYNTHETIC_EVENT_BYTES, SUBSTEPS = 256, 32, 4
SYNTHETIC_SIZE = 32          # side of the synthetic images and frames


def gib(n: float) -> str:
    return f"{n / 2**30:.3g}"


def host_bytes() -> int:
    """The machine's RAM."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def synthetic_bytes(dataset: str, n: int, T: int) -> int:
    """Peak bytes while making n samples of the synthetic dataset (data.synthetic_images/_events)."""
    side = SYNTHETIC_SIZE * SYNTHETIC_SIZE
    if dataset == "synthetic":
        return n * 3 * side * SYNTHETIC_IMAGE_FACTOR
    chunk = min(n, SYNTHETIC_EVENT_CHUNK) * (T * SUBSTEPS + 1) * side * SYNTHETIC_EVENT_BYTES
    return n * T * 2 * side + chunk


def check_data(cfg, have: int) -> None:
    """Refuse --n-train / --n-test whose synthetic data alone would not fit in `have` bytes of RAM."""
    r = cfg.run
    if r.dataset not in ("synthetic", "synthetic-dvs"):
        return                  # real datasets are as large as their files
    n_train, n_test = r.n_train or 2000, r.n_test or 500      # data.load_dataset's defaults
    need = synthetic_bytes(r.dataset, n_train, r.T) + synthetic_bytes(r.dataset, n_test, r.T)
    check_fits([(need, f"--n-train {n_train} with --n-test {n_test}", f"making the {r.dataset} data",
                 "lower --n-train or --n-test")], have, "RAM")


def held_bytes(ds) -> int:
    """Bytes the in-memory samples of a loaded dataset hold (event files are read per batch)."""
    return sum(s.images.numel() * s.images.element_size() for s in (ds.train_data, ds.test_data)
               if s.images is not None)


def activation_bytes(neurons_per_step: int, T: int, batch: int) -> int:
    """Training memory of the activations: neurons_per_step (one image, one step) x T x batch."""
    return neurons_per_step * T * batch * BYTES_PER_NEURON_STEP


def check_fits(parts: list, have: int, where: str) -> None:
    """parts: [(bytes, subject, purpose, fix)]. One line when their sum exceeds `have`, naming the
    largest part (subject, purpose, what to change)."""
    total = sum(p[0] for p in parts)
    if total <= have:
        return
    need, subject, purpose, fix = max(parts, key=lambda p: p[0])
    alone = need > have
    raise AutoSNNError(f"{subject} needs about {gib(need)} GiB for {purpose}" + (" alone" if alone else "")
                       + ("" if alone or len(parts) == 1 else f" ({gib(total)} GiB in all)")
                       + f", more than the {gib(have)} GiB of {where}; {fix}")
