"""The one-shot table: for each one-shot cell, the main metric right after pruning (before any fine-tuning)
and after its KD fine-tuning, with the regime and the calibration cost.  Rows of different regimes carry
different labels (``leaderboard.regime_suffix``), so no mean mixes them."""

from __future__ import annotations

import statistics
from collections.abc import Mapping

import pandas as pd

from capbench.leaderboard import DIGITS
from capbench.report.frame import register_column
from capbench.report.tables import BY_SPARSITY_KEY, Col, Table


def _after_pruning(record: Mapping):
    oneshot = record.get("oneshot") or {}
    value = ((oneshot.get("after_pruning") or {}).get("main_metric") or {}).get("value")
    return float(value) if value is not None else None


def _calibration(record: Mapping):
    calibration = (record.get("oneshot") or {}).get("calibration") or {}
    return (
        {k: calibration.get(k) for k in ("rows", "tokens", "forward_passes", "seconds")}
        if calibration
        else None
    )


register_column("after_pruning", _after_pruning)
register_column("oneshot_regime", lambda r: (r.get("oneshot") or {}).get("regime"))
register_column("oneshot_steps", lambda r: (r.get("oneshot") or {}).get("finetune_steps"))
register_column("calibration", _calibration)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.fmean(values), DIGITS + 2) if values else None


def oneshot_cell(group: pd.DataFrame) -> dict:
    """Mean over seeds of the main metric right after pruning and after fine-tuning; calibration cost."""
    done = group[group["status"] == "done"]
    calibrations = [c for c in done["calibration"] if isinstance(c, dict)]
    return {
        "n": len(done),
        "after_pruning": _mean(done["after_pruning"]),
        "after_finetuning": _mean(done["value"]),
        "finetune_steps": done.iloc[0]["oneshot_steps"] if len(done) else None,
        "calibration_seconds": _mean(c.get("seconds") for c in calibrations),
        "calibration_forward_passes": calibrations[0].get("forward_passes") if calibrations else None,
    }


def _show(cell: dict | None) -> str:
    if cell is None or cell.get("after_pruning") is None:
        return "–"
    after = cell["after_finetuning"]
    tuned = f"{100 * after:.{DIGITS - 1}f}" if after is not None else "–"
    return f"{100 * cell['after_pruning']:.{DIGITS - 1}f} → {tuned} (n={cell['n']})"


ONESHOT = Table(
    name="oneshot",
    title="### {task}: one-shot cells, {metric} right after pruning → after fine-tuning (×100)",
    keys=("task", "row"),
    aggregate=oneshot_cell,
    lead=(Col("method", lambda row: row["row"]),),
    cells=(Col("{label}", _show),),
    **BY_SPARSITY_KEY,
    per_task=True,
    omit_empty_tasks=True,
    where=lambda f: f["status"].eq("done") & f["after_pruning"].notna(),
    present=lambda f: bool(f["after_pruning"].notna().any()),
    task_note=lambda task, rows, info: (
        "Regimes: [one-shot on fine-tuned] = the dense fine-tuned model (the KD teacher) pruned once, then "
        "fine-tuned with KD; [one-shot] = the pre-trained model pruned once, then fine-tuned. The main table "
        "shows the value after fine-tuning; one-shot magnitude on the fine-tuned model is the control row."
    ),
)
