"""Declared leaderboard tables: each one a pivot (group and aggregate) of the records frame (frame.py).

A `Table` keeps some frame rows (`where`), groups them by `keys` (one table row) and, when `spread` is set, by
that column too (one cell per key, e.g. per sparsity); `aggregate(group)` turns a group of records into raw
numbers, which go to the leaderboard JSON (`summary["tables"][name]`) as they are. `lead`, `cells` and `tail`
are `Col`s that show those numbers in markdown (see `render_table`). `TABLES` lists the tables in page order;
`register_table` adds one (a new leaderboard column: `frame.register_column` + a table that shows it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from capbench.report.markdown import markdown_table


@dataclass(frozen=True)
class Col:
    """One displayed column: `show(row)` of a JSON row; `{label}` in the header is the spread key's label.
    `when(rows)`: whether a table of these rows shows the column (default: always)."""

    header: str
    show: Callable[[dict], str]
    when: Callable[[list[dict]], bool] | None = None
    align: str = "left"


def varies(field: str) -> Callable[[list[dict]], bool]:
    """A `Col.when`: show the column when the rows do not all agree on `field`."""
    return lambda rows: len({json.dumps(r.get(field), default=str) for r in rows}) > 1


@dataclass(frozen=True)
class Table:
    name: str
    title: str  # markdown heading; "{task}", "{metric}", "{split}" are filled in for per-task tables
    keys: tuple[str, ...]  # frame columns naming one table row
    aggregate: Callable[[pd.DataFrame], dict]  # a group of frame rows -> raw numbers (JSON)
    lead: tuple[Col, ...]
    cells: tuple[Col, ...] = ()  # shown once per spread key
    tail: tuple[Col, ...] = ()
    spread: str | None = None  # frame column spread across the table
    spread_label: Callable[[Any], str] = str
    spread_order: Callable[[Any], Any] = lambda key: key
    row_aggregate: Callable[[pd.DataFrame], dict] | None = None  # over a whole table row, for `tail`
    where: Callable[[pd.DataFrame], pd.Series] | None = None
    present: Callable[[pd.DataFrame], bool] = lambda frame: True  # whether the page shows the table
    per_task: bool = False  # one markdown table per task (then "task" must be the first key)
    omit_empty_tasks: bool = False  # per task: leave out a task without rows (title included)
    split_by: str | None = None  # one "### value" sub-table per value of this field
    source: str = "records"  # the frame the table pivots: "records" or "reported" (see summary.py)
    order: Callable[[dict], Any] | None = None  # sort key of JSON rows (default: keys, spread)
    extra_rows: Callable[[pd.DataFrame, list[dict]], list[dict]] | None = None
    missing: str = "–"  # a cell without records
    empty: str | Callable[[pd.DataFrame], str] = ""  # the body when no row is left (or its maker)
    intro: Callable[[pd.DataFrame, pd.DataFrame], str] | None = None  # (frame, kept rows) -> text
    outro: Callable[[pd.DataFrame, pd.DataFrame], str] | None = None
    # per-task tables: (task, the task's JSON rows, its summary["tasks"] entry) -> text above the table
    task_note: Callable[[str, list[dict], dict], str] | None = None


TABLES: list[Table] = []

# A table with one column per sparsity, headed "s=0.9" (the Table fields spread, spread_label, spread_order).
BY_SPARSITY_KEY = dict(spread="sparsity_key", spread_label=lambda key: f"s={key}", spread_order=float)


def register_table(table: Table, before: str | None = None) -> Table:
    """Add (or replace, by name) a table; it is rendered before the table named `before`, else last."""
    names = [t.name for t in TABLES]
    if table.name in names:
        TABLES[names.index(table.name)] = table
    elif before in names:
        TABLES.insert(names.index(before), table)
    else:
        TABLES.append(table)
    return table


def get_table(name: str) -> Table:
    for table in TABLES:
        if table.name == name:
            return table
    raise KeyError(f"unknown table {name!r}; known: {', '.join(t.name for t in TABLES)}")


def plain(value):
    """JSON-ready: numpy scalars -> Python, NaN -> None, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def kept(table: Table, frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty or table.where is None:
        return frame
    return frame[table.where(frame)]


def table_rows(table: Table, frame: pd.DataFrame) -> list[dict]:
    """The table's raw rows (what the JSON holds): keys, spread key and the aggregate of each group."""
    sub = kept(table, frame)
    keys = [*table.keys, *([table.spread] if table.spread else [])]
    rows: list[dict] = []
    if not sub.empty:
        for values, group in sub.groupby(keys, sort=False, dropna=False):
            rows.append({**dict(zip(keys, values, strict=True)), **table.aggregate(group)})
        if table.row_aggregate is not None:
            whole = {
                values: table.row_aggregate(group)
                for values, group in sub.groupby(list(table.keys), sort=False, dropna=False)
            }
            for row in rows:
                row.update(whole[tuple(row[k] for k in table.keys)])
    if table.extra_rows is not None:
        rows = table.extra_rows(sub, rows)
    rows.sort(key=table.order or (lambda row: tuple(row[k] for k in keys)))
    return [plain(row) for row in rows]


def table_json(table: Table, frame: pd.DataFrame) -> dict:
    """What the leaderboard JSON holds of a table: the fields naming a row (`keys`, then the spread
    field) and its raw `rows`, so `capbench compare` can match rows and gate on any other field."""
    keys = [*table.keys, *([table.spread] if table.spread else [])]
    return {"keys": keys, "rows": table_rows(table, frame)}


def _shown(cols: tuple[Col, ...], rows: list[dict]) -> list[Col]:
    return [c for c in cols if c.when is None or c.when(rows)]


def render_table(table: Table, rows: list[dict]) -> str:
    """The markdown of `rows` (JSON rows of `table`): one line per distinct keys, spread keys as columns."""
    spread = sorted({r[table.spread] for r in rows}, key=table.spread_order) if table.spread else []
    lead, cells, tail = _shown(table.lead, rows), list(table.cells), _shown(table.tail, rows)
    lines: dict[tuple, dict] = {}
    for row in rows:
        line = lines.setdefault(tuple(row[k] for k in table.keys), {"first": row, "cells": {}})
        if table.spread:
            line["cells"][row[table.spread]] = row
    header = [c.header for c in lead]
    header += [c.header.format(label=table.spread_label(k)) for k in spread for c in cells]
    header += [c.header for c in tail]
    aligns = [c.align for c in lead] + [c.align for _ in spread for c in cells] + [c.align for c in tail]
    body = []
    for line in lines.values():
        first, by_key = line["first"], line["cells"]
        text = [c.show(first) for c in lead]
        for key in spread:
            text += [c.show(by_key[key]) if key in by_key else table.missing for c in cells]
        body.append(text + [c.show(first) for c in tail])
    return markdown_table(header, body, aligns)


def task_section(table: Table, task: str, rows: list[dict], info: dict) -> list[str]:
    """A per-task table's page lines for one task: title, the table's `task_note` (if any text), table.
    `info`: the task's summary["tasks"] entry."""
    title = table.title.format(task=task, metric=info.get("metric"), split=info.get("split"))
    mine = [r for r in rows if r["task"] == task]
    if not mine and table.omit_empty_tasks:
        return []
    note = table.task_note(task, mine, info) if table.task_note else ""
    return ["", title, *(["", note] if note else []), "", render_table(table, mine)]


def body(table: Table, frame: pd.DataFrame, rows: list[dict]) -> str:
    """A table's text under its title: intro, the table and outro, or `empty` without rows."""
    if not rows:
        return table.empty(frame) if callable(table.empty) else table.empty
    sub = kept(table, frame)
    if table.split_by:
        parts = [
            f"### {value}\n\n" + render_table(table, [r for r in rows if r[table.split_by] == value])
            for value in sorted({r[table.split_by] for r in rows})
        ]
        text = "\n\n".join(parts)
    else:
        text = render_table(table, rows)
    parts = [table.intro(frame, sub) if table.intro else None, text]
    parts.append(table.outro(frame, sub) if table.outro else None)
    return "\n\n".join(p for p in parts if p)


def section(table: Table, frame: pd.DataFrame, rows: list[dict]) -> list[str]:
    """A table's page lines: its title and body."""
    return ["", f"{table.title}\n\n{body(table, frame, rows)}".rstrip()]


def render_records(name: str, records: list) -> str:
    """One table's body straight from records (for callers outside the leaderboard page)."""
    from capbench.report.frame import records_frame

    table = get_table(name)
    frame = records_frame(records)
    return body(table, frame, table_rows(table, frame))
