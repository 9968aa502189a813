"""The measurement harness behind bench.py: timing helpers (measure) and the comparison beside the
original AutoSNN code (original)."""
