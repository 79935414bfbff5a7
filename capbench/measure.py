"""Measurements taken on a finished cell's model (probes, speed), added to its record afterwards."""

from __future__ import annotations

from pathlib import Path

from capbench import records
from capbench.spec import DENSE


def needs_probes(spec, record: dict) -> bool:
    return bool(spec.probes) and set(record.get("probes", {}).get("tasks", {})) != set(spec.probes)


def needs_speed(spec, record: dict) -> bool:
    return bool(spec.speed) and "speed" not in record and spec.method != DENSE


def missing_measurements(spec, record: dict) -> list[str]:
    """What `measure_after_cell` would add to this finished record, e.g. ["probes sentlen", "speed"]."""
    missing = []
    if needs_probes(spec, record):
        held = set(record.get("probes", {}).get("tasks", {}))
        lacking = [probe for probe in spec.probes if probe not in held]
        # A record holding other probes is probed again for exactly the requested set.
        missing.append(f"probes {','.join(lacking or spec.probes)}")
    if needs_speed(spec, record):
        missing.append("speed")
    return missing


def measure_after_cell(spec, path: Path, ctx, fresh: bool) -> None:
    """Add the probe and speed results the spec asks for and the record lacks; finished work is not redone."""
    if spec.method == DENSE and not spec.probes:
        return
    record = records.read_record(path)
    if record is None or record.get("status") != "done":
        return
    changed = False
    if needs_probes(spec, record):
        from capbench.probing.runner_hook import probe_record

        record["probes"] = probe_record(record, spec, ctx)
        changed = True
    if needs_speed(spec, record):
        from capbench.speed.runner_hook import speed_record

        record["speed"] = speed_record(record, spec, ctx)
        changed = True
    if changed:
        records.write_record(path, record)
