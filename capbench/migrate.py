"""`capbench migrate-records`: bring records written by older capbench versions to the current schema.

Schema 1 named a cell's data by the directory path it was read from, so the same command run from
another checkout could not find its finished cells. Schema 2 names it by the content hash of the split
files (capbench.data.identity). Schema 3 adds the model's identity (capbench.model_identity: the digests
of its weight, config and tokenizer files, or a pinned hub revision) to the cell digest, so new weights
under the same `--model` name are new cells. Migrating hashes the files a record was made from, so a
record is only relabelled when those files are still there (or at `--data-dir` / `--model`, if they
moved).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from capbench import records
from capbench.data.identity import data_identity
from capbench.data.sources import DataSource, detect_source
from capbench.errors import CapbenchError
from capbench.model_identity import model_identity
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


def _model_identity_of(record: dict, model: str | None, cache: dict) -> dict:
    name = model or record["spec"]["model"]
    if name not in cache:
        try:
            cache[name] = model_identity(name)
        except CapbenchError as exc:
            raise CapbenchError(
                f"{record['cell_id']}: cannot hash its model {name} ({exc}); "
                "pass --model with the directory of the same weights"
            ) from None
    return cache[name]


def migrate_record(
    record: dict, data_dir: str | None = None, model: str | None = None, _cache: dict | None = None
) -> dict | None:
    """The current-schema version of an older record; None when it is already current.

    `model` overrides where the record's weights are found now (its spec names the model as typed).
    """
    spec = record["spec"]
    if record.get("schema_version", 1) >= records.SCHEMA_VERSION and spec.get("model_identity"):
        return None
    new = dict(spec, probes=tuple(spec.get("probes", ())))
    data = dict(record.get("data", {}))
    if "root" in spec["data"]:  # schema 1: data named by its path
        new["data"] = data_identity(_source_of(record, data_dir), get_task(spec["task"]))
        data = {"source": spec["data"], **data}
    if not spec.get("model_identity"):
        new["model_identity"] = _model_identity_of(record, model, {} if _cache is None else _cache)
    new_spec = CellSpec(**new)
    return {
        **record,
        "schema_version": records.SCHEMA_VERSION,
        "spec": new_spec.to_dict(),
        "spec_hash": new_spec.digest,
        "cell_id": new_spec.cell_id,
        "data": data,
    }


def migrate_run_dir(run_dir: Path, data_dir: str | None = None, model: str | None = None) -> tuple[int, int]:
    """Rewrite each old record under its new cell id, moving its saved model along; returns (migrated, current)."""
    folder = Path(run_dir) / records.RECORDS_DIR
    if not folder.is_dir():
        raise CapbenchError(f"{run_dir}: no {records.RECORDS_DIR}/ folder; pass a capbench run directory")
    migrated = current = 0
    identities: dict = {}
    for path in sorted(folder.glob("*.json")):
        record = records.read_record(path)
        if record is None:
            raise CapbenchError(f"{path}: not a readable JSON record; move it out of the run directory")
        new = migrate_record(record, data_dir, model, identities)
        if new is None:
            current += 1
            continue
        # New record, then its model, then the old record: an interrupted migration reruns cleanly.
        models = Path(run_dir) / "models"
        old_model, new_model = models / record["cell_id"], models / new["cell_id"]
        if old_model.is_dir() or new_model.is_dir():
            new["model_dir"] = str(new_model)
        records.write_record(records.record_path(run_dir, new["cell_id"]), new)
        if old_model.is_dir() and not new_model.exists():
            shutil.move(str(old_model), str(new_model))
        if new["cell_id"] != record["cell_id"]:
            path.unlink()
        migrated += 1
    return migrated, current


def cmd_migrate(args) -> int:
    for run_dir in args.runs:
        migrated, current = migrate_run_dir(Path(run_dir), args.data_dir, args.model)
        print(f"{run_dir}: {migrated} records migrated, {current} already current")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "migrate-records", help="upgrade run records written by older capbench versions, in place"
    )
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--data-dir", help="where the records' GLUE files are now, if they moved")
    p.add_argument(
        "--model", help="where the records' model files are now, if their --model no longer resolves to them"
    )
    p.set_defaults(handler=cmd_migrate)
