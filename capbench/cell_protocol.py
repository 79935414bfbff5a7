"""The one cell protocol, shared by the local runner and the Ray executor.

For a cell of a grid: skip it when a finished record is there (unless `overwrite`); else claim its lease
(capbench.leases), check again, run it (the caller's `run`, capbench.runner.run_cell), turn an ordinary exception into a
`failed` record (a CapbenchError, a problem with the input, propagates and stops the grid), stamp
provenance, keep a record another worker wrote meanwhile, write the record (a failure never replaces a
finished record), run the after-cell measurements, and release the lease.

Under data parallelism (WORLD_SIZE > 1) every rank runs the cell and rank 0 claims, decides and writes;
`distributed.agree` keeps the ranks on one branch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from capbench import distributed, leases, predictions, records
from capbench.checkpoint import checkpoint_path
from capbench.errors import CapbenchError
from capbench.measure import lost_models
from capbench.record import Record


@dataclass
class CellOutcome:
    outcome: str  # "done", "failed", "skipped" (finished), "held" (another worker has it)
    attempt: int | None = None  # the lease's attempt (2+: took over a dead worker's lease)
    record: dict | None = None  # the record on disk afterwards, where this worker wrote or kept one


def is_finished(spec, out_dir: Path) -> bool:
    """A "done" record of this spec is there, and no measurement it still needs has lost its saved model
    (capbench.measure.lost_models): such a cell is trained again, since its model cannot be measured."""
    record = records.read_record(records.record_path(out_dir, spec.cell_id))
    if not (bool(record) and record.get("status") == "done" and record.get("spec_hash") == spec.digest):
        return False
    return not lost_models(spec, record)


def lost_model_note(spec, out_dir: Path) -> str:
    """Why a "done" record of this spec is run again: its lost saved models; "" when it is not so."""
    record = records.read_record(records.record_path(out_dir, spec.cell_id))
    if not (record and record.get("status") == "done" and record.get("spec_hash") == spec.digest):
        return ""
    lost = lost_models(spec, record)
    return (
        f"finished, but its saved model is gone or was replaced ({', '.join(lost)}): trained again to measure it"
        if lost
        else ""
    )


def finished_elsewhere(spec, path: Path, before: dict | None) -> dict | None:
    """The "done" record of `spec` that appeared at `path` since this worker read `before` there, or None.

    A worker that took over a lease it judged stale may run a cell while the old holder still finishes
    it; whoever writes second keeps the first one's record rather than overwrite it.
    """
    now = records.read_record(path)
    if now is None or now == before or now.get("status") != "done" or now.get("spec_hash") != spec.digest:
        return None
    return now


def _run(spec, ctx, run, fail) -> Record:
    try:
        result = run(spec, ctx)
    except CapbenchError:
        raise
    except Exception as error:  # one broken cell must not lose the rest of the grid
        record = fail(spec, error)
        tqdm.write(f"cell {spec.cell_id} failed: {record.error}")
        return record
    return result if isinstance(result, Record) else Record.from_dict(result)


def execute_cell(
    spec,
    ctx,
    *,
    run,
    fail,
    provenance: dict,
    overwrite: bool = False,
    after_cell=None,
    wait: bool = False,
    adjust=None,
    executor: dict | None = None,
) -> CellOutcome:
    """Run one cell through the protocol (module docstring); `after_cell(spec, path, ctx, fresh)`.

    `run(spec, ctx) -> Record` does the cell's work (capbench.runner.run_cell); `fail(spec, error) -> Record`
    makes the failed record of an ordinary exception (capbench.runner.failed_cell).

    `wait`: block on a cell another worker holds (Ray) instead of reporting it "held" (local runs).
    `adjust(record)` may amend a fresh done Record before it is written; `executor` ({"name", "node"})
    is stamped into the record with the lease's attempt.
    """
    main = distributed.is_main()
    path = records.record_path(ctx.out_dir, spec.cell_id)
    finished = not overwrite and distributed.agree(is_finished(spec, ctx.out_dir))
    if finished and after_cell is None:
        return CellOutcome("skipped")
    lease = leases.claim_cell(ctx.out_dir, spec.cell_id, wait=wait) if main else None
    if not distributed.agree(lease is not None):
        return CellOutcome("skipped" if finished else "held")
    attempt = lease.attempt if lease is not None else None
    try:
        before = records.read_record(path) if main else None
        if finished or (not overwrite and distributed.agree(is_finished(spec, ctx.out_dir))):
            if after_cell is not None and main:  # finished before, or by the worker that held the lease
                after_cell(spec, path, ctx, fresh=False)
            return CellOutcome("skipped", attempt)
        if main and (note := lost_model_note(spec, ctx.out_dir)):
            tqdm.write(f"cell {spec.cell_id}: {note}")
        started = time.time()
        record = _run(spec, ctx, run, fail)
        if adjust is not None and record.is_done:
            adjust(record)
        sections = {"distributed": distributed.describe()} if distributed.enabled() else {}
        if executor is not None:
            sections["executor"] = {**executor, "attempt": attempt}
        record.finish(provenance, **sections)
        if not main:
            return CellOutcome(record.status, attempt)
        kept = finished_elsewhere(spec, path, before)
        if kept is not None:
            tqdm.write(f"cell {spec.cell_id}: another worker finished it meanwhile; its record is kept")
            predictions.remove_own_if_unused(path.parent, record.predictions, kept)
            return CellOutcome("skipped", attempt, kept)
        written = record.to_disk(path)
        checkpoint_path(ctx.out_dir, spec.cell_id).unlink(missing_ok=True)  # its training is over either way
        if not written:
            tqdm.write(f"cell {spec.cell_id}: its finished record is kept, not replaced by this failure")
            return CellOutcome(record.status, attempt, records.read_record(path))
        if record.predictions:  # the predictions of the record this one replaced go with it
            predictions.remove_superseded(path.parent, spec.cell_id, record.predictions["file"], started)
        if after_cell is not None and record.is_done:
            after_cell(spec, path, ctx, fresh=True)
        return CellOutcome(record.status, attempt, records.read_record(path) or record.to_dict())
    finally:
        if lease is not None:
            lease.release()
