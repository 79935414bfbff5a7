"""Measurements taken on a finished cell's model (probes, speed), added to its record afterwards.

Each measurement is registered in `MEASUREMENTS` (a capbench.registry.Registry): a `Measurement` says whether a
finished record needs it (`needs(spec, record)`), what `--dry-run` lists as missing (`missing(spec, record)`)
and computes its record section (`measure(record, spec, ctx) -> dict`, stored at `record[name]`).
`measure_after_cell` and `capbench run --dry-run` iterate the registry, so adding a measurement is one
registration::

    from capbench.measure import register_measurement

    register_measurement(
        "tokens",
        needs=lambda spec, record: "tokens" not in record,
        measure=lambda record, spec, ctx: {"vocab": 30522},
    )

The built-ins, `probes` (capbench.probing.runner_hook.probe_record) and `speed`
(capbench.speed.runner_hook.speed_record), load the cell's saved model through the core loader and read the
run's data source.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from capbench.record import Record, RecordError
from capbench.registry import Registry
from capbench.spec import DENSE


@dataclass(frozen=True)
class Measurement:
    """A measurement of a finished cell's model, kept in its record under `name`."""

    name: str
    needs: Callable[[object, dict], bool]  # (spec, record dict) -> whether the record lacks it
    measure: Callable[[dict, object, object], dict]  # (record dict, spec, run context) -> the record section
    missing: Callable[[object, dict], str] | None = (
        None  # (spec, record) -> the dry run's label; default: name
    )
    # (record dict) -> the saved model directories `measure` loads; a run trains the cell again when one is gone
    loads: Callable[[dict], list[str]] | None = None

    def label(self, spec, record: dict) -> str:
        return self.missing(spec, record) if self.missing is not None else self.name


def _builtins(registry: Registry) -> None:
    registry.register(
        "probes", Measurement("probes", needs_probes, _probe, missing=_missing_probes, loads=_cell_model)
    )
    registry.register(
        "speed",
        Measurement("speed", needs_speed, _speed, missing=_missing_speed, loads=_cell_and_dense_models),
    )


MEASUREMENTS: Registry[Measurement] = Registry("measurement", loader=_builtins, first=("probes", "speed"))


def register_measurement(
    name: str,
    needs: Callable[[object, dict], bool],
    measure: Callable[[dict, object, object], dict],
    missing: Callable[[object, dict], str] | None = None,
    *,
    loads: Callable[[dict], list[str]] | None = None,
    replace: bool = False,
) -> Measurement:
    """Register a measurement: every finished record it `needs` gains `record[name] = measure(...)`.

    `loads(record) -> [directory, ...]`: the saved models `measure` reads, so that a record whose model is
    gone (saved models are not kept with the records; a new machine has none) is trained again rather than
    crashing the run (see `lost_models`)."""
    return MEASUREMENTS.register(name, Measurement(name, needs, measure, missing, loads), replace=replace)


# ---------------------------------------------------------------------------------------------- built-ins


def _wanted_probes(spec) -> list[str]:
    """The result names the cell's probes give, in the spec's order."""
    from capbench.probing.runner_hook import cell_probes, result_names

    return result_names(cell_probes(spec))


def needs_probes(spec, record: dict) -> bool:
    """A cell asking for probes whose record lacks them, holds another set, or holds results from before
    retention was measured against the embeddings baseline with floor models (no `floors`)."""
    if not spec.probes:
        return False
    held = record.get("probes") or {}
    return set(held.get("tasks", {})) != set(_wanted_probes(spec)) or "floors" not in held


def _missing_probes(spec, record: dict) -> str:
    held = set((record.get("probes") or {}).get("tasks", {}))
    wanted = _wanted_probes(spec)
    lacking = [probe for probe in wanted if probe not in held]
    # A record holding other probes (or old-style results) is probed again for exactly the requested set.
    return f"probes {','.join(lacking or wanted)}"


def _probe(record: dict, spec, ctx) -> dict:
    from capbench.probing import runner_hook  # looked up per call, so tests can replace probe_record

    return runner_hook.probe_record(record, spec, ctx)


def _cell_model(record: dict) -> list[str]:
    return [record["model_dir"]] if record.get("model_dir") else []


def _cell_and_dense_models(record: dict) -> list[str]:
    return _cell_model(record) + ([record["dense_model_dir"]] if record.get("dense_model_dir") else [])


def needs_speed(spec, record: dict) -> bool:
    """A cell with speed asked for lacks it, or has one taken on a busy machine without asking the other
    workers to pause (before capbench.quiet): that one is taken again. A busy reading from inside a quiet
    window stands (the others were asked; the board marks it BUSY), so a run always ends."""
    if not spec.speed or spec.method == DENSE:
        return False
    speed = record.get("speed")
    return speed is None or (bool(speed.get("busy")) and "quiet_window" not in speed)


def _missing_speed(spec, record: dict) -> str:
    return "speed" if "speed" not in record else "speed (its last timing ran on a busy machine)"


def _speed(record: dict, spec, ctx) -> dict:
    from capbench.speed import runner_hook

    return runner_hook.speed_record(record, spec, ctx)


# ---------------------------------------------------------------------------------------------- the run


def missing_measurements(spec, record: dict) -> list[str]:
    """What `measure_after_cell` would add to this finished record, e.g. ["probes sentlen", "speed"]."""
    return [m.label(spec, record) for _, m in MEASUREMENTS.items() if m.needs(spec, record)]


def lost_models(spec, record: dict) -> list[str]:
    """The saved model directories that a measurement this finished record still needs would load, and that
    are gone (models live beside the records but are not versioned with them, so a record committed on one
    machine arrives on another without its model), or, for a dense cell, whose model is the cached teacher,
    hold other weights than the record's (a teacher retrained on another machine; a record without the
    teacher's hash cannot be checked and counts as replaced). Such a cell is not finished
    (capbench.cell_protocol): a run trains it again (a dense cell: evaluates the cached teacher), with its
    model, and then measures it. [] when nothing is lost."""
    lost: list[str] = []
    for _, m in MEASUREMENTS.items():
        if m.loads is None or not m.needs(spec, record):
            continue
        for d in m.loads(record):
            if d in lost:
                continue
            if not Path(d).is_dir() or (d == record.get("model_dir") and _is_replaced_teacher(record)):
                lost.append(d)
    return lost


def _is_replaced_teacher(record: dict) -> bool:
    """Whether the record's own model is the cached teacher and it is not the teacher the record measured."""
    from capbench.model_identity import weights_sha256

    teacher = record.get("teacher") or {}
    if record.get("model_dir") != teacher.get("path"):
        return False
    return weights_sha256(record["model_dir"]) != teacher.get("weights_sha256")


def measure_after_cell(spec, path: Path, ctx, fresh: bool) -> None:
    """Add every registered measurement the record lacks; finished work is not redone."""
    try:
        record = Record.from_disk(path)
    except RecordError:
        return
    if not record.is_done:
        return
    data = record.to_dict()
    sections = {name: m.measure(data, spec, ctx) for name, m in MEASUREMENTS.items() if m.needs(spec, data)}
    if sections and {**data, **sections} != data:
        Record.from_dict({**data, **sections}).to_disk(path)
