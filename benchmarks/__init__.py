"""The measurement harness behind bench.py: timing helpers (measure) and the comparison beside the
original AutoSNN code (original); and what tests/test_conformance.py and tools/golden_original.py
measure on our network and on the original's (conformance)."""
