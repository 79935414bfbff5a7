"""`capbench migrate-records`: bring records written by older capbench versions to the current schema.

Schema 1 named a cell's data by the directory path it was read from, so the same command run from
another checkout could not find its finished cells. Schema 2 names it by the content hash of the split
files (capbench.data.identity). Migrating hashes the files the record was made from, so a record is
only relabelled when those files are still there (or at `--data-dir`, if they moved).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from capbench import records
from capbench.data.identity import data_identity
from capbench.data.sources import DataSource, detect_source
from capbench.errors import CapbenchError
from capbench.spec import CellSpec
from capbench.tasks import get_task


def _source_of(record: dict, data_dir: str | None) -> DataSource:
    if data_dir:
        return detect_source(data_dir)
    legacy = record["spec"]["data"]
    if legacy["kind"] != "hub" and not Path(legacy["root"]).is_dir():
        raise CapbenchError(
            f"{record['cell_id']}: its data directory {legacy['root']} is gone; "
            "pass --data-dir with the same GLUE files"
        )
    return DataSource(legacy["kind"], legacy.get("root", ""))


def migrate_record(record: dict, data_dir: str | None = None) -> dict | None:
    """The schema-2 version of a schema-1 record; None when it is already current."""
    spec = record["spec"]
    if "root" not in spec["data"]:
        return None
    source = _source_of(record, data_dir)
    new_spec = CellSpec(
        **{
            **spec,
            "probes": tuple(spec.get("probes", ())),
            "data": data_identity(source, get_task(spec["task"])),
        }
    )
    return {
        **record,
        "schema_version": records.SCHEMA_VERSION,
        "spec": new_spec.to_dict(),
        "spec_hash": new_spec.digest,
        "cell_id": new_spec.cell_id,
        "data": {"source": spec["data"], **record.get("data", {})},
    }


def migrate_run_dir(run_dir: Path, data_dir: str | None = None) -> tuple[int, int]:
    """Rewrite each old record under its new cell id, moving its saved model along; returns (migrated, current)."""
    folder = Path(run_dir) / records.RECORDS_DIR
    if not folder.is_dir():
        raise CapbenchError(f"{run_dir}: no {records.RECORDS_DIR}/ folder; pass a capbench run directory")
    migrated = current = 0
    for path in sorted(folder.glob("*.json")):
        record = records.read_record(path)
        if record is None:
            raise CapbenchError(f"{path}: not a readable JSON record; move it out of the run directory")
        new = migrate_record(record, data_dir)
        if new is None:
            current += 1
            continue
        # New record, then its model, then the old record: an interrupted migration reruns cleanly.
        models = Path(run_dir) / "models"
        old_model, new_model = models / record["cell_id"], models / new["cell_id"]
        if old_model.is_dir() or new_model.is_dir():
            new["model_dir"] = str(new_model)
        records.write_json(records.record_path(run_dir, new["cell_id"]), new)
        if old_model.is_dir() and not new_model.exists():
            shutil.move(str(old_model), str(new_model))
        if new["cell_id"] != record["cell_id"]:
            path.unlink()
        migrated += 1
    return migrated, current


def cmd_migrate(args) -> int:
    for run_dir in args.runs:
        migrated, current = migrate_run_dir(Path(run_dir), args.data_dir)
        print(f"{run_dir}: {migrated} records migrated, {current} already current")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "migrate-records", help="upgrade run records written by older capbench versions, in place"
    )
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--data-dir", help="where the records' GLUE files are now, if they moved")
    p.set_defaults(handler=cmd_migrate)
