"""The dense teacher's logits for knowledge distillation, computed once per batch and kept beside the teacher.

The teacher runs in eval mode, so its logits on a batch are a fixed function of the batch's inputs: every
student of that teacher (each method, sparsity and CAP variant of one task and seed) trains on the same
seeded batches and would otherwise repeat the same forward pass at every step (a third of a KD step's cost
on MiniLM).  Logits are keyed by the exact inputs of the batch (token ids, attention mask, token types, with
their padding), so a cached value is bit for bit the value the forward pass would give on this machine: a
cell's results do not depend on whether the cache was warm.  The cache file lives in the teacher's
directory and names the sha256 of the teacher's weights file; a teacher retrained in place (its directory
replaced) drops it, and a file naming other weights is ignored.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from capbench.model_identity import weights_sha256
from capbench.training import model_inputs

CACHE_FILE = "teacher_logits.npz"
_WEIGHTS_KEY = "__weights_sha256__"


def batch_key(inputs: dict) -> str:
    """sha256 over the names, shapes, dtypes and bytes of a batch's model inputs (sorted by name)."""
    digest = hashlib.sha256()
    for name in sorted(inputs):
        value = inputs[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(value.shape)}|{value.dtype}|".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


class TeacherLogits:
    """``teacher_logits(batch) -> Tensor [batch, num_labels]`` (float32, no grad), cached per batch.

    ``directory``: the teacher's saved directory, where the cache is read at construction and merged into by
    :meth:`save`; None keeps the cache in memory only.  ``weights``: that directory's weights digest when the
    caller already holds it (``dense_teacher``'s ``weights_sha256``), so the file is not hashed again; None
    hashes it on first use.  ``computed`` and ``reused`` count batches.
    """

    # A training checkpoint keeps the counters only: the logits are a cache, recomputed bit for bit.
    checkpoint_skip = ("_store", "_new", "directory", "weights")

    def __init__(
        self, teacher: torch.nn.Module, directory: str | Path | None = None, weights: str | None = None
    ):
        self.teacher = teacher.eval()
        self.directory = Path(directory) if directory is not None else None
        if weights is not None and self.directory is not None:
            self.weights = weights  # the cached property's value, given
        self._store: dict[str, np.ndarray] | None = None  # read on first use: cells without KD never pay
        self._new: set[str] = set()
        self.computed = self.reused = self.computed_examples = 0

    @functools.cached_property
    def weights(self) -> str | None:
        """The teacher's weights digest (capbench.model_identity.weights_sha256) the cache is keyed by."""
        return weights_sha256(self.directory) if self.directory is not None else None

    @property
    def store(self) -> dict[str, np.ndarray]:
        if self._store is None:
            self._store = self._load()
        return self._store

    @property
    def path(self) -> Path | None:
        return None if self.directory is None else self.directory / CACHE_FILE

    def _load(self) -> dict[str, np.ndarray]:
        path = self.path
        if path is None or self.weights is None or not path.is_file():
            return {}
        try:
            with np.load(path) as stored:
                if str(stored.get(_WEIGHTS_KEY, "")) != self.weights:
                    return {}  # logits of other weights
                return {k: stored[k] for k in stored.files if k != _WEIGHTS_KEY}
        except (OSError, ValueError, KeyError):
            return {}  # a damaged cache is recomputed, never trusted

    def __call__(self, batch: dict) -> torch.Tensor:
        inputs = model_inputs(batch, self.teacher)
        key = batch_key(inputs)
        cached = self.store.get(key)
        if cached is not None:
            self.reused += 1
            return torch.from_numpy(cached)
        if self.teacher.training:
            self.teacher.eval()
        with torch.no_grad():
            logits = self.teacher(**inputs).logits.float().cpu()
        self.store[key] = logits.numpy().copy()
        self._new.add(key)
        self.computed += 1
        self.computed_examples += logits.shape[0]
        return logits

    def report(self) -> dict:
        """{computed_batches, reused_batches}: teacher forward passes run and saved by the cache."""
        return {"computed_batches": self.computed, "reused_batches": self.reused}

    def save(self) -> None:
        """Merge this run's new logits into the cache file (atomic replace; what another process added
        since this one loaded is kept). No-op without a directory, a weights file or anything new."""
        path = self.path
        if path is None or self.weights is None or not self._new:
            return
        merged = {**self._load(), **{k: self.store[k] for k in self._new}}
        fd, tmp = tempfile.mkstemp(prefix=".teacher_logits.", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, **merged, **{_WEIGHTS_KEY: np.asarray(self.weights)})
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._new.clear()
