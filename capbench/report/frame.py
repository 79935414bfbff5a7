"""Run records -> one tidy pandas frame, one row per record: every leaderboard table is a pivot of it.

`record_row` is the only code that reads a record's fields for the leaderboard; tables, provenance and
checks read the frame. A new column is one `register_column(name, fn)`: `fn(record)` gives the value.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

# Columns computed from a record by code outside this module: {name: fn(record) -> value}.
EXTRA_COLUMNS: dict[str, Callable[[Mapping], object]] = {}


# Columns kept as the record wrote them.
RAW_COLUMNS = ("seed", "target", "granularity")


def register_column(name: str, fn: Callable[[Mapping], object]) -> None:
    """Add a frame column computed from each record (then any table may show or aggregate it)."""
    EXTRA_COLUMNS[name] = fn


def _number(value) -> float:
    """A finite float, else NaN (missing, None, non-finite, not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return math.nan
    return float(value)


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else math.nan


def _main(record: Mapping) -> dict:
    main = record.get("main_metric") or {}
    value = main.get("value")
    undefined = None
    if record.get("status") == "done" and main and math.isnan(_number(value)):
        undefined = (
            main.get("undefined", "undefined")
            if value is None
            else f"non-finite {value} (written by a capbench that did not refuse it; rerun the cell)"
        )
    return {
        "metric": main.get("name"),
        "split": main.get("split"),
        "value": _number(value),
        "undefined": undefined,
    }


def _sparsity(record: Mapping) -> dict:
    sparsity = record.get("sparsity") or {}
    return {
        "achieved": _number(sparsity.get("linear")) if sparsity else math.nan,
        "granularity": sparsity.get("granularity"),
        "has_achieved": bool(sparsity),
    }


def _cap(spec: Mapping, record: Mapping) -> dict:
    cap = spec.get("cap") or {}
    costs = record.get("cap") or {}
    return {
        "has_cap": bool(record.get("cap")),
        "cap_modules": "+".join(cap.get("modules", [])) if cap else None,
        "cap_losses": ("+".join(n for n in ("unsup", "sup") if cap.get(n)) or "none") if cap else None,
        "cap_representation": cap.get("representation", "") if cap else None,
        "cap_temperature": f"{cap.get('temperature', '')}" if cap else None,
        "cap_bank_mb": (costs.get("bank_bytes_peak", costs.get("bank_bytes_total", 0)) or 0) / 1e6,
        "cap_extra_forward": costs.get("extra_forward_examples_total", 0) or 0,
        # {term: mean |weighted term| over the last 10% of steps}; None in records from before it was stored
        "loss_term_magnitudes": (record.get("train") or {}).get("loss_term_magnitudes") or None,
    }


def _probes(record: Mapping) -> dict:
    """Probe columns: retention against the embeddings baseline at the reference layer (mean over the valid
    probes), chance-corrected accuracy and selectivity there, the reference's own, and the floor models'.
    Records probed before that definition (no `floors`) count as `probe_outdated` and show no number."""
    probes = record.get("probes")
    done = record.get("status") == "done" and isinstance(probes, Mapping) and "retention" in probes
    empty = {"has_probes": bool(probes), "probe_retention": math.nan, "probe_outdated": False}
    if not done:
        return empty
    ret = probes["retention"]
    if "floors" not in probes or "valid" not in ret:
        return {**empty, "probe_outdated": True}
    baselines = (ret.get("reference") or {}).get("baselines") or {}
    reference_cc = [
        (b["acc_ref"] - b["chance"]) / (1 - b["chance"]) for t, b in baselines.items() if t in ret["valid"]
    ]
    return {
        "has_probes": True,
        "probe_outdated": False,
        "probe_names": ", ".join(ret["valid"]),
        "probe_excluded": "; ".join(f"{t}: {why}" for t, why in sorted(ret.get("excluded", {}).items())),
        "probe_pooling": ret.get("pooling", "mean"),
        "probe_retention": _number(ret.get("mean")),
        "probe_chance_corrected": _number(ret.get("chance_corrected")),
        "probe_selectivity": _number(ret.get("selectivity")),
        "probe_reference_chance_corrected": _mean(reference_cc),
        "probe_floors": {name: floor.get("mean") for name, floor in sorted(probes["floors"].items())},
        "probe_test_rows": ret.get("test_rows") or None,
    }


def _speed(record: Mapping) -> dict:
    """The speed measurement's headline (the largest whole-model shape) and, per batch size, its speedup
    with interval, IQR, rounds, ceiling and share of the attainable speedup; records of speed schema 1 lack
    the interval, ceiling, attainable and machine load (None, shown as "—")."""
    speed = record.get("speed")
    if not isinstance(speed, Mapping):
        speed = {}
    summary = speed.get("summary") or {}
    fraction = summary.get("fraction_of_theoretical")
    busy = summary.get("busy", speed.get("busy"))
    return {
        "has_speed": bool(speed),
        "speed_measured": _number(summary.get("measured_speedup")),
        "speed_theoretical": _number(summary.get("theoretical_speedup")),
        "speed_of_theoretical": _number(fraction),
        "speed_sparsity": _number(summary.get("sparsity")),
        "speed_format": summary.get("format", "?"),
        "speed_not_faster": bool(summary.get("sparse_not_faster")),
        "speed_token_count": str(summary.get("token_count", "?")),
        "speed_machine": _machine_line(speed.get("machine") or {}) if summary else None,
        "speed_shapes": _speed_shapes(speed, summary) if summary else None,
        "speed_ceiling": _number(summary.get("ceiling")),
        "speed_attainable": _number(summary.get("attainable_speedup")),
        "speed_of_attainable": _number(summary.get("fraction_of_attainable")),
        "speed_busy": busy if isinstance(busy, bool) else None,
        "speed_busy_reason": summary.get("busy_reason", speed.get("busy_reason")),
        "speed_inputs": _speed_inputs(speed) if summary else None,
        "speed_schema": speed.get("schema", 1) if summary else None,
    }


def _finite(value) -> float | None:
    number = _number(value)
    return None if math.isnan(number) else number


def _shape_numbers(speedup, ci, iqr, rounds, ceiling, attainable, of_attainable) -> dict:
    return {
        "speedup": _finite(speedup),
        "ci": [_finite(v) for v in ci] if isinstance(ci, list) and len(ci) == 2 else None,
        "iqr": _finite(iqr),
        "rounds": rounds,
        "ceiling": _finite(ceiling),
        "attainable": _finite(attainable),
        "of_attainable": _finite(of_attainable),
    }


def _speed_shape(row: Mapping, compacted: bool) -> dict:
    """One whole-model shape's numbers from its `speed["model"]` row (schema 1 rows lack the new ones), with
    the kernel formats the pruned model ran in at that shape (each shape's formats are calibrated at its own
    token count, so batch 1 and batch 32 may differ; None where the row does not say)."""
    from capbench.speed.formats import format_label

    pruned = (row.get("models") or {}).get("pruned") or {}
    numbers = _shape_numbers(
        pruned.get("speedup"),
        pruned.get("speedup_ci"),
        pruned.get("speedup_iqr"),
        row.get("rounds"),
        row.get("ceiling"),
        row.get("attainable_speedup"),
        row.get("fraction_of_attainable"),
    )
    formats = row.get("formats")
    numbers["format"] = format_label(formats, compacted) if isinstance(formats, Mapping) and formats else None
    return numbers


def _speed_shapes(speed: Mapping, summary: Mapping) -> dict[str, dict]:
    """{batch size (as text): numbers} of every whole-model shape; the headline shape from the summary alone
    where the record has no per-shape rows."""
    out: dict[str, dict] = {}
    for row in (speed.get("model") or {}).values():
        if isinstance(row, Mapping) and row.get("batch") is not None:
            out.setdefault(str(row["batch"]), _speed_shape(row, bool(summary.get("compacted"))))
    label = str(summary.get("token_count", ""))
    batch = label.split("x", 1)[0] if "x" in label else None
    if batch and batch not in out and summary.get("measured_speedup") is not None:
        out[batch] = _shape_numbers(
            summary.get("measured_speedup"),
            summary.get("measured_speedup_ci"),
            summary.get("measured_speedup_iqr"),
            summary.get("rounds"),
            summary.get("ceiling"),
            summary.get("attainable_speedup"),
            summary.get("fraction_of_attainable"),
        )
    return out


def _speed_inputs(speed: Mapping) -> str:
    """What the model was timed on (the record's own phrase; speed schema 1 timed random ids)."""
    inputs = speed.get("inputs")
    label = inputs.get("label") if isinstance(inputs, Mapping) else None
    return label or "random token ids (no padding)"


def _machine_line(machine: Mapping) -> str:
    from capbench.provenance import machine_line

    return machine_line(machine)


def _provenance(record: Mapping, spec: Mapping) -> dict:
    data = record.get("data") or {}
    source = data.get("source") or spec.get("data") or {}
    machine = record.get("machine") or {}
    versions = record.get("versions") or {}
    done = record.get("status") == "done"
    return {
        "model": spec.get("model"),
        "preset": spec.get("preset"),
        "data_source": "hub"
        if source.get("kind") == "hub"
        else f"{source.get('kind')}:{source.get('root') or source.get('sha256', '?')}",
        "carved_splits": tuple(
            f"{spec.get('task')}/{split}"
            for split, info in data.get("splits", {}).items()
            if done and not info.get("official", True)
        ),
        "git_commit": record.get("git_commit") or "unknown",
        "capbench_version": versions.get("capbench", "unknown"),
        "library_versions": ", ".join(f"{k} {v}" for k, v in sorted(versions.items()) if k != "capbench")
        if versions
        else None,
        "machine": _machine_line(machine) if machine else "unknown",
        "finished_at": record.get("finished_at"),
        **_compute(record),
    }


def _compute(record: Mapping) -> dict:
    """The record's wall time in seconds: the cell's (``timings.total_seconds``: loading, training, a teacher
    this process trained, evaluation) and its probes' (``probes.timings.total_seconds``); NaN when absent."""
    timings = record.get("timings") or {}
    probes = record.get("probes") or {}
    probe_timings = probes.get("timings") if isinstance(probes, Mapping) else None
    return {
        "cell_seconds": _number(timings.get("total_seconds")),
        "probe_seconds": _number((probe_timings or {}).get("total_seconds")),
    }


def _teacher(record: Mapping) -> str | None:
    """Which dense teacher the cell learned from (the dense cell: which model it is): its weights' sha256,
    or, for records from before it was kept, the machine that trained it (a teacher is cached per machine,
    so the cell's machine trained it). None for a record without a teacher (failed before one)."""
    teacher = record.get("teacher") or {}
    if teacher.get("weights_sha256"):
        return f"weights {teacher['weights_sha256'][:12]}"
    machine = record.get("machine")
    if not (teacher and machine):
        return None
    from capbench.provenance import cpu_line

    # the CPU and torch, not the thread count: the cell that trained the teacher may have used other threads
    where = machine.get("cuda_device") or cpu_line(machine)
    return f"trained on {where} with torch {machine.get('torch', '?')}, weights not recorded"


# Two trainings of one teacher recipe (its cache key: model, task, seed, data, training settings) on different
# CPUs differ by floating-point rounding only, which 800 steps amplify a little.  Measured on the default
# preset: the sst2 seed-0 teacher retrained on an Intel Xeon against the one from a Zen 5 EPYC gave the same
# class on all 872 validation rows, logits within 2.7e-5, final loss 0.40274298 vs 0.40274292; the mnli seed-0
# one gave the same class on all 2,000 validation_matched rows and 99.8% of validation_mismatched, mean
# |logit difference| 5e-4, final loss 0.43814078 vs 0.43806755 (1.7e-4 relative).  Two teachers of one recipe
# whose final loss terms agree within RETRAINED_LOSS_RTOL are that teacher retrained; another seed moves the last
# batch's loss by 20% (0.438 vs 0.536 on mnli), and any other change to training by far more than this.
RETRAINED_LOSS_RTOL = 1e-3


def teacher_fingerprint(record: Mapping) -> dict | None:
    """Which dense teacher run the cell learned from, for pairing two cells: ``{"weights": the saved weights'
    sha256 prefix or None, "run": the teacher training's wall seconds and final loss terms or None, "key": the
    teacher's recipe (its cache key) or None, "steps": its optimizer steps or None, "loss": {term: final
    value}}`` (the dense cell: the run that produced it). Two runs of the same recipe differ in weights and
    run; records from before either was kept give None for both. None for a record without a teacher."""
    teacher = record.get("teacher") or {}
    if not teacher:
        return None
    training = teacher.get("training") or {}
    loss = training.get("final_loss_terms") or {}
    run = None
    if isinstance(training.get("seconds"), int | float) and loss:
        run = f"{float(training['seconds']):.6f}s " + " ".join(f"{k}={loss[k]!r}" for k in sorted(loss))
    return {
        "weights": teacher.get("weights_sha256"),
        "run": run,
        "key": teacher.get("key"),
        "steps": training.get("steps"),
        "loss": {k: float(v) for k, v in loss.items() if isinstance(v, int | float)},
    }


def same_teacher(a: Mapping | None, b: Mapping | None) -> bool | None:
    """Whether two ``teacher_fingerprint``s name the very same teacher: by the weights' hash where both have
    one, else by the training run where both have one; None when the records cannot tell (older records)."""
    if not a or not b:
        return None
    for key in ("weights", "run"):
        if a.get(key) and b.get(key):
            return a[key] == b[key]
    return None


def _retrained(a: Mapping, b: Mapping) -> bool:
    """Whether two fingerprints are one recipe trained twice: the same key and steps, and every final loss
    term equal within ``RETRAINED_LOSS_RTOL`` (relative)."""
    if not (a.get("key") and a.get("key") == b.get("key") and a.get("steps") == b.get("steps")):
        return False
    la, lb = a.get("loss") or {}, b.get("loss") or {}
    if not la or set(la) != set(lb):
        return False
    return all(abs(la[k] - lb[k]) <= RETRAINED_LOSS_RTOL * max(abs(la[k]), abs(lb[k])) for k in la)


def teacher_relation(a: Mapping | None, b: Mapping | None) -> str | None:
    """How the teachers of two cells relate: "same" (one teacher), "retrained" (one recipe trained twice, on
    machines whose rounding differs: ``RETRAINED_LOSS_RTOL``), "different", or None when the records cannot
    tell.  Pairs are kept for "same" and "retrained": a cell trained on another CPU differs from a rerun by
    the same rounding in its own training, which pairing already accepts."""
    same = same_teacher(a, b)
    if same is None:
        return None
    if same:
        return "same"
    return "retrained" if _retrained(a, b) else "different"


def teacher_mismatch(a: Mapping | None, b: Mapping | None) -> str | None:
    """The reason two cells cannot be paired because they learned from different teachers, else None."""
    if teacher_relation(a, b) != "different":
        return None
    left, right = (x.get("weights") or x.get("run") for x in (a, b))
    return (
        f"the two cells learned from different dense teachers ({left} vs {right}; not one recipe retrained: "
        "their recipe, steps or final loss differ)"
    )


def record_row(record: Mapping) -> dict:
    """One record's frame row: the only place the leaderboard reads a record."""
    from capbench.leaderboard import cell_config, config_digest, row_label, sparsity_key

    spec = record.get("spec") or {}
    sparsity = _number(spec.get("sparsity", 0.0))
    config = cell_config(spec)
    row = {
        "cell_id": record.get("cell_id", ""),
        "task": str(spec.get("task", "")),
        "method": str(spec.get("method", "?")),
        "row": row_label(spec) if "method" in spec else "?",
        "sparsity": sparsity,
        "sparsity_key": sparsity_key(sparsity),
        "target": spec.get("sparsity"),
        "seed": spec.get("seed"),
        "status": record.get("status", "failed"),
        "error": record.get("error", ""),
        "configuration": config,
        "config": config_digest(config),
        **_main(record),
        **_sparsity(record),
        **_cap(spec, record),
        **_probes(record),
        **_speed(record),
        **_provenance(record, spec),
        "teacher": _teacher(record),
        "teacher_run": teacher_fingerprint(record),
    }
    row.update({name: fn(record) for name, fn in EXTRA_COLUMNS.items()})
    return row


def records_frame(records: list[Mapping], run_dirs: Iterable[Path] = ()) -> pd.DataFrame:
    """One row per record, in the records' order, plus `dense_mean`: the task's dense mean main metric
    (NaN when the task has no finished dense record, or one without a value), and `chance` / `chance_rows`:
    the chance score of the record's main metric on its evaluation split and that split's rows (see
    report/chance.py; the labels accuracy and F1 need are read from predictions files under `run_dirs`)."""
    from capbench.report.chance import chances, predictions_location

    rows = [record_row(r) for r in records]
    if not rows:
        return pd.DataFrame(columns=[*record_row({}), "dense_mean", "chance", "chance_rows", "examples"])
    frame = pd.DataFrame(rows)
    for name in RAW_COLUMNS:  # as written (an int stays an int in the JSON), not coerced to float
        frame[name] = pd.Series([row[name] for row in rows], index=frame.index, dtype=object)
    dense = frame[(frame["row"] == "dense") & (frame["sparsity_key"] == "0") & (frame["status"] == "done")]
    means = {
        task: math.nan if group["value"].isna().any() else statistics.fmean(group["value"])
        for task, group in dense.groupby("task", sort=False)
    }
    frame["dense_mean"] = frame["task"].map(means).astype(float)
    found = chances(records, run_dirs)
    frame["chance"] = pd.Series([c["value"] for c in found], index=frame.index, dtype=float)
    frame["chance_rows"] = pd.Series([c["rows"] for c in found], index=frame.index, dtype=object)
    # where each record's per-example predictions are (paired comparisons read them; report/cap_effect.py)
    located = [predictions_location(r, list(run_dirs)) for r in records]
    frame["examples"] = pd.Series(located, index=frame.index, dtype=object)
    return frame
