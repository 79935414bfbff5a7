"""The chance score of each task's evaluation split (capbench.metrics.chance_score), for the records frame.

Accuracy and F1 need the labels of the split actually evaluated: they come from a record's per-example
predictions file (capbench.predictions), found beside the record in one of the run directories. The labels
are the same for every cell of a task, evaluation split and row count, so they are read once per such key.
Matthews correlation, Pearson and Spearman have chance 0 whatever the labels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from capbench.errors import CapbenchError
from capbench.metrics import LABEL_FREE_CHANCE, chance_score


def chance_key(record: Mapping) -> tuple | None:
    """(task, split, evaluation rows, metric) of a finished record's main metric; None otherwise."""
    main = record.get("main_metric") or {}
    if record.get("status") != "done" or not main.get("name") or not main.get("split"):
        return None
    split = main["split"]
    rows = ((record.get("data") or {}).get("splits") or {}).get(split, {}).get("rows")
    if rows is None:
        rows = ((record.get("predictions") or {}).get("rows") or {}).get(split)
    return (str((record.get("spec") or {}).get("task", "")), split, rows, main["name"])


def _folders(run_dirs: Iterable[Path]) -> list[Path]:
    """The records folders of run directories (a run's records/, or the directory itself)."""
    return [Path(d) / "records" if (Path(d) / "records").is_dir() else Path(d) for d in run_dirs]


def predictions_location(record: Mapping, run_dirs: Iterable[Path]) -> dict | None:
    """Where a record's per-example predictions file is: {"folder", "ref" (the record's `predictions`),
    "cell_id"} for the first of `run_dirs` holding it; None when none does."""
    ref = record.get("predictions") or {}
    for folder in _folders(run_dirs) if ref.get("file") else []:
        if (folder / ref["file"]).is_file():
            return {"folder": str(folder), "ref": dict(ref), "cell_id": record.get("cell_id")}
    return None


def eval_labels(record: Mapping, run_dirs: Iterable[Path], split: str) -> np.ndarray | None:
    """The labels of `split` from the record's predictions file in one of `run_dirs`; None when the record
    has none, it is in none of them, or its content does not match the sha256 the record holds."""
    from capbench.predictions import read_predictions

    ref = record.get("predictions") or {}
    for folder in _folders(run_dirs) if ref.get("file") else []:
        if (folder / ref["file"]).is_file():
            try:
                return read_predictions(dict(record), folder).get(split, {}).get("label")
            except CapbenchError:
                return None
    return None


def _chance_of(key: tuple, records: list[Mapping], run_dirs: list[Path]) -> dict:
    """{"value", "rows"} of one (task, split, rows, metric); value NaN when no record's labels are found."""
    _, split, rows, metric = key
    if metric in LABEL_FREE_CHANCE:
        return {"value": chance_score(metric), "rows": rows}
    for record in records:
        labels = eval_labels(record, run_dirs, split)
        if labels is not None and len(labels):
            try:
                return {"value": chance_score(metric, labels), "rows": len(labels)}
            except ValueError:
                break
    return {"value": math.nan, "rows": rows}


def chances(records: list[Mapping], run_dirs: Iterable[Path] = ()) -> list[dict]:
    """Per record (in order): {"value": chance score of its main metric on its evaluation split (NaN when
    unknown), "rows": evaluation rows}; computed once per (task, split, rows, metric)."""
    run_dirs = list(run_dirs)
    keys = [chance_key(r) for r in records]
    by_key: dict[tuple, list[Mapping]] = {}
    for key, record in zip(keys, records, strict=True):
        if key is not None:
            by_key.setdefault(key, []).append(record)
    known = {key: _chance_of(key, group, run_dirs) for key, group in by_key.items()}
    return [known.get(key, {"value": math.nan, "rows": None}) for key in keys]
