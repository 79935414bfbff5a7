"""Measurements taken on a finished cell's model (probes, speed), added to its record afterwards."""

from __future__ import annotations

from pathlib import Path

from capbench import records
from capbench.spec import DENSE


def measure_after_cell(spec, path: Path, ctx, fresh: bool) -> None:
    """Add the probe and speed results the spec asks for and the record lacks; finished work is not redone."""
    if spec.method == DENSE and not spec.probes:
        return
    record = records.read_record(path)
    if record is None or record.get("status") != "done":
        return
    changed = False
    if spec.probes and set(record.get("probes", {}).get("tasks", {})) != set(spec.probes):
        from capbench.probing.runner_hook import probe_record

        record["probes"] = probe_record(record, spec, ctx)
        changed = True
    if spec.speed and "speed" not in record and spec.method != DENSE:
        from capbench.speed.runner_hook import speed_record

        record["speed"] = speed_record(record, spec, ctx)
        changed = True
    if changed:
        records.write_json(path, record)
