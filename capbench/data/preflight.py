"""The checks `capbench run` makes on a task's data before any cell starts."""

from __future__ import annotations

import sys

from capbench.data.overlap import eval_train_overlap, overlap_lines
from capbench.data.sources import DataSource, check_sample_size, load_split
from capbench.errors import CapbenchError
from capbench.tasks import TaskSpec


def check_task_data(
    source: DataSource, task: TaskSpec, max_train_examples: int | None, max_eval_examples: int | None
) -> list[str]:
    """Load every split (missing, empty or broken ones raise), refuse samples of no rows, and return
    one sentence per evaluation split whose rows also occur in the train split."""
    loaded = {split: load_split(source, task, split) for split in (task.train_split, *task.eval_splits)}
    check_sample_size(source, task, task.train_split, max_train_examples, "--max-train-examples")
    for split in task.eval_splits:
        check_sample_size(source, task, split, max_eval_examples, "--max-eval-examples")
    return overlap_lines(task, eval_train_overlap(source, task, loaded))


def report_overlap(lines: list[str], strict: bool) -> None:
    """Warn on stderr, one line per split; under --strict-data refuse the run with one line."""
    if lines and strict:
        raise CapbenchError(
            f"--strict-data: {'; '.join(lines)}; remove those rows from the evaluation split "
            "or run without --strict-data"
        )
    for line in lines:
        print(f"capbench: warning: {line}; --strict-data refuses this", file=sys.stderr)
