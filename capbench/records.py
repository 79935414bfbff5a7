"""Run records: one JSON file per grid cell, written atomically; a run directory is a record store."""

from __future__ import annotations

import time
from pathlib import Path

from capbench import leases
from capbench.errors import CapbenchError
from capbench.jsonio import (  # noqa: F401 (re-exported: the store's writers)
    atomic_write_bytes,
    atomic_write_text,
    dumps_json,
    read_json,
    write_json,
)
from capbench.record import SCHEMA_VERSION, Record, RecordError, record_problem  # noqa: F401 (re-exported)

RECORDS_DIR = "records"
CHECKPOINTS_DIR = ".checkpoints"  # training checkpoints of running cells (capbench.checkpoint)


def record_path(out_dir: Path, cell_id: str) -> Path:
    return Path(out_dir) / RECORDS_DIR / f"{cell_id}.json"


def read_record(path: Path) -> dict | None:
    return read_json(path)


def write_record(path: Path, record: dict | Record) -> bool:
    """Write a cell's record (`Record.to_disk`); False when that would replace a "done" record with a
    "failed" one."""
    return (record if isinstance(record, Record) else Record.from_dict(record)).to_disk(path)


# Files of a cell in records/ besides <cell_id>.json (capbench.predictions.SUFFIX), for temp-file owners.
CELL_FILE_SUFFIXES = (".predictions.npz", ".json", ".pt")  # .pt: its training checkpoint (.checkpoints/)


def parse_temp_name(name: str) -> tuple[str, str | None] | None:
    """(target file name, writer tag or None) of a temp file `.<target>.<writer>.<random>.tmp`; None if the
    name is not a temp file's. Temp files of older capbench versions (no writer tag) give writer None."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return None
    parts = name[1 : -len(".tmp")].rsplit(".", 2)
    if len(parts) == 3 and "-" in parts[1] and parts[1].split("-", 1)[0].isdigit():
        return parts[0], parts[1]
    return name[1 : -len(".tmp")].rsplit(".", 1)[0], None


def _cell_of(target: str) -> str | None:
    for suffix in CELL_FILE_SUFFIXES:
        if target.endswith(suffix):
            return target[: -len(suffix)]
    return None


def temp_file_abandoned(
    out_dir: Path, tmp: Path, now: float | None = None, stale_after: float = leases.STALE_SECONDS
) -> bool:
    """Whether a temp file in records/ can be deleted: its cell's lease is stale, or there is no lease and
    its writer is known dead (same host) or the file is older than `stale_after`. A temp file of a cell
    whose lease is held is kept: its writer may be about to rename it into place."""
    parsed = parse_temp_name(tmp.name)
    if parsed is None:
        return False
    target, writer = parsed
    now = time.time() if now is None else now
    cell = _cell_of(target)
    if cell is not None:
        state, _ = leases.lease_state(leases.lease_path(out_dir, cell), now, stale_after)
        if state != "absent":
            return state == "stale"
    if writer is not None and leases.writer_alive(writer) is False:
        return True
    try:
        return now - tmp.stat().st_mtime > stale_after
    except FileNotFoundError:
        return False


def remove_stale_temp_files(out_dir: Path, now: float | None = None, stale_after: float | None = None) -> int:
    """Delete the temp files of records/ and .checkpoints/ that no live writer will finish
    (`temp_file_abandoned`): a process killed while writing a checkpoint leaves hundreds of MB."""
    stale_after = leases.STALE_SECONDS if stale_after is None else stale_after
    removed = 0
    out_dir = Path(out_dir)
    temps = [*(out_dir / RECORDS_DIR).glob(".*.tmp"), *(out_dir / CHECKPOINTS_DIR).glob(".*.tmp")]
    for tmp in temps:
        if temp_file_abandoned(out_dir, tmp, now, stale_after):
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


def prepare_run_dir(out_dir: Path, now: float | None = None, stale_after: float | None = None) -> None:
    """Before running into `out_dir`: drop abandoned temp files (never one a live worker is writing: see
    `temp_file_abandoned`), refuse records of an old schema."""
    remove_stale_temp_files(out_dir, now, stale_after)
    require_current_schema(out_dir)


def _read_checked(path: Path) -> tuple[dict | None, str | None]:
    try:
        return Record.from_disk(path).to_dict(), None
    except RecordError as exc:
        return None, str(exc)


def load_records(*run_dirs: Path, skip_bad: bool = False, bad: list | None = None) -> list[dict]:
    """Every record under the given run directories (or record directories), in a stable order.

    A file that does not parse or lacks the fields a summary needs is an error naming every such file
    (CapbenchError, one line) unless `skip_bad`; then each is appended to `bad` as "path: problem".
    """
    found, problems = [], []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        folder = run_dir / RECORDS_DIR if (run_dir / RECORDS_DIR).is_dir() else run_dir
        for path in sorted(folder.glob("*.json")):
            record, problem = _read_checked(path)
            if problem:
                problems.append(f"{path}: {problem}")
            else:
                found.append(record)
    if problems and not skip_bad:
        raise CapbenchError(
            f"{len(problems)} bad record file{'s' if len(problems) > 1 else ''}: {'; '.join(problems)}; "
            "move them out of the run directory, rerun their cells, or pass --skip-bad-records"
        )
    if bad is not None:
        bad.extend(problems)
    return found
