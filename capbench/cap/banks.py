"""Memory banks of training-set representations, indexed by train-split row (``batch["idx"]``).

In the authors' code (``masked_run_glue.py``, ``StructuredPruning/run_glue.py``) every bank is a
``[num_train, rep_num, hidden]`` fp32 CPU tensor filled by one no-grad pass over the training set in
order (``SequentialSampler``), together with a labels bank:

* FiC: the fine-tuned teacher, encoded once before training (``rep_num = 1``);
* PrC: the model being pruned, encoded before it is trained or pruned at all (epoch 0 / pruning step 0),
  i.e. the pre-trained model (``rep_num = 1``);
* SnC: the same pass repeated at the start of every later epoch (unstructured) or before every later
  pruning step (structured), concatenated along ``rep_num``; nothing is ever dropped.

Here the banks are fp16 by default (optionally a memory-mapped file), a snapshot set keeps at most
``max_snapshots`` banks (the oldest is dropped first), and every bank records what it cost to build.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from capbench.cap.representation import model_inputs, represent, resolve_kind
from capbench.errors import CapbenchError

_DTYPES = {"float16": torch.float16, "float32": torch.float32}
_NP_DTYPES = {torch.float16: np.float16, torch.float32: np.float32}
FORMAT_VERSION = 1


def to_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in _NP_DTYPES:
            raise CapbenchError(f"CAP bank dtype must be float16 or float32, got {dtype}")
        return dtype
    if dtype not in _DTYPES:
        raise CapbenchError(f"CAP bank dtype must be float16 or float32, got {dtype!r}")
    return _DTYPES[dtype]


class MemoryBank:
    """A [size, dim] table of representations (and optionally labels) indexed by example row.

    With ``path`` the rows live in a memory-mapped file (created or overwritten) instead of RAM.
    Rows are written with :meth:`update` and read with :meth:`get`; they never carry gradient.
    """

    def __init__(
        self, size: int, dim: int, dtype: str | torch.dtype = torch.float16, path: str | Path | None = None
    ):
        if size <= 0 or dim <= 0:
            raise CapbenchError(f"a CAP bank needs size > 0 and dim > 0, got {size} x {dim}")
        self.size, self.dim, self.dtype = int(size), int(dim), to_dtype(dtype)
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            array = np.lib.format.open_memmap(
                self.path, mode="w+", dtype=_NP_DTYPES[self.dtype], shape=(self.size, self.dim)
            )
            self._array = array
            self._reps = torch.from_numpy(array)
        else:
            self._array = None
            self._reps = torch.zeros(self.size, self.dim, dtype=self.dtype)
        self.labels: Tensor | None = None
        self._filled = torch.zeros(self.size, dtype=torch.bool)
        self._complete = False
        self.meta: dict = {}
        # Cost of building this bank in this process (0 when loaded from a cache).
        self.forward_examples = 0
        self.forward_passes = 0
        self.build_seconds = 0.0

    # ------------------------------------------------------------------ rows
    @property
    def device(self) -> torch.device:
        return self._reps.device

    def to(self, device: torch.device | str) -> MemoryBank:
        """Move the representations to ``device`` (a GPU: candidate rows are gathered there, no copy per
        step); a memory-mapped bank stays in its file.  Labels and the filled flags stay on the host."""
        if self._array is None:
            self._reps = self._reps.to(device)
        return self

    def update(self, idx: Tensor, reps: Tensor, labels: Tensor | None = None) -> None:
        idx = torch.as_tensor(idx).detach().long().cpu().view(-1)
        reps = reps.detach().to(self._reps.device, self.dtype)
        if reps.shape != (idx.numel(), self.dim):
            raise CapbenchError(
                f"bank update expects [{idx.numel()}, {self.dim}] rows, got {tuple(reps.shape)}"
            )
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.size):
            raise CapbenchError(
                f"bank row index out of range [0, {self.size}): is batch['idx'] the train-split row?"
            )
        self._reps[idx.to(self._reps.device)] = reps
        if labels is not None:
            labels = torch.as_tensor(labels).detach().cpu().view(-1)
            if self.labels is None:
                dtype = torch.float32 if labels.is_floating_point() else torch.long
                self.labels = torch.zeros(self.size, dtype=dtype)
            self.labels[idx] = labels.to(self.labels.dtype)
        self._filled[idx] = True
        self._complete = False

    def get(self, idx: Tensor) -> Tensor:
        """Rows ``idx`` as a [len(idx), dim] tensor in the bank dtype (a copy, on the bank's device)."""
        idx = torch.as_tensor(idx).long().view(-1).to(self._reps.device)
        return self._reps[idx]  # advanced indexing copies, also out of a memory map

    def sample(
        self, n: int, generator: torch.Generator | None = None, exclude: Tensor | None = None
    ) -> Tensor:
        """Up to ``n`` distinct random row indices not in ``exclude`` (``random.sample`` in the released code).

        ``exclude`` (the batch's rows) keeps an anchor's own row from appearing again among the extras: its
        rows are already candidates, and a second copy would halve the unsupervised term (and inflate the
        supervised positives) once the extras cover a small split. Deviation: the released code raises when
        ``n`` exceeds the training-set size (e.g. 4096 extra examples on RTE's 2490) and may draw a batch
        row; here ``n`` is clamped, i.e. every other example becomes a candidate, and batch rows are never drawn.
        """
        if int(n) <= 0:
            return torch.zeros(0, dtype=torch.long)
        if not self.complete:
            raise CapbenchError(f"CAP bank is incomplete ({int(self._filled.sum())}/{self.size} rows filled)")
        order = torch.randperm(self.size, generator=generator)
        if exclude is not None and len(exclude):
            order = order[~torch.isin(order, torch.as_tensor(exclude).long().cpu().view(-1))]
        return order[: int(n)]

    @property
    def complete(self) -> bool:
        if not self._complete:
            self._complete = bool(self._filled.all())
        return self._complete

    @property
    def filled(self) -> int:
        return int(self._filled.sum())

    @property
    def nbytes(self) -> int:
        """Bytes of representations plus labels (in RAM, or on disk for a memory-mapped bank)."""
        labels = 0 if self.labels is None else self.labels.numel() * self.labels.element_size()
        return self.size * self.dim * self._reps.element_size() + labels

    @property
    def on_disk(self) -> bool:
        return self.path is not None

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path, meta: dict | None = None) -> Path:
        """Write ``reps.npy``, ``labels.npy`` (if any) and ``meta.json`` into ``directory``."""
        if not self.complete:
            raise CapbenchError(f"refusing to save an incomplete CAP bank ({self.filled}/{self.size} rows)")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        reps_path = directory / "reps.npy"
        if self.path is None or self.path.resolve() != reps_path.resolve():
            tmp = directory / "reps.tmp.npy"
            np.save(tmp, self._reps.numpy())
            tmp.replace(reps_path)
        elif self._array is not None and hasattr(self._array, "flush"):
            self._array.flush()
        if self.labels is not None:
            np.save(directory / "labels.npy", self.labels.numpy())
        info = dict(self.meta)
        info.update(meta or {})
        info.update(
            format=FORMAT_VERSION,
            size=self.size,
            dim=self.dim,
            dtype=str(self.dtype).replace("torch.", ""),
            has_labels=self.labels is not None,
            build_forward_examples=self.forward_examples or info.get("build_forward_examples", 0),
            build_seconds=self.build_seconds or info.get("build_seconds", 0.0),
        )
        from capbench.records import atomic_write_text, dumps_json

        atomic_write_text(directory / "meta.json", dumps_json(info, str(directory / "meta.json")))
        self.meta = info
        return directory

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = False) -> MemoryBank:
        """Load a saved bank; ``mmap=True`` maps ``reps.npy`` copy-on-write instead of reading it."""
        directory = Path(directory)
        meta_path = directory / "meta.json"
        if not meta_path.is_file():
            raise CapbenchError(f"no CAP bank at {directory} (meta.json missing)")
        meta = json.loads(meta_path.read_text())
        array = np.load(directory / "reps.npy", mmap_mode="c" if mmap else None)
        bank = cls.__new__(cls)
        bank.size, bank.dim = int(array.shape[0]), int(array.shape[1])
        bank.dtype = to_dtype(str(array.dtype))
        bank.path = directory / "reps.npy" if mmap else None
        bank._array = array if mmap else None
        bank._reps = torch.from_numpy(array)
        labels_path = directory / "labels.npy"
        bank.labels = torch.from_numpy(np.load(labels_path)) if labels_path.is_file() else None
        bank._filled = torch.ones(bank.size, dtype=torch.bool)
        bank._complete = True
        bank.meta = meta
        bank.forward_examples = bank.forward_passes = 0
        bank.build_seconds = 0.0
        return bank

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path else ""
        return f"MemoryBank(size={self.size}, dim={self.dim}, dtype={self.dtype}{where})"


