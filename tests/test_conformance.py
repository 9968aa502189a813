"""Conformance with the original AutoSNN code (github nabk89/AutoSNN, commit 53b4818).

Our network and the original's, holding the same weights and fed the same batches, must produce the
same numbers in training and in eval: spikes per layer, class counts, the rate loss, every
parameter's gradient and the BN running statistics, before and after one Adam step, and in eval from
calibrated BN statistics. What is measured and how the weights are drawn: benchmarks/conformance.py.
The cases and the original's numbers: tests/data/conformance.json, written by tools/golden_original.py
(the original is never imported here; only its numbers are stored). To remake them:

    pip install --no-deps --target ~/.cache/autosnn-peer-site spikingjelly==0.0.0.0.2
    PYTHONPATH=~/.cache/autosnn-peer-site python3 tools/golden_original.py --original PATH   # PATH: a checkout of github nabk89/AutoSNN

Every case runs at the thread count the numbers were made with (a conv's weight gradient is split
among threads, and its rounding with it). Two tests per case:
  - test_matches_the_original, on any machine: spikes and class counts exact, the rest within
    benchmarks.conformance.TOLERANCE;
  - test_bit_identical_to_the_original, on the machine kind the numbers were made on (same torch,
    CPU vector instructions and model; skipped elsewhere): losses, every gradient and BN statistics
    bit for bit. The gradients became bit-identical once every sum over T adds its terms in the
    original's order; before, they differed in their last bits, which one Adam step (about
    lr * sign(g)) turned into other spikes and losses in the last three cases.
"""
import json

import pytest

from benchmarks.conformance import DATA, differences, machine, measure_ours, threads

GOLDEN = json.loads(DATA.read_text())
MEASURED = {}


def measured(name: str) -> dict:
    """Our numbers for a case, measured once per session at the goldens' thread count."""
    if name not in MEASURED:
        with threads(GOLDEN["made_with"]["threads"]):
            MEASURED[name] = measure_ours(GOLDEN["cases"][name]["case"])
    return MEASURED[name]


@pytest.mark.parametrize("name", GOLDEN["cases"])
def test_matches_the_original(name):
    assert differences(measured(name), GOLDEN["cases"][name]["golden"]) == []


@pytest.mark.parametrize("name", GOLDEN["cases"])
def test_bit_identical_to_the_original(name):
    here, made = machine(), {k: GOLDEN["made_with"][k] for k in machine()}
    if here != made:
        pytest.skip(f"bit-identical results are expected only where the goldens were made ({made}); here: {here}")
    assert differences(measured(name), GOLDEN["cases"][name]["golden"], exact=True) == []
