"""Evaluation rows that are also training rows: counted by their normalised text fields, as hashes.

A model scored on rows it was trained on reports a number that is too good. GLUE itself has a few
genuine duplicates, so by default this is a warning; `capbench run --strict-data` refuses it.
"""

from __future__ import annotations

import hashlib
import unicodedata

import datasets

from capbench.data.sources import DataSource, load_split
from capbench.tasks import TaskSpec


def normalise(text: str) -> str:
    """Unicode NFKC, case-folded, whitespace collapsed: "A  man\\tsat." and "a man sat." are one text."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def row_hashes(rows: datasets.Dataset, task: TaskSpec) -> list[bytes]:
    """One 16-byte hash per row over the task's text fields (for rte: sentence1 and sentence2)."""
    columns = [rows[field] for field in task.text_fields]
    return [
        hashlib.blake2b("\x1f".join(map(normalise, texts)).encode(), digest_size=16).digest()
        for texts in zip(*columns)
    ]


def eval_train_overlap(
    source: DataSource, task: TaskSpec, loaded: dict[str, datasets.Dataset] | None = None
) -> dict[str, tuple[int, int]]:
    """{eval split: (rows whose text fields also occur in the train split, rows)}.

    `loaded` holds splits already loaded in full (not sampled), so they are not read again.
    """
    loaded = loaded or {}

    def rows(split: str) -> datasets.Dataset:
        return loaded[split] if split in loaded else load_split(source, task, split)

    train = set(row_hashes(rows(task.train_split), task))
    overlap = {}
    for split in task.eval_splits:
        hashes = row_hashes(rows(split), task)
        overlap[split] = (sum(h in train for h in hashes), len(hashes))
    return overlap


def overlap_lines(task: TaskSpec, overlap: dict[str, tuple[int, int]]) -> list[str]:
    """One sentence per evaluation split that shares rows with the train split."""
    return [
        f"{n} of {total} rows of {task.name}/{split} also occur in its train split (by text fields)"
        for split, (n, total) in overlap.items()
        if n
    ]
