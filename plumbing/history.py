"""The search's history files in a run folder: search.json (every evaluated architecture, the
search's settings) and pareto.csv (the accuracy-spikes front), written after every generation."""
from __future__ import annotations

import json
from pathlib import Path

from files import AutoSNNError, csv_text, read_json
from pareto import pareto_front


def write_history(run_dir: Path, search, atomic_write) -> None:
    """search.json (every evaluated architecture and the search's settings) and pareto.csv (the
    accuracy-spikes front). search: evolve.Search; atomic_write(path, text) writes one file."""
    records = search.history
    cfg = search.cfg
    doc = {"lam": cfg.lam, "spike_norm": search.spike_norm, "algorithm": cfg.search_algo,
           "objectives": cfg.objectives, "pick": cfg.pick, "generations": search.generation,
           "first_generation": 1, "history": records}
    atomic_write(run_dir / "search.json", json.dumps(doc, indent=1))
    fields = ["generation", "arch", "acc", "spikes", "neuron_spikes", "fitness", "sops", "energy_uj"]
    atomic_write(run_dir / "pareto.csv", csv_text(fields, pareto_front(records)))


def load_history(run_dir: Path) -> dict:
    """search.json of a run folder, checked. Generations are numbered from 1 ("first_generation": 1);
    a file without that key was made by an older version and is refused."""
    path = Path(run_dir) / "search.json"
    if not path.is_file():
        raise AutoSNNError(f"{path} not found: point at a run folder whose search stage has run")
    doc = read_json(path)
    h = doc.get("history") if isinstance(doc, dict) else None
    if not isinstance(h, list) or not all(isinstance(r, dict) and {"arch", "acc", "spikes", "fitness"} <= set(r)
                                          for r in h):
        raise AutoSNNError(f"{path} has no valid \"history\" list (arch, acc, spikes, fitness per record): "
                           "not a search result of this project")
    if not h:
        raise AutoSNNError(f"{path} holds no evaluated architecture")
    if doc.get("first_generation") != 1:
        raise AutoSNNError(f"{path} was made by an older version of this project: rerun the search stage")
    return doc
