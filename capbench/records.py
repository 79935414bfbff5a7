"""Run records: one JSON file per grid cell, written atomically; a run directory is a record store."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from capbench import leases
from capbench.errors import CapbenchError
from capbench.record import SCHEMA_VERSION, Record, RecordError, record_problem  # noqa: F401 (re-exported)

RECORDS_DIR = "records"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write via a temp file in the same directory and os.replace: readers never see half a file.

    The file gets the permissions a plain `open(path, "w")` would (0666 minus the umask), not mkstemp's
    0600, so a group sharing a store can read it. The temp file is `.<name>.<writer>.<random>.tmp`
    (writer: `leases.writer_tag()`), so a cleanup can tell whose it is (`remove_stale_temp_files`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.{leases.writer_tag()}."
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def dumps_json(data, where: str = "JSON") -> str:
    """Strict JSON text (sorted keys, 2-space indent); NaN and infinities are refused, never written.

    Raises ValueError naming `where` and the first non-finite value's key path.
    """
    try:
        return json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except ValueError:
        raise ValueError(
            f"{where}: refusing to write a non-finite number at {_non_finite_path(data)}"
        ) from None


def _non_finite_path(data, prefix: str = "") -> str:
    import math

    if isinstance(data, float) and not math.isfinite(data):
        return prefix or "<top>"
    items = (
        data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list | tuple) else ()
    )
    for key, value in items:
        found = _non_finite_path(value, f"{prefix}.{key}" if prefix else str(key))
        if found:
            return found
    return ""


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, dumps_json(data, str(path)))


def record_path(out_dir: Path, cell_id: str) -> Path:
    return Path(out_dir) / RECORDS_DIR / f"{cell_id}.json"


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_record(path: Path, record: dict) -> bool:
    """Write a cell's record, the one way records are written; False (nothing written) when that would
    replace a "done" record with a "failed" one: a failure never hides a result another attempt got.

    Read-then-write: writers of one cell are serialised by its lease (`capbench.leases`); this check is
    the last line of defence for writers without one (the Ray driver, migrate-records).
    """
    if record.get("status") != "done":
        current = read_record(path)
        if current is not None and current.get("status") == "done":
            return False
    write_json(path, record)
    return True


# Files of a cell in records/ besides <cell_id>.json (capbench.predictions.SUFFIX), for temp-file owners.
CELL_FILE_SUFFIXES = (".predictions.npz", ".json")


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
    """Delete the temp files of records/ that no live writer will finish (`temp_file_abandoned`)."""
    stale_after = leases.STALE_SECONDS if stale_after is None else stale_after
    removed = 0
    for tmp in (Path(out_dir) / RECORDS_DIR).glob(".*.tmp"):
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
