"""AutoSNN search space: candidate blocks, macro backbones and the architecture type.

An *architecture* is the tuple of candidate-block names at the searched positions of a backbone,
written as a dash-joined string:

    >>> from search_space import AUTOSNN, parse_arch, get_backbone
    >>> str(AUTOSNN)
    'SRB_k5-SRB_k5-skip_connect-SRB_k3-SRB_k5'
    >>> get_backbone("AutoSNN_16").size            # 5 candidates ** 5 searched positions
    3125

The backbone (SNN_1 = AutoSNN_C) has 8 positions with strides [1, 2,1,1, 2,1,1, 2]; the three
stride-2 positions are fixed 2x2 max-pools and the other five (0, 2, 3, 5, 6) are searched:

    stem(C) | B(C) | MP | B(2C) | B(2C) | MP | B(4C) | B(4C) | MP | Linear(4C*4*4 -> 10K) + neuron

Variants for the design-choice study: SNN_2 adds a spiking global average pool
before the classifier, SNN_3 replaces the pools by searched stride-2 blocks (8 searched
positions, widths C,2C,2C,2C,4C,4C,4C,8C), SNN_4 down-samples by 2x2 avg-pool + neuron.

This module is plain Python (no torch) so it can be read, tested and reused on its own; its errors
are files.AutoSNNError (a ValueError).
"""
from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass

from files import AutoSNNError


# Index order matters: it is the paper's encoding (0 skip_connect ... 4 SRB_k5).
# A new candidate is one more name here: layers.make_block builds "SCB_k<k>" / "SRB_k<k>" for any odd k.
CANDIDATES = ("skip_connect", "SCB_k3", "SCB_k5", "SRB_k3", "SRB_k5")

# Fixed (non-searched) layers that can occupy a backbone position.
MAX_POOL = "m"   # 2x2 max-pool, stride 2, no neuron; its output spikes are counted again
AVG_POOL = "a"   # 2x2 avg-pool, stride 2, followed by a spiking neuron (SNN_4)


@dataclass(frozen=True)
class Position:
    """One backbone position: a searched block (kind 'search') or a fixed pool ('m' / 'a')."""
    kind: str
    channels: int          # output channels (pools keep the channel count)
    stride: int


@dataclass(frozen=True)
class Backbone:
    """A macro architecture: width C, the 8 positions, and whether a spiking GAP precedes the FC."""
    name: str
    C: int
    positions: tuple[Position, ...]
    gap: bool = False
    candidates: tuple[str, ...] = CANDIDATES

    @property
    def searched(self) -> tuple[int, ...]:
        """Indices of the searched positions, e.g. (0, 2, 3, 5, 6) for SNN_1."""
        return tuple(i for i, p in enumerate(self.positions) if p.kind == "search")

    @property
    def size(self) -> int:
        """Number of architectures: len(candidates) ** len(searched)."""
        return len(self.candidates) ** len(self.searched)


def _snn(variant: int, C: int) -> tuple[tuple[Position, ...], bool]:
    widths = (C, C, 2 * C, 2 * C, 2 * C, 4 * C, 4 * C, 4 * C)
    strides = (1, 2, 1, 1, 2, 1, 1, 2)
    if variant == 3:   # stride-2 searched blocks do the down-sampling and the channel doubling
        widths = (C, 2 * C, 2 * C, 2 * C, 4 * C, 4 * C, 4 * C, 8 * C)
        return tuple(Position("search", w, s) for w, s in zip(widths, strides)), False
    pool = AVG_POOL if variant == 4 else MAX_POOL
    return tuple(Position(pool if s == 2 else "search", w, s)
                 for w, s in zip(widths, strides)), variant == 2


BACKBONE_NAMES = ("AutoSNN_16", "AutoSNN_32", "AutoSNN_64", "AutoSNN_128",
                  "SNN_1", "SNN_2", "SNN_3", "SNN_4")


def get_backbone(name: str, candidates: tuple[str, ...] = CANDIDATES) -> Backbone:
    """Backbone by name: 'AutoSNN_<C>' (= SNN_1 at width C) or 'SNN_<k>' / 'SNN_<k>_<C>' (C=16 default)."""
    m = re.fullmatch(r"AutoSNN_(\d+)", name) or re.fullmatch(r"SNN_([1-4])(?:_(\d+))?", name)
    if m is None:
        raise AutoSNNError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONE_NAMES)} "
                         "(or SNN_<1-4>_<C>, AutoSNN_<C>)")
    if name.startswith("AutoSNN"):
        variant, C = 1, int(m.group(1))
    else:
        variant, C = int(m.group(1)), int(m.group(2) or 16)
    if C < 2 or C % 2:
        raise AutoSNNError(f"backbone width C={C} must be an even number >= 2")
    for c in candidates:
        check_candidate(c)
    positions, gap = _snn(variant, C)
    return Backbone(name, C, positions, gap, tuple(candidates))


