"""Run records: one JSON file per grid cell, written atomically; a run directory is a record store."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from capbench.errors import CapbenchError

SCHEMA_VERSION = 2  # 2: spec.data is the data's content hash, not its path
RECORDS_DIR = "records"


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same directory and os.replace: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def record_path(out_dir: Path, cell_id: str) -> Path:
    return Path(out_dir) / RECORDS_DIR / f"{cell_id}.json"


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def remove_stale_temp_files(out_dir: Path) -> int:
    """Temp files left by a killed process; they never hold a finished result."""
    removed = 0
    for tmp in (Path(out_dir) / RECORDS_DIR).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def require_current_schema(out_dir: Path) -> None:
    """Old records would be invisible to the resume check, so their cells would silently run again."""
    for path in sorted((Path(out_dir) / RECORDS_DIR).glob("*.json")):
        record = read_record(path)
        if record and record.get("schema_version", 1) < SCHEMA_VERSION:
            raise CapbenchError(
                f"{path} was written by an older capbench (record schema {record.get('schema_version', 1)}); "
                f"run `capbench migrate-records {out_dir}` first"
            )


def prepare_run_dir(out_dir: Path) -> None:
    """Before running into `out_dir`: drop a killed process's temp files, refuse records of an old schema."""
    remove_stale_temp_files(out_dir)
    require_current_schema(out_dir)


def load_records(*run_dirs: Path) -> list[dict]:
    """Every record under the given run directories (or record directories), in a stable order."""
    records = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        folder = run_dir / RECORDS_DIR if (run_dir / RECORDS_DIR).is_dir() else run_dir
        for path in sorted(folder.glob("*.json")):
            record = read_record(path)
            if record is not None and "spec" in record:
                records.append(record)
    return records
