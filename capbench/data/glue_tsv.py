"""Readers for the classic GLUE `glue_data/` TSV layout (the files the CAP and movement-pruning code read)."""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

from capbench.errors import CapbenchError
from capbench.tasks import TaskSpec


@dataclass(frozen=True)
class TsvLayout:
    directory: str
    header: bool
    n_fields: tuple  # allowed field counts per row
    columns: dict  # hub column name -> field position
    label_column: int
    split_files: dict  # hub split name -> file names to try, first found wins


def layout_of(task: TaskSpec) -> TsvLayout:
    """A task's glue_data/ layout, from the ``tsv:`` block of its YAML (the only table of it)."""
    tsv = task.tsv
    if not tsv:
        raise CapbenchError(
            f"task {task.name} has no glue_data TSV layout; add a tsv: block to its YAML (see tasks/rte.yaml)"
        )
    return TsvLayout(
        tsv["directory"],
        bool(tsv.get("header", True)),
        tuple(tsv["n_fields"]),
        dict(tsv["columns"]),
        int(tsv["label_column"]),
        {split: list(names) for split, names in tsv["split_files"].items()},
    )


def tsv_layouts() -> dict[str, TsvLayout]:
    """{hub config: layout} of every registered task that declares one."""
    from capbench.tasks import all_tasks

    return {task.config: layout_of(task) for task in all_tasks().values() if task.tsv}


def tsv_split_path(root: Path, task: TaskSpec, split: str) -> Path:
    layout = layout_of(task)
    names = layout.split_files.get(split)
    if names is None:
        raise CapbenchError(f"task {task.name} has no split {split!r} in the glue_data layout")
    for name in names:
        path = root / layout.directory / name
        if path.is_file():
            return path
    raise CapbenchError(
        f"missing split {split!r} of {task.name}: expected {root / layout.directory / names[0]}; "
        "add the file or use a data directory that has it"
    )


def _parse_label(raw: str, task: TaskSpec, where: str):
    raw = raw.strip()
    if task.regression:
        try:
            return float(raw)
        except ValueError:
            raise CapbenchError(f"{where}: label {raw!r} is not a number") from None
    if raw in task.label_names:
        return task.label_names.index(raw)
    try:
        value = int(raw)
    except ValueError:
        raise CapbenchError(
            f"{where}: label {raw!r} is not one of {list(task.label_names)} or 0..{task.num_labels - 1}"
        ) from None
    if not 0 <= value < task.num_labels:
        raise CapbenchError(
            f"{where}: label {value} is outside 0..{task.num_labels - 1} for task {task.name}"
        )
    return value


def _looks_like_header(fields: list[str], layout: TsvLayout) -> bool:
    label = fields[layout.label_column].strip().lower() if len(fields) > abs(layout.label_column) else ""
    return label in {"label", "quality", "is_duplicate", "score", "gold_label"}


def read_glue_tsv(path: Path, task: TaskSpec) -> dict[str, list]:
    """Parse one GLUE TSV file into hub-schema columns; a malformed row raises a one-line CapbenchError."""
    return read_glue_tsv_lines(path, task)[0]


def read_glue_tsv_lines(path: Path, task: TaskSpec) -> tuple[dict[str, list], list[int]]:
    """`read_glue_tsv`, and the file line number (1-based) of every row it kept, for later messages."""
    layout = layout_of(task)
    columns: dict[str, list] = {name: [] for name in layout.columns}
    columns["label"] = []
    lines: list[int] = []
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        for line_number, fields in enumerate(rows, start=1):
            if line_number == 1 and _looks_like_header(fields, layout):
                continue
            where = f"{path} row {line_number}"
            if len(fields) not in layout.n_fields:
                expected = " or ".join(map(str, layout.n_fields))
                raise CapbenchError(
                    f"{where}: malformed TSV row, expected {expected} tab-separated fields, found "
                    f"{len(fields)}; fix or delete that row"
                )
            for name, position in layout.columns.items():
                columns[name].append(fields[position])
            columns["label"].append(_parse_label(fields[layout.label_column], task, where))
            lines.append(line_number)
    columns["idx"] = list(range(len(columns["label"])))
    return columns, lines