def _dataset_size(loader) -> int | None:
    dataset = getattr(loader, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:
        return None


def build_bank(
    model: torch.nn.Module,
    loader: Iterable[dict],
    kind: str = "pooler",
    *,
    size: int | None = None,
    dtype: str | torch.dtype = torch.float16,
    path: str | Path | None = None,
) -> MemoryBank:
    """Encode every training example once with ``model`` (eval mode, no grad) into a new bank.

    ``loader`` yields batches with ``idx`` (train-split row), the encoder inputs and ``labels``; it
    must cover every row once (use a sequential, non-dropping loader). ``size`` defaults to
    ``len(loader.dataset)``. The bank's ``forward_examples``/``forward_passes``/``build_seconds`` count
    the cost. The model's train/eval mode is restored afterwards.

    Deviation: the released unstructured script encodes its snapshots while the model is still in
    train mode (dropout on, ``model.train()`` from the previous epoch); every bank here is encoded in
    eval mode, as the released PrC and FiC banks effectively are, so a bank is a deterministic
    function of the model.
    """
    size = size if size is not None else _dataset_size(loader)
    if size is None:
        raise CapbenchError("build_bank needs size= when the loader has no sized dataset")
    kind = resolve_kind(model, kind)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    bank: MemoryBank | None = None
    start = time.perf_counter()
    examples = passes = 0
    try:
        with torch.no_grad():
            for batch in loader:
                if "idx" not in batch:
                    raise CapbenchError(
                        "CAP banks need batch['idx'] (the train-split row index) in every batch"
                    )
                inputs = model_inputs(batch, device, model)
                outputs = model(**inputs, output_hidden_states=True)
                reps = represent(model, outputs, inputs.get("attention_mask"), kind)
                if bank is None:
                    bank = MemoryBank(size, reps.shape[-1], dtype=dtype, path=path)
                bank.update(batch["idx"], reps, batch.get("labels"))
                examples += reps.shape[0]
                passes += 1
    finally:
        model.train(was_training)
    if bank is None:
        raise CapbenchError("build_bank got an empty loader")
    if not bank.complete:
        raise CapbenchError(
            f"the bank loader covered {bank.filled} of {size} training rows: use a sequential loader "
            "over the whole train split without drop_last"
        )
    bank.forward_examples, bank.forward_passes = examples, passes
    bank.build_seconds = time.perf_counter() - start
    bank.meta.update(kind=kind, model_class=type(model).__name__)
    return bank


def load_or_build_bank(
    model: torch.nn.Module,
    loader: Iterable[dict],
    kind: str,
    cache_dir: str | Path,
    *,
    dtype: str | torch.dtype = torch.float16,
    mmap: bool = False,
    meta: dict | None = None,
) -> MemoryBank:
    """Load the bank cached in ``cache_dir`` if it matches (kind, size, dtype, ``meta``), else build it.

    The caller chooses ``cache_dir`` so that it identifies (model, task, data, seed), as for the
    teacher; ``meta`` (e.g. ``{"model": ..., "task": ...}``) is stored and must match on load.
    A freshly built bank keeps its build cost; a loaded one reports zero cost.

    A miss leaves the global RNG as a hit does: iterating a DataLoader draws its base seed from the global
    generator, and the cell's training (dropout) goes on drawing from it, so a build that consumed draws
    would make the first CAP cell of a (task, seed) train differently from the ones that load its banks
    (seen in the issue-20 grid: mnli cap_magnitude 0.97 seed 1, built vs loaded, 35.45 vs 35.35).
    """
    cache_dir = Path(cache_dir)
    dtype = to_dtype(dtype)
    size = _dataset_size(loader)
    expected_kind = resolve_kind(model, kind)
    if (cache_dir / "meta.json").is_file():
        bank = MemoryBank.load(cache_dir, mmap=mmap)
        stored = bank.meta
        matches = (
            stored.get("kind") == expected_kind
            and (size is None or bank.size == size)
            and bank.dtype == dtype
            and all(stored.get(k) == v for k, v in (meta or {}).items())
        )
        if matches:
            return bank
        del bank
    with torch.random.fork_rng(devices=[]):
        bank = build_bank(model, loader, kind, size=size, dtype=dtype)
    bank.save(cache_dir, meta=meta)
    if mmap:
        built = bank
        bank = MemoryBank.load(cache_dir, mmap=True)
        bank.forward_examples, bank.forward_passes = built.forward_examples, built.forward_passes
        bank.build_seconds = built.build_seconds
    return bank


class SnapshotBanks:
    """The SnC banks: one bank per snapshot of the model being pruned, at most ``max_snapshots``.

    ``capture(model, loader, kind)`` encodes the training set with the current model. When the set is
    full, the oldest snapshot is dropped *before* the new pass so that at most ``max_snapshots`` banks
    exist at any time (the released code keeps all of them: 9 with its 10-epoch scripts, which the
    default cap of 10 never truncates). Rows are served as [n, K, dim] like the released
    ``[num_train, rep_num, hidden]`` tensor.
    """

    def __init__(
        self,
        max_snapshots: int,
        dtype: str | torch.dtype = torch.float16,
        directory: str | Path | None = None,
        device: torch.device | str | None = None,
    ):
        if max_snapshots < 1:
            raise CapbenchError(f"max_snapshots must be >= 1, got {max_snapshots}")
        self.max_snapshots = int(max_snapshots)
        self.dtype = to_dtype(dtype)
        self.directory = Path(directory) if directory is not None else None
        self.device = device  # where captured banks live (None: host RAM), see MemoryBank.to
        self.banks: list[MemoryBank] = []
        self.steps: list[int | None] = []
        self.taken = 0
        self.evicted = 0
        self.forward_examples = 0
        self.forward_passes = 0
        self.build_seconds = 0.0
        self.peak_nbytes = 0

    def __len__(self) -> int:
        return len(self.banks)

    @property
    def size(self) -> int:
        return self.banks[0].size if self.banks else 0

    @property
    def dim(self) -> int:
        return self.banks[0].dim if self.banks else 0

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.banks)

    @property
    def labels(self) -> Tensor | None:
        return self.banks[-1].labels if self.banks else None

    def capture(
        self, model: torch.nn.Module, loader: Iterable[dict], kind: str, step: int | None = None
    ) -> MemoryBank:
        while len(self.banks) >= self.max_snapshots:
            self._evict_oldest()
        path = None
        if self.directory is not None:
            path = self.directory / f"snapshot-{self.taken:04d}.npy"
        bank = build_bank(model, loader, kind, dtype=self.dtype, path=path)
        if self.device is not None:
            bank.to(self.device)
        if self.banks and (bank.size, bank.dim) != (self.size, self.dim):
            raise CapbenchError(
                f"snapshot bank shape {bank.size}x{bank.dim} differs from {self.size}x{self.dim}"
            )
        self.banks.append(bank)
        self.steps.append(step)
        self.taken += 1
        self.forward_examples += bank.forward_examples
        self.forward_passes += bank.forward_passes
        self.build_seconds += bank.build_seconds
        self.peak_nbytes = max(self.peak_nbytes, self.nbytes)
        return bank

    def _evict_oldest(self) -> None:
        bank = self.banks.pop(0)
        self.steps.pop(0)
        self.evicted += 1
        path = bank.path
        del bank
        if path is not None:
            path.unlink(missing_ok=True)

    def get(self, idx: Tensor) -> Tensor:
        """[len(idx), K, dim]: every kept snapshot's row for each example, oldest first."""
        if not self.banks:
            raise CapbenchError("no CAP snapshot has been taken yet")
        return torch.stack([b.get(idx) for b in self.banks], dim=1)

    def sample(
        self, n: int, generator: torch.Generator | None = None, exclude: Tensor | None = None
    ) -> Tensor:
        return self.banks[-1].sample(n, generator, exclude)

    def clear(self) -> None:
        while self.banks:
            self._evict_oldest()

    _COUNTERS = ("taken", "evicted", "forward_examples", "forward_passes", "build_seconds", "peak_nbytes")

    def state_dict(self) -> dict:
        """The kept snapshots (rows, labels, meta, step) and counters, for a training checkpoint
        (``capbench.checkpoint``); the rows travel in the checkpoint, also for banks kept on disk."""
        banks = [
            {
                "reps": b._reps.detach().cpu().clone(),
                "labels": None if b.labels is None else b.labels.clone(),
                "meta": dict(b.meta),
                "file": b.path.name if b.path is not None else None,
                "forward_examples": b.forward_examples,
                "forward_passes": b.forward_passes,
                "build_seconds": b.build_seconds,
            }
            for b in self.banks
        ]
        return {"banks": banks, "steps": list(self.steps), **{k: getattr(self, k) for k in self._COUNTERS}}

    def load_state_dict(self, state: dict) -> None:
        """Replace the kept snapshots by those of ``state_dict`` (files rewritten under ``directory``)."""
        self.clear()
        for saved in state["banks"]:
            size, dim = saved["reps"].shape
            path = self.directory / saved["file"] if self.directory is not None and saved["file"] else None
            bank = MemoryBank(size, dim, dtype=self.dtype, path=path)
            bank.update(torch.arange(size), saved["reps"], saved["labels"])
            bank.meta = dict(saved["meta"])
            bank.forward_examples, bank.forward_passes = saved["forward_examples"], saved["forward_passes"]
            bank.build_seconds = saved["build_seconds"]
            if self.device is not None:
                bank.to(self.device)
            self.banks.append(bank)
        self.steps = list(state["steps"])
        for key in self._COUNTERS:
            setattr(self, key, state[key])
