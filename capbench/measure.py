"""Measurements taken on a finished cell's model (probes, speed), added to its record afterwards."""

from __future__ import annotations

from pathlib import Path

from capbench.record import Record, RecordError
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
    try:
        record = Record.from_disk(path)
    except RecordError:
        return
    if not record.is_done:
        return
    data = record.to_dict()
    if needs_probes(spec, data):
        from capbench.probing.runner_hook import probe_record

        record.probes = probe_record(data, spec, ctx)
    if needs_speed(spec, data):
        from capbench.speed.runner_hook import speed_record

        record.speed = speed_record(data, spec, ctx)
    if record.to_dict() != data:
        record.to_disk(path)
