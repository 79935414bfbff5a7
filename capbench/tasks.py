"""Task specs: one small flat YAML file per task in `tasks/` (packaged as `capbench/_tasks`).

A task's YAML is the only table of its fields: hub dataset and config, text fields, labels, splits, metrics,
and (``tsv:``) where its columns sit in the classic ``glue_data/`` TSV files. Adding a task is adding a file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from capbench.errors import CapbenchError
from capbench.metrics import METRICS
from capbench.registry import Registry

REQUIRED_KEYS = (
    "name",
    "dataset",
    "config",
    "text_fields",
    "num_labels",
    "eval_splits",
    "metrics",
    "main_metric",
)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    dataset: str
    config: str
    text_fields: tuple[str, ...]
    num_labels: int
    eval_splits: tuple[str, ...]
    metrics: tuple[str, ...]
    main_metric: str
    description: str = ""
    label_names: tuple[str, ...] = ()
    regression: bool = False
    train_split: str = "train"
    main_split: str = ""
    # The glue_data/ TSV layout: directory, header, n_fields (allowed field counts per row), columns (text
    # field -> position), label_column, split_files (split -> file names to try). See capbench.data.glue_tsv.
    tsv: dict = field(default_factory=dict)
    # Rows of each official split (split -> count); a split of another size is a sample.
    official_rows: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def main_eval_split(self) -> str:
        return self.main_split or self.eval_splits[0]

    def to_dict(self) -> dict:
        return asdict(self)


def tasks_dir() -> Path:
    installed = Path(__file__).parent / "_tasks"
    return installed if installed.is_dir() else Path(__file__).resolve().parent.parent / "tasks"


def _parse(path: Path) -> TaskSpec:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise CapbenchError(f"{path}: a task spec must be a YAML mapping")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise CapbenchError(f"{path}: missing keys {missing}; see tasks/rte.yaml for the format")
    unknown_metrics = [m for m in data["metrics"] if m not in METRICS]
    if unknown_metrics:
        raise CapbenchError(f"{path}: {METRICS.unknown(unknown_metrics[0])}")
    if data["main_metric"] not in data["metrics"]:
        raise CapbenchError(
            f"{path}: main_metric {data['main_metric']!r} is not among metrics {data['metrics']}"
        )
    columns = (data.get("tsv") or {}).get("columns", {})
    if columns and set(columns) != set(data["text_fields"]):
        raise CapbenchError(
            f"{path}: tsv.columns {sorted(columns)} must name the text_fields {data['text_fields']}"
        )
    for key in ("text_fields", "eval_splits", "metrics", "label_names"):
        if key in data:
            data[key] = tuple(data[key])
    known = set(TaskSpec.__dataclass_fields__)
    extra = {k: v for k, v in data.items() if k not in known}
    return TaskSpec(**{k: v for k, v in data.items() if k in known}, extra=extra)


def _load(registry: Registry) -> None:
    for path in sorted(tasks_dir().glob("*.yaml")):
        spec = _parse(path)
        registry.register(spec.name, spec)


TASKS: Registry[TaskSpec] = Registry("task", loader=_load)


def all_tasks() -> dict[str, TaskSpec]:
    return dict(TASKS.items())


def get_task(name: str) -> TaskSpec:
    return TASKS.get(name)


def task_by_config(config: str) -> TaskSpec | None:
    """The task whose hub config (a GLUE data directory's name) is ``config``, if one is registered."""
    return next((task for _, task in TASKS.items() if task.config == config), None)


def parse_task_list(text: str) -> list[TaskSpec]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise CapbenchError("--tasks is empty; give a comma-separated list such as rte,sst2")
    return [get_task(name) for name in dict.fromkeys(names)]  # each task once, in first-seen order


def official_rows_of(task: str, split: str) -> int | None:
    """The official row count of a task's split (its YAML's ``official_rows``), if the task declares it."""
    return TASKS.get(task).official_rows.get(split) if task in TASKS else None
