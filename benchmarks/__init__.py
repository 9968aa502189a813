"""The measurement harness behind bench.py: timing helpers (measure), the comparison beside the
original AutoSNN code (original), what tests/test_conformance.py and tools/golden_original.py measure
on our network and on the original's (conformance), and whether the search works: the super-network's
ranking against stand-alone training (fidelity), searches compared paired by seed (quality), and what
both share (standalone)."""
