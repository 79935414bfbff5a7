"""Checks on loaded rows: missing columns and labels outside the task's labels, named by file and row."""

from __future__ import annotations

from collections.abc import Callable

import datasets

from capbench.errors import CapbenchError
from capbench.tasks import TaskSpec


def validate_split(
    dataset: datasets.Dataset, task: TaskSpec, origin: str, locate: Callable[[int], str] | None = None
) -> None:
    """`locate(row)` names a row for messages ("FILE line N"); by default "ORIGIN row N", 0-based."""
    locate = locate or (lambda row: f"{origin} row {row}")
    missing = [c for c in (*task.text_fields, "label") if c not in dataset.column_names]
    if missing:
        raise CapbenchError(
            f"{origin}: missing column(s) {missing} for task {task.name}; it has {dataset.column_names}"
        )
    labels = dataset["label"]
    for row, label in enumerate(labels):
        if _bad_label(label, task):
            allowed = "a number" if task.regression else f"0..{task.num_labels - 1}"
            raise CapbenchError(
                f"{locate(row)}: label {label!r} is outside the labels of {task.name} ({allowed}); "
                "unlabelled test splits cannot be used for training or evaluation"
            )
    for field in task.text_fields:
        for row, text in enumerate(dataset[field]):
            if not isinstance(text, str):
                raise CapbenchError(f"{locate(row)}: column {field!r} is {text!r}, expected text")


def _bad_label(label, task: TaskSpec) -> bool:
    if task.regression:
        return not isinstance(label, (int, float)) or label != label
    return not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < task.num_labels
