"""What a cell's data *is*, independent of where it lives: the content hash of the split files it reads.

Cell digests use this instead of the data directory's path, so the same command run from another
checkout or machine finds the same finished cells, and editing a split file in place starts new ones.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from capbench.data.sources import DataSource, split_file
from capbench.tasks import TaskSpec

CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def data_identity(source: DataSource, task: TaskSpec) -> dict:
    """{"kind", "sha256"} over the task's train and eval split files; the hub is named, not hashed."""
    if source.kind == "hub":
        return {"kind": "hub", "dataset": f"{task.dataset}/{task.config}"}
    digest = hashlib.sha256()
    for split in (task.train_split, *task.eval_splits):
        digest.update(f"{split}:{file_sha256(split_file(source, task, split))}\n".encode())
    return {"kind": source.kind, "sha256": digest.hexdigest()[:20]}
