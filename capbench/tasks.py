"""Task specs: one small flat YAML file per task in `tasks/` (packaged as `capbench/_tasks`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

import yaml

from capbench.errors import CapbenchError
from capbench.metrics import METRICS

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
        raise CapbenchError(f"{path}: unknown metrics {unknown_metrics}; known: {sorted(METRICS)}")
    if data["main_metric"] not in data["metrics"]:
        raise CapbenchError(
            f"{path}: main_metric {data['main_metric']!r} is not among metrics {data['metrics']}"
        )
    for key in ("text_fields", "eval_splits", "metrics", "label_names"):
        if key in data:
            data[key] = tuple(data[key])
    known = set(TaskSpec.__dataclass_fields__)
    extra = {k: v for k, v in data.items() if k not in known}
    return TaskSpec(**{k: v for k, v in data.items() if k in known}, extra=extra)


@cache
def all_tasks() -> dict[str, TaskSpec]:
    specs = [_parse(path) for path in sorted(tasks_dir().glob("*.yaml"))]
    return {spec.name: spec for spec in specs}


def get_task(name: str) -> TaskSpec:
    tasks = all_tasks()
    if name not in tasks:
        raise CapbenchError(f"unknown task {name!r}; known tasks: {', '.join(sorted(tasks))}")
    return tasks[name]


def parse_task_list(text: str) -> list[TaskSpec]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise CapbenchError("--tasks is empty; give a comma-separated list such as rte,sst2")
    return [get_task(name) for name in dict.fromkeys(names)]  # each task once, in first-seen order
