"""The search's history files in a run folder: search.json (every evaluated architecture, the
search's settings) and pareto.csv (the accuracy-spikes front), written after every generation."""
from __future__ import annotations

import json
from pathlib import Path

from files import AutoSNNError, csv_text, read_json
from pareto import pareto_front
from plumbing.schema import check_search_doc


def write_history(run_dir: Path, search, atomic_write, run_id: str | None = None) -> None:
    """search.json (every evaluated architecture, the search's settings and the run id of its run folder)
    and pareto.csv (the accuracy-spikes front). search: evolve.Search; atomic_write(path, text) writes one file."""
    records = search.history
    cfg = search.cfg
    doc = {"run_id": run_id, "lam": cfg.lam, "spike_norm": search.spike_norm, "algorithm": cfg.search_algo,
           "objectives": cfg.objectives, "pick": cfg.pick, "generations": search.generation,
           "first_generation": 1, "history": records}
    atomic_write(run_dir / "search.json", json.dumps(doc, indent=1))
    fields = ["generation", "arch", "acc", "spikes", "neuron_spikes", "fitness", "sops", "energy_uj"]
    atomic_write(run_dir / "pareto.csv", csv_text(fields, pareto_front(records)))


def load_history(run_dir: Path) -> dict:
    """search.json of a run folder, checked (plumbing/schema.py). Generations are numbered from 1
    ("first_generation": 1); a file without that key or without "run_id" was made by an older version
    and is refused."""
    path = Path(run_dir) / "search.json"
    if not path.is_file():
        raise AutoSNNError(f"{path} not found: point at a run folder whose search stage has run")
    doc = read_json(path)
    check_search_doc(doc, path)
    if not doc["history"]:
        raise AutoSNNError(f"{path} holds no evaluated architecture")
    if doc.get("first_generation") != 1 or "run_id" not in doc:
        raise AutoSNNError(f"{path} was made by an older version of this project: rerun the search stage")
    return doc
