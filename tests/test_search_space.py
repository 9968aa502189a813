"""Tests of the search space (search_space.py): sizes, parsing and printing, sampling, errors.

Golden values are computed by hand in the comments, not by the code under test.
"""
import random

import pytest
import torch

from autosnn import SpikingNetwork
from search_space import (AUTOSNN, CANDIDATES, NAMED_ARCHS, Arch, all_archs, full_layout, get_backbone, parse_arch,
                          resolve_arch, sample_arch)


# ---------------------------------------------------------------------------------------------
# Search space
# ---------------------------------------------------------------------------------------------

def test_search_space_sizes():
    assert CANDIDATES == ("skip_connect", "SCB_k3", "SCB_k5", "SRB_k3", "SRB_k5")
    b1, b3 = get_backbone("AutoSNN_16"), get_backbone("SNN_3")
    assert b1.searched == (0, 2, 3, 5, 6) and b1.size == 3125
    assert len(b3.searched) == 8 and b3.size == 390625
    archs = list(all_archs(b1))
    assert len(archs) == len(set(archs)) == 3125
    assert all(isinstance(a, Arch) and len(a) == 5 for a in archs[:10])


def test_arch_parse_print_roundtrip():
    text = "SRB_k5-SRB_k5-skip_connect-SRB_k3-SRB_k5"
    a = parse_arch(text)
    assert str(a) == text and a == AUTOSNN and parse_arch(str(a)) == a
    assert full_layout(a, get_backbone("SNN_1")) == ["SRB_k5", "m", "SRB_k5", "skip_connect", "m",
                                                     "SRB_k3", "SRB_k5", "m"]
    assert full_layout(a, get_backbone("SNN_4"))[1] == "a"
    assert resolve_arch("AutoSNN") == AUTOSNN
    assert set(NAMED_ARCHS) >= {"AutoSNN", "AutoSNN_lam0", "AutoSNN_lam016", "AutoSNN_lam024",
                                "random_search_lam0", "random_search_lam008", "AutoSNN_ANN_space"}


def test_sample_arch_uses_the_given_rng():
    b = get_backbone("SNN_1")
    a = [sample_arch(b, random.Random(7)) for _ in range(2)]
    assert a[0] == a[1]
    rng = random.Random(0)
    counts = {c: 0 for c in CANDIDATES}
    for _ in range(2000):
        for c in sample_arch(b, rng):
            counts[c] += 1
    assert all(abs(n / 10000 - 0.2) < 0.02 for n in counts.values())


@pytest.mark.parametrize("text, words", [
    ("SRB_k5-SRB_k5-skip-SRB_k3-SRB_k5", ["'skip'", "skip_connect, SCB_k3"]),
    ("SRB_k5-SRB_k5-SRB_k3", ["3 blocks", "5 searched"]),
    ("SRB_k5-m-SRB_k5-skip_connect-SRB_k3-SRB_k5", ["'m'"]),
])
def test_arch_errors(text, words):
    with pytest.raises(ValueError) as e:
        parse_arch(text)
    assert all(w in str(e.value) for w in words)


def test_other_input_errors():
    with pytest.raises(ValueError, match="unknown backbone 'SNN_9'"):
        get_backbone("SNN_9")
    with pytest.raises(ValueError, match="T must be"):
        SpikingNetwork("SNN_1_4", T=0)
    with pytest.raises(ValueError, match="tau0 must be > 1"):
        SpikingNetwork("SNN_1_4", T=2, tau0=1.0)
    with pytest.raises(ValueError, match="unknown neuron"):
        SpikingNetwork("SNN_1_4", T=2, neuron="relu")
    with pytest.raises(ValueError, match="unsupported input shape"):
        SpikingNetwork("SNN_1_4", T=2, input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="one step"):
        SpikingNetwork("SNN_1_4", T=4, neuron="ann")
    with pytest.raises(ValueError, match="5 searched positions"):
        SpikingNetwork("SNN_1_4", arch=["SCB_k3"] * 8)
    net = SpikingNetwork("SNN_1_4", T=2, arch=AUTOSNN)
    with pytest.raises(ValueError, match=r"expected \[B, 3, 32, 32\]"):
        net(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"expected \[B, 3, 32, 32\]"):
        net(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match="not"):
        net(torch.zeros(2, 3, 32, 32), arch=["SCB_k3"] * 5)
    with pytest.raises(ValueError, match="one path"):
        SpikingNetwork("SNN_1_4", T=2)(torch.zeros(2, 3, 32, 32))
    dvs = SpikingNetwork("SNN_1_4", T=2, input_shape=(2, 2, 32, 32), arch=AUTOSNN)
    with pytest.raises(ValueError, match=r"expected \[B, 2, 2, 32, 32\]"):
        dvs(torch.zeros(1, 3, 2, 32, 32))
    with pytest.raises(ValueError, match="frames"):
        SpikingNetwork("SNN_1_4", T=2, input_shape=(4, 2, 32, 32))
