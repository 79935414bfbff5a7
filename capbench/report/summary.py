"""Records -> the leaderboard: one frame, every declared table, provenance; the JSON and the markdown page.

Summarizing is separate from running: the same records always give byte-identical output.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from capbench import __version__
from capbench.errors import CapbenchError
from capbench.leaderboard import DIGITS
from capbench.report import builtin, papers  # noqa: F401  (they register the built-in tables)
from capbench.report.frame import records_frame
from capbench.report.tables import TABLES, section, table_json, task_section

CELL_KEYS = ("task", "row", "sparsity_key")  # the main table's keys; summary["tasks"] nests by them


def _sorted_unique(series: pd.Series) -> list:
    return sorted(set(series.dropna()))


def provenance(frame: pd.DataFrame) -> dict:
    done = frame[frame["status"] == "done"]
    stamps = _sorted_unique(frame["finished_at"])
    return {
        "models": _sorted_unique(frame["model"]),
        "data_sources": _sorted_unique(frame["data_source"]),
        "carved_splits": sorted({split for splits in done["carved_splits"] for split in splits}),
        "presets": _sorted_unique(frame["preset"]),
        "git_commits": _sorted_unique(frame["git_commit"]),
        "capbench_versions": _sorted_unique(frame["capbench_version"]),
        "library_versions": _sorted_unique(frame["library_versions"]),
        "machines": _sorted_unique(frame["machine"]),
        "date_range": [stamps[0], stamps[-1]] if stamps else [],
        "records": len(frame),
        "failed": int((frame["status"] != "done").sum()),
        "compute": compute(done),
    }


def compute(done: pd.DataFrame) -> dict:
    """What the finished records cost in wall time, in hours (2 decimals): ``cell_hours``, the sum of their
    ``timings.total_seconds`` (loading, training, a dense teacher the cell's process trained, evaluation) over
    the ``cells_timed`` records that have one, and ``probe_hours``, the sum of their probes' time over the
    ``cells_probed`` that were probed. Speed measurements are not timed in a record, so not counted."""
    cells, probes = done["cell_seconds"].dropna(), done["probe_seconds"].dropna()
    return {
        "cell_hours": round(float(cells.sum()) / 3600, 2),
        "cells_timed": int(cells.size),
        "probe_hours": round(float(probes.sum()) / 3600, 2),
        "cells_probed": int(probes.size),
    }


def compute_line(compute: dict) -> str:
    """The header's compute line (see ``compute``)."""
    line = (
        f"- compute: {compute['cell_hours']:.2f} cell-hours (the sum of {compute['cells_timed']} finished "
        "records' `timings.total_seconds`: loading, training, evaluation)"
    )
    if compute["cells_probed"]:
        n = compute["cells_probed"]
        line += f", plus {compute['probe_hours']:.2f} h of probes ({n} cell{'s' if n != 1 else ''})"
    return line


def _task_main_metric(task: str, done: pd.DataFrame) -> dict:
    """The task's main metric: from its first finished record, else its declared one."""
    of_task = done[done["task"] == task]
    if not of_task.empty:
        return {"metric": of_task.iloc[0]["metric"], "split": of_task.iloc[0]["split"]}
    from capbench.tasks import get_task

    try:
        spec = get_task(task)
    except CapbenchError:
        return {"metric": None, "split": None}
    return {"metric": spec.main_metric, "split": spec.main_eval_split}


def _task_chance(task: str, done: pd.DataFrame) -> list[dict]:
    """The chance scores of the task's main metric: [{"split", "rows", "value"}] per evaluation split and
    row count its finished records were evaluated on (value None when unknown: no labels found)."""
    of_task = done[done["task"] == task]
    found = {
        (split, rows): None if math.isnan(value) else round(value, DIGITS + 2)
        for split, rows, value in zip(
            of_task["split"], of_task["chance_rows"], of_task["chance"], strict=True
        )
        if split is not None and rows is not None
    }
    return [{"split": s, "rows": int(r), "value": v} for (s, r), v in sorted(found.items())]


def _tasks(frame: pd.DataFrame, main_rows: list[dict]) -> dict:
    """summary["tasks"]: {task: {metric, split, chance: [{split, rows, value}], rows: {row label: {sparsity
    key: cell}}}}."""
    done = frame[frame["status"] == "done"]
    tasks: dict = {}
    for row in main_rows:
        name = row["task"]
        if name not in tasks:
            tasks[name] = {**_task_main_metric(name, done), "chance": _task_chance(name, done), "rows": {}}
        task = tasks[name]
        cell = {k: v for k, v in row.items() if k not in CELL_KEYS}
        task["rows"].setdefault(row["row"], {})[row["sparsity_key"]] = cell
    return dict(sorted(tasks.items()))


def summarize(records: list[dict], frame: pd.DataFrame | None = None, run_dirs: Iterable[Path] = ()) -> dict:
    """The leaderboard's numbers: provenance, per task/row/sparsity cells (`tasks`), the configurations the
    cells were run with (`configs`, by digest), and every declared table (`tables`: {name: {"keys": the
    fields naming a row, "rows": raw numbers}}).
    `frame`: the records' frame, when the caller already built it; `run_dirs`: where the records' predictions
    files are (for the chance scores of accuracy and F1; see report/chance.py)."""
    frame = records_frame(records, run_dirs) if frame is None else frame
    tables = {t.name: table_json(t, frame) for t in TABLES if t.source == "records" and t.present(frame)}
    configs = {d: c for d, c in zip(frame["config"], frame["configuration"], strict=True)}
    return {
        "capbench_version": __version__,
        "provenance": provenance(frame),
        "tasks": _tasks(frame, tables["main_metric"]["rows"]),
        "configs": dict(sorted(configs.items())),
        "tables": tables,
    }


def add_reported(summary: dict, rows: list[dict]) -> pd.DataFrame:
    """Put the papers' numbers (capbench.reported.compare_reported) into the summary: as they are under
    "reported", and as the `reported` table's rows; returns their frame (for `render_markdown`)."""
    summary["reported"] = rows
    frame = papers.reported_frame(rows)
    if rows:
        summary.setdefault("tables", {})["reported"] = table_json(papers.REPORTED, frame)
    return frame


def header_lines(prov: dict, command: str | None) -> list[str]:
    bad = f", {prov['bad_records']} unreadable or malformed skipped)" if prov.get("bad_records") else ")"
    lines = [
        "# capbench leaderboard",
        "",
        f"- model: {', '.join(prov['models'])}",
        f"- data: {', '.join(prov['data_sources'])}",
        f"- carved (non-official) splits: {', '.join(prov['carved_splits']) or 'none, all splits official'}",
        f"- preset: {', '.join(prov['presets'])}",
        f"- records: {prov['records']} ({prov['failed']} failed" + bad,
        f"- capbench {', '.join(prov['capbench_versions'])}, git {', '.join(prov['git_commits'])}",
        f"- runs: {' to '.join(prov['date_range']) if prov['date_range'] else 'unknown'}",
        f"- machine: {'; '.join(prov['machines'])}",
        *([compute_line(prov["compute"])] if prov.get("compute") else []),
    ]
    return lines + ([f"- regenerate: `{command}`"] if command else [])


def render_markdown(
    summary: dict,
    command: str | None = None,
    extra_sections: list[str] | None = None,
    frames: dict[str, pd.DataFrame] | None = None,
) -> str:
    """The page: provenance header, per task its per-task tables, then (given `frames`, the records' and
    the reported rows' frames by table source, which their notes read) the other tables the summary holds,
    then `extra_sections`."""
    lines = header_lines(summary["provenance"], command)
    tables = summary.get("tables", {})
    per_task = [t for t in TABLES if t.per_task and t.name in tables]
    for task, info in summary["tasks"].items():
        for table in per_task:
            lines += task_section(table, task, tables[table.name]["rows"], info)
    for table in TABLES:
        if not table.per_task and table.name in tables and table.source in (frames or {}):
            lines += section(table, frames[table.source], tables[table.name]["rows"])
    for extra in extra_sections or []:
        lines += ["", extra.rstrip()]
    return "\n".join(lines) + "\n"