def check_candidate(name: str) -> None:
    """Raise AutoSNNError unless `name` is a block layers.make_block can build."""
    if name != "skip_connect" and not re.fullmatch(r"S[CR]B_k[1-9]\d*", name):
        raise AutoSNNError(f"unknown candidate block {name!r}; expected skip_connect, SCB_k<odd k> or SRB_k<odd k>")
    if name != "skip_connect" and int(name.split("_k")[1]) % 2 == 0:
        raise AutoSNNError(f"candidate {name!r} needs an odd kernel size")


class Arch(tuple):
    """An architecture: candidate names at the searched positions. str() gives 'SRB_k5-...'."""

    def __str__(self) -> str:
        return "-".join(self)

    def __repr__(self) -> str:
        return f"Arch({str(self)!r})"


def parse_arch(text: str | list | tuple, backbone: Backbone | str | None = None) -> Arch:
    """Parse 'SRB_k5-SRB_k5-skip_connect-SRB_k3-SRB_k5' (or a list of names) and validate it.

    With `backbone`, the length and the candidates must fit it; without, SNN_1's are assumed.
    A leading/trailing 'm' is not accepted: pools are fixed by the backbone, not the architecture.
    """
    if backbone is None:
        backbone = get_backbone("AutoSNN_16")
    elif isinstance(backbone, str):
        backbone = get_backbone(backbone)
    tokens = [t.strip() for t in text.split("-")] if isinstance(text, str) else list(text)
    for t in tokens:
        if t not in backbone.candidates:
            raise AutoSNNError(f"bad block {t!r} in architecture {text!r}; valid blocks: "
                             f"{', '.join(backbone.candidates)}")
    n = len(backbone.searched)
    if len(tokens) != n:
        raise AutoSNNError(f"architecture {text!r} has {len(tokens)} blocks but backbone {backbone.name} "
                         f"has {n} searched positions")
    return Arch(tokens)


def sample_arch(backbone: Backbone, rng: random.Random) -> Arch:
    """One architecture uniformly at random: each searched position uniform over the candidates."""
    return Arch(rng.choice(backbone.candidates) for _ in backbone.searched)


def balanced_paths(backbone: Backbone, rng: random.Random):
    """draw() -> the next path of a balanced sequence: each block of len(candidates) consecutive paths
    uses every candidate at every searched position exactly once (a random permutation per position
    per block). The sampling of FairNAS (Chu et al., 2021, "strict fairness"); FairNAS also sums the
    block's gradients into one update, which a caller may or may not do."""
    block: list = []

    def draw() -> Arch:
        if not block:
            columns = [rng.sample(backbone.candidates, len(backbone.candidates)) for _ in backbone.searched]
            block.extend(Arch(names) for names in zip(*columns))
            block.reverse()
        return block.pop()
    return draw


def all_archs(backbone: Backbone):
    """Every architecture of the backbone, in base-len(candidates) order (first position slowest)."""
    for names in itertools.product(backbone.candidates, repeat=len(backbone.searched)):
        yield Arch(names)


def full_layout(arch: Arch, backbone: Backbone) -> list[str]:
    """The 8-position list as the paper prints it, pools included: ['SRB_k5', 'm', ...]."""
    it = iter(arch)
    return [next(it) if p.kind == "search" else p.kind for p in backbone.positions]


# Architectures reported by the original code (its search_arch/arch.py); CIFAR-10, AutoSNN_16, T=8.
AUTOSNN = parse_arch("SRB_k5-SRB_k5-skip_connect-SRB_k3-SRB_k5")        # lambda = -0.08 (main result)
NAMED_ARCHS = {
    "AutoSNN": AUTOSNN,
    "AutoSNN_lam0": parse_arch("SRB_k5-SRB_k5-SRB_k5-SCB_k5-SRB_k5"),
    "AutoSNN_lam016": parse_arch("SRB_k5-SRB_k5-skip_connect-SRB_k5-SRB_k5"),
    "AutoSNN_lam024": parse_arch("skip_connect-SRB_k5-skip_connect-SCB_k5-SRB_k5"),
    "random_search_lam0": parse_arch("SCB_k5-SCB_k5-SRB_k5-SCB_k5-SRB_k5"),
    "random_search_lam008": parse_arch("SRB_k5-SRB_k5-SRB_k3-SCB_k3-SRB_k5"),
    "AutoSNN_ANN_space": parse_arch("SRB_k5-SRB_k3-SCB_k3-SCB_k5-SRB_k5"),
}


def resolve_arch(text: str, backbone: Backbone | str | None = None) -> Arch:
    """A named architecture ('AutoSNN', see NAMED_ARCHS) or an architecture string."""
    if text in NAMED_ARCHS:
        return parse_arch(list(NAMED_ARCHS[text]), backbone)
    return parse_arch(text, backbone)
