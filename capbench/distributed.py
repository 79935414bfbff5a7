"""Coordination between processes: file locks on shared caches, and data-parallel training of one cell.

File locks (``fcntl.flock``) serialise the shared work that several processes of a grid may reach at the
same time: tokenizing a split, training a dense teacher, building CAP banks, running a cell. They work
between processes of one machine and, on a filesystem with working ``flock`` (local disks, NFSv4, Lustre
and GPFS mounted with locking), between machines. A lock file is never deleted, so a waiter can never hold
a lock on an unlinked file; a process that dies releases its locks.

Data parallelism is switched on by the launcher's environment (``WORLD_SIZE > 1``, set by
``accelerate launch --multi_gpu`` or ``torchrun``; gloo on CPU, NCCL for CUDA tensors, see ``backend``): every
rank runs the same grid and the same cells,
each global batch is split into contiguous per-rank slices, gradients are all-reduced (a weighted sum that
equals the gradient of the global batch), and only rank 0 writes records and cached models. Without that
environment every function here is a no-op, so a plain ``capbench run`` behaves exactly as before.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import os
from pathlib import Path

import torch

from capbench.errors import CapbenchError

LOCKS_DIR = ".locks"

# ---------------------------------------------------------------------------------------------- file locks
_held: dict[str, int] = {}  # lock path -> nesting depth in this process (flock is not re-entrant per fd)


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock on ``path`` (created if missing), re-entrant within a process; yields the open file.

    The holder may write a note into the file (who holds it, which attempt): see ``write_note``.
    """
    path = Path(path)
    key = os.path.abspath(path)
    if key in _held:
        _held[key] += 1
        try:
            yield None
        finally:
            _held[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        _held[key] = 1
        try:
            yield handle
        finally:
            del _held[key]
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def lock_busy(path: Path) -> bool:
    """Whether another process holds the ``file_lock`` on ``path`` right now (a non-blocking probe; a lock
    this process holds is not busy). Only a hint: the holder may release it a moment later."""
    path = Path(path)
    if os.path.abspath(path) in _held or not path.exists():
        return False
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return False


def read_note(handle) -> str:
    handle.seek(0)
    return handle.read()


def write_note(handle, text: str) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(text)
    handle.flush()
    os.fsync(handle.fileno())


def cache_lock(cache_dir: Path | None, name: str):
    """The lock on one piece of shared work in the cache (``<cache>/.locks/<name>.lock``); none without a cache.

    For work that each process does on its own (tokenizing, building CAP banks): ranks of a data-parallel
    group take it one after the other, so rank 0 builds and the others load what it cached.
    """
    if cache_dir is None:
        return contextlib.nullcontext()
    return file_lock(_cache_lock_path(cache_dir, name))


def _cache_lock_path(cache_dir: Path, name: str) -> Path:
    return Path(cache_dir) / LOCKS_DIR / f"{name}.lock"


def cache_lock_busy(cache_dir: Path | None, name: str) -> bool:
    """Whether another process holds ``cache_lock(cache_dir, name)`` now (``lock_busy``); False without a cache."""
    return cache_dir is not None and lock_busy(_cache_lock_path(cache_dir, name))


@contextlib.contextmanager
def group_cache_lock(cache_dir: Path | None, name: str):
    """Like ``cache_lock`` for collective work (training a teacher together): only rank 0 takes the lock.

    Inside, decide with ``agree`` (rank 0's view) so that every rank takes the same branch.
    """
    if is_main():
        with cache_lock(cache_dir, name):
            yield
    else:
        yield


# ---------------------------------------------------------------------------------------- process group
def world_size() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def enabled() -> bool:
    return world_size() > 1


def backend() -> str:
    """The process group's backend: ``CAPBENCH_DIST_BACKEND`` when set; with CUDA and NCCL,
    ``cpu:gloo,cuda:nccl`` (one group that sends each collective by its tensors' device: gradients of a
    model on the GPU over NCCL, flags, loss terms and pickled objects on the host over gloo); else gloo."""
    chosen = os.environ.get("CAPBENCH_DIST_BACKEND", "").strip()
    if chosen:
        return chosen
    import torch.distributed as dist

    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def init() -> None:
    """Join the process group of the launcher's environment (``backend()``); on a GPU node each process
    takes the GPU of its ``LOCAL_RANK`` first, as NCCL needs one device per process."""
    if not enabled():
        return
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if not dist.is_available():  # pragma: no cover
        raise CapbenchError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if torch.cuda.is_available():
        from capbench.device import process_cuda_index

        torch.cuda.set_device(process_cuda_index())
    minutes = float(os.environ.get("CAPBENCH_DIST_TIMEOUT_MINUTES", "120"))
    dist.init_process_group(backend(), timeout=datetime.timedelta(minutes=minutes))


def shutdown() -> None:
    if enabled():
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def rank() -> int:
    if not enabled():
        return 0
    init()
    import torch.distributed as dist

    return dist.get_rank()


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if enabled():
        init()
        import torch.distributed as dist

        dist.barrier()


def agree(value):
    """Rank 0's ``value`` on every rank (decisions that depend on the filesystem must not diverge)."""
    if not enabled():
        return value
    init()
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def describe() -> dict:
    if enabled():
        import torch.distributed as dist

        if dist.is_initialized():
            return {"world_size": world_size(), "backend": str(dist.get_backend())}
    return {"world_size": world_size(), "backend": backend()}


# ---------------------------------------------------------------------------------------- data parallel
def _extra_grad_tensors(pruner) -> list[torch.Tensor]:
    """Leaf tensors outside the optimizer whose gradient a pruner reads (first_order's unit gates)."""
    if pruner is None:
        return []
    if hasattr(pruner, "gradient_tensors"):
        return list(pruner.gradient_tensors())
    importance = getattr(pruner, "importance", None)
    if importance is None:
        return []
    return [*getattr(importance, "head_gates", []), *getattr(importance, "ffn_gates", [])]


class DataParallel:
    """Gradient all-reduce data parallelism for ``capbench.training.train`` (see the module docstring).

    Every rank iterates the same loader (same seed, same global batches, same padding) and trains on its
    contiguous slice of each batch. The loss of rank r is scaled by n_r / n before backward and the
    gradients are summed, which is the gradient of the mean loss over the whole global batch: the
    optimizer, schedule, clipping and pruning masks then follow a single-process run with the same global
    batch and seed (up to float summation order; dropout draws differ per rank).
    """

    def __init__(self):
        import torch.distributed as dist

        init()
        self.dist = dist
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()

    @classmethod
    def create(cls) -> DataParallel | None:
        return cls() if enabled() else None

    def broadcast_state(self, model, optimizer) -> None:
        """Start every rank from rank 0's parameters and buffers (masks included)."""
        tensors = list(model.state_dict().values())
        seen = {id(t) for t in tensors}
        for group in optimizer.param_groups:
            tensors += [p for p in group["params"] if id(p) not in seen]
        with torch.no_grad():
            for tensor in tensors:
                self.dist.broadcast(tensor.data, src=0)

    def local_batch(self, batch: dict) -> tuple[dict, float]:
        """This rank's slice of a global batch and its weight n_r / n (an empty slice gets row 0, weight 0)."""
        n = int(batch["labels"].shape[0])
        rows = torch.arange(n).tensor_split(self.size)[self.rank]
        weight = len(rows) / n
        if len(rows) == 0:
            rows = torch.arange(1)
        start, stop = int(rows[0]), int(rows[-1]) + 1
        local = {
            k: v[start:stop] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == n else v
            for k, v in batch.items()
        }
        return local, weight

    def all_reduce_grads(self, optimizer, pruner=None) -> None:
        tensors, seen = [], set()
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) not in seen:
                    seen.add(id(p))
                    tensors.append(p)
        tensors += [t for t in _extra_grad_tensors(pruner) if id(t) not in seen]
        if not tensors:
            return
        flags = torch.tensor([t.grad is not None for t in tensors], dtype=torch.int32)
        self.dist.all_reduce(flags, op=self.dist.ReduceOp.MAX)
        active = [t for t, flag in zip(tensors, flags.tolist()) if flag]
        for t in active:
            if t.grad is None:
                t.grad = torch.zeros_like(t)
        by_dtype: dict = {}
        for t in active:
            by_dtype.setdefault(t.grad.dtype, []).append(t.grad)
        for grads in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            self.dist.all_reduce(flat)
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    def reduce_terms(self, terms: dict, weight: float) -> dict:
        """The global batch's loss terms (weighted sum of the ranks' per-slice means)."""
        if not terms:
            return terms
        names = sorted(terms)
        values = torch.tensor([float(terms[k].detach()) * weight for k in names], dtype=torch.float64)
        self.dist.all_reduce(values)
        return {k: torch.tensor(v) for k, v in zip(names, values.tolist())}

    def replica_digest(self, model) -> str:
        """A digest of the model state (weights and masks); raises if the ranks' replicas differ."""
        digest = hashlib.sha256()
        for key, tensor in sorted(model.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        mine = digest.hexdigest()[:20]
        everyone = [None] * self.size
        self.dist.all_gather_object(everyone, mine)
        if len(set(everyone)) != 1:
            raise CapbenchError(f"data-parallel replicas diverged: state digests per rank {everyone}")
        return mine
