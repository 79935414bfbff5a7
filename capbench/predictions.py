"""Per-example predictions of a cell, kept beside its record so later comparisons can pair by example.

One compressed NumPy archive per cell, `<records>/<cell_id>.<sha256[:12]>.predictions.npz`, with four arrays per
evaluation split: `<split>.idx` (row id in the split actually evaluated), `<split>.label`,
`<split>.prediction` (class id, or the regression value) and `<split>.logits` (float32, rows x labels).
The record names the file and its sha256, so a swapped or edited file is detected on read.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from capbench.errors import CapbenchError
from capbench.records import atomic_write_bytes

SUFFIX = ".predictions.npz"


def write_predictions(records_dir: Path, cell_id: str, splits: dict[str, dict[str, np.ndarray]]) -> dict:
    """Write `splits[split] = {"idx", "label", "prediction", "logits"}` atomically as
    `<records_dir>/<cell_id>.<sha256[:12]>.predictions.npz`; returns the record's reference
    {"file", "sha256", "rows": {split: n}} (file relative to the records directory).

    The name carries the content hash, so two workers that both ran a cell (after a stale lease was taken
    over) never overwrite each other's file: the record that is kept names the predictions it was made with.
    """
    arrays = {}
    for split, columns in splits.items():
        for name in ("idx", "label", "prediction", "logits"):
            array = np.asarray(columns[name])
            arrays[f"{split}.{name}"] = array.astype(np.float32) if array.dtype.kind == "f" else array
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    payload = buffer.getvalue()
    sha256 = hashlib.sha256(payload).hexdigest()
    path = Path(records_dir) / f"{cell_id}.{sha256[:12]}{SUFFIX}"
    atomic_write_bytes(path, payload)
    return {
        "file": path.name,
        "sha256": sha256,
        "rows": {split: int(len(columns["label"])) for split, columns in splits.items()},
    }


def read_predictions(record: dict, records_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """The per-split arrays a record references; CapbenchError when the file is missing or its hash
    differs from the one the record holds."""
    ref = record.get("predictions")
    if not ref:
        raise CapbenchError(
            f"{record.get('cell_id')}: record holds no per-example predictions; rerun the cell"
        )
    path = Path(records_dir) / ref["file"]
    try:
        payload = path.read_bytes()
    except OSError:
        raise CapbenchError(
            f"{path}: predictions file of {record['cell_id']} is missing; rerun the cell"
        ) from None
    if hashlib.sha256(payload).hexdigest() != ref["sha256"]:
        raise CapbenchError(
            f"{path}: sha256 differs from the one in record {record['cell_id']}; rerun the cell"
        )
    with np.load(io.BytesIO(payload)) as archive:
        out: dict = {}
        for key in archive.files:
            split, name = key.rsplit(".", 1)
            out.setdefault(split, {})[name] = archive[key]
    return out


def remove_superseded(records_dir: Path, cell_id: str, keep: str | None, written_before: float) -> list[str]:
    """Delete the predictions files of `cell_id` in `records_dir` other than `keep` (a file name) whose
    mtime is before `written_before` (epoch seconds); returns the names removed.

    Called once a cell's new record is on disk, with the time its run started: the files removed are those
    of records it replaced (`--overwrite`, a retrained cell). A file written since then is left alone: it
    may be that of a worker still running the cell after a lease takeover, about to find this record and
    remove its own (`remove_own_if_unused`).
    """
    removed = []
    for path in Path(records_dir).glob(f"{cell_id}.*{SUFFIX}"):
        digest = path.name[len(cell_id) + 1 : -len(SUFFIX)]
        if path.name == keep or len(digest) != 12 or not all(c in "0123456789abcdef" for c in digest):
            continue
        try:
            if path.stat().st_mtime < written_before:
                path.unlink()
                removed.append(path.name)
        except FileNotFoundError:
            continue
    return sorted(removed)


def remove_own_if_unused(records_dir: Path, own: dict | None, kept: dict) -> bool:
    """Delete this run's predictions file (`own`, the reference `write_predictions` returned) when the
    record kept instead (`kept`, another worker's) names another file; True when removed."""
    name = (own or {}).get("file")
    if not name or name == (kept.get("predictions") or {}).get("file"):
        return False
    (Path(records_dir) / name).unlink(missing_ok=True)
    return True
