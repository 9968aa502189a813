"""What the small files of a run folder must hold when they are read back: a metrics.jsonl row and a
search.json document. A file damaged by a crash, a full disk or a hand edit gives one line naming the
file and what to do, never a traceback deeper in; a damaged metrics row is dropped (with a warning by
the caller), as a partial last line left by a kill always was.

    row, why = read_metrics_row(line)      # why: None, or what is wrong with the line (bytes)
    check_search_doc(doc, path)            # raises AutoSNNError naming path
"""
from __future__ import annotations

import json
import math

from files import AutoSNNError, python


# metrics.jsonl: the counters (positive integers) and the numbers the plots and the resume read
COUNTERS = ("epoch", "generation")
NUMBERS = ("loss", "acc", "spikes", "test_acc", "test_spikes", "test_neuron_spikes", "epoch_s", "gen_s",
           "best_fitness", "mean_acc")


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def read_metrics_row(line: bytes) -> tuple[dict | None, str | None]:
    """One line of metrics.jsonl -> (row, None), or (None, what is wrong with it)."""
    try:
        row = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not text"
    except ValueError:
        return None, "not JSON"
    if not isinstance(row, dict):
        return None, "not a JSON object"
    if not isinstance(row.get("stage"), str):
        return None, "no stage name"
    for k in COUNTERS:
        if k in row and not is_count(row[k]):
            return None, f"{k} {row[k]!r} is not an integer >= 1"
    for k in NUMBERS:
        if k in row and row[k] is not None and not is_number(row[k]):
            return None, f"{k} {row[k]!r} is not a number"
    return row, None


# search.json: every record's fields and their ranges; the optional ones are checked when present
RECORD = {"acc": (0.0, 1.0), "spikes": (0.0, math.inf), "fitness": (-math.inf, math.inf)}
RECORD_OPTIONAL = {"neuron_spikes": (0.0, math.inf), "sops": (0.0, math.inf), "energy_uj": (0.0, math.inf),
                   "ann_energy_uj": (0.0, math.inf)}


def record_problem(r) -> str | None:
    """What is wrong with one search.json record, or None."""
    if not isinstance(r, dict):
        return "is not a JSON object"
    if not isinstance(r.get("arch"), str):
        return f"has arch {r.get('arch')!r}, not an architecture string"
    if "generation" in r and not is_count(r["generation"]):
        return f"has generation {r['generation']!r}, not an integer >= 1"
    for k, (lo, hi) in [*RECORD.items(), *((k, b) for k, b in RECORD_OPTIONAL.items() if k in r)]:
        if k not in r:
            return f"lacks {k}"
        v = r[k]
        if not (is_number(v) and math.isfinite(v) and lo <= v <= hi):
            return f"has {k} {v!r}, not a finite number" + (f" in [{lo:g}, {hi:g}]" if math.isfinite(hi) else
                                                            f" >= {lo:g}" if math.isfinite(lo) else "")
    return None


def check_search_doc(doc, path, fix: str | None = None) -> None:
    """search.json's document (or a search checkpoint's history): its settings' types and every record of
    "history" (record_problem). Raises AutoSNNError naming `path`, the first bad record and `fix`."""
    fix = "it is damaged: " + (fix or f"{python()} train.py --resume on its run folder writes it again from search.pt, "
                                      "else rerun the search")
    h = doc.get("history") if isinstance(doc, dict) else None
    if not isinstance(h, list):
        raise AutoSNNError(f"{path} has no valid \"history\" list (arch, acc, spikes, fitness per record): "
                           "not a search result of this project")
    for i, r in enumerate(h):
        why = record_problem(r)
        if why is not None:
            raise AutoSNNError(f"{path}: record {i} of \"history\" {why}; {fix}")
    for k, ok in (("lam", is_number), ("spike_norm", is_number), ("pick", lambda v: isinstance(v, str)),
                  ("algorithm", lambda v: isinstance(v, str)), ("objectives", lambda v: isinstance(v, str))):
        if k in doc and not ok(doc[k]):
            raise AutoSNNError(f"{path}: \"{k}\" is {doc[k]!r}, of the wrong type; {fix}")
