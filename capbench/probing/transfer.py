"""Transfer probes: a model's frozen features probed on other GLUE tasks with the probing protocol.

Train and dev examples are drawn from the GLUE task's train split, test examples from its validation split
(validation_matched for mnli), balanced per class (as many per class as the smallest class allows, up to the
requested size). Sentence-pair tasks are encoded as the model's native pair ([CLS] a [SEP] b [SEP]). The
test split stays fixed across seeds; seeds re-partition train/dev only. There is no control task (the
labels are the real GLUE labels), so transfer probes report accuracy and retention, not selectivity.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from capbench.data.sources import DataSource, load_split
from capbench.errors import CapbenchError
from capbench.probing.corpus import as_source
from capbench.probing.tasks import SPLITS, ProbeTask, _rng, assign_splits
from capbench.tasks import all_tasks, get_task

# From the task YAMLs: every classification task is a transfer probe; its test split is its main eval split.
TRANSFER_TASKS = tuple(name for name, task in all_tasks().items() if not task.regression)
REGRESSION_TASKS = tuple(name for name, task in all_tasks().items() if task.regression)
DEFAULT_TRANSFER_SIZES = {"train": 2000, "dev": 500, "test": 1000}


def _examples(source: DataSource, config: str, split: str) -> tuple[list, np.ndarray]:
    """The labelled rows of one split, read by the core loader: (texts or text pairs, labels)."""
    task = get_task(config)
    rows = load_split(source, task, split)
    texts: list = []
    labels: list[int] = []
    for *fields, label in zip(*(rows[f] for f in task.text_fields), rows["label"], strict=True):
        if label is None or int(label) < 0:
            continue
        parts = tuple(" ".join(str(text).split()) for text in fields)
        texts.append(parts[0] if len(parts) == 1 else parts)
        labels.append(int(label))
    return texts, np.asarray(labels, dtype=np.int64)


def _balanced(labels: np.ndarray, classes: list[int], per_class: int, rng: np.random.Generator) -> np.ndarray:
    return np.concatenate(
        [np.sort(rng.choice(np.flatnonzero(labels == c), per_class, replace=False)) for c in classes]
    )


def make_transfer_task(
    config: str, data: DataSource | str | Path, seed: int = 0, sizes: Mapping[str, int] | None = None
) -> ProbeTask:
    """Transfer probe `config` from a GLUE source (or a data directory, read as `--data-dir` reads it)."""
    if config in REGRESSION_TASKS:
        raise CapbenchError(
            f"transfer probe {config}: a regression task; transfer probes take {', '.join(TRANSFER_TASKS)}"
        )
    if config not in TRANSFER_TASKS:
        raise CapbenchError(f"unknown transfer probe {config!r}; known: {', '.join(TRANSFER_TASKS)}")
    source = as_source(data)
    where = source.describe()
    sizes = {**DEFAULT_TRANSFER_SIZES, **(sizes or {})}
    train_texts, train_labels = _examples(source, config, get_task(config).train_split)
    test_texts, test_labels = _examples(source, config, get_task(config).main_eval_split)
    classes = sorted(set(train_labels.tolist()) | set(test_labels.tolist()))
    k = len(classes)
    if k < 2:
        raise CapbenchError(f"transfer probe {config}: fewer than two labels in {where}")
    smallest_train = min(int(np.sum(train_labels == c)) for c in classes)
    smallest_test = min(int(np.sum(test_labels == c)) for c in classes)
    want_train, want_dev = sizes["train"] // k, sizes["dev"] // k
    scale = min(1.0, smallest_train / max(1, want_train + want_dev))
    per_train, per_dev = int(want_train * scale), int(want_dev * scale)
    per_test = min(sizes["test"] // k, smallest_test)
    if min(per_train, per_dev, per_test) < 1:
        raise CapbenchError(f"transfer probe {config}: too few labelled examples per class in {where}")
    rng = _rng(seed, f"transfer:{config}", 0)
    train_rows = _balanced(train_labels, classes, per_train + per_dev, rng)
    test_rows = _balanced(test_labels, classes, per_test, rng)
    texts = [train_texts[i] for i in train_rows] + [test_texts[i] for i in test_rows]
    raw = np.concatenate([train_labels[train_rows], test_labels[test_rows]])
    labels = np.searchsorted(np.asarray(classes), raw).astype(np.int64)
    is_test = np.arange(len(labels)) >= len(train_rows)
    counts = {c: {"train": per_train, "dev": per_dev} for c in range(k)}
    split = assign_splits(labels, counts, _rng(seed, config, 1), candidates=~is_test)
    split[is_test] = "test"
    assert set(split.tolist()) <= set(SPLITS)
    return ProbeTask(
        name=config,
        classes=tuple(str(c) for c in classes),
        texts=texts,
        labels=labels,
        split=split,
        seed=int(seed),
        fixed_test=True,
        meta={"kind": "transfer", "pairs": len(get_task(config).text_fields) == 2},
    )
