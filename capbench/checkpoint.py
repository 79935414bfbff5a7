"""Mid-training checkpoints: a cell interrupted in its training resumes at the last saved step, bit for bit.

A grid cell of the ``default`` preset trains for an hour or more on a laptop CPU; a killed process (a session
that ends, a pre-empted node) must not lose that.  ``training.train`` saves, every ``every_seconds`` of
wall time at a step boundary, everything the next step depends on:

- the model's parameters and buffers (masks are non-persistent buffers, so ``state_dict`` would miss them);
- the optimizer, learning-rate schedule and gradient scaler;
- the random number generators (torch, CUDA, numpy, Python) and the data order: the loader's generators as
  they were at the start of the epoch, and how many batches of it were taken;
- the pruner's and the loss's state (``object_state``): schedules, learned scores, importance accumulators,
  mask churn, CAP's generator and snapshot banks, counters.

Resuming replays the cell's setup (the same seeded code up to the first step: teacher, calibration, banks),
restores that state and skips the epoch's taken batches, so an interrupted and resumed run gives the same
weights and predictions as an uninterrupted one (``tests/test_checkpoint.py`` checks every method).

``object_state`` walks an object's attributes: tensors, torch generators, numbers, strings, lists, tuples,
str-keyed dicts, numpy arrays and capbench objects (recursively) are state; frozen dataclasses (configs), modules (the model and teacher
are saved on their own), loaders, files and callables are not, nor are dicts keyed by anything but strings
(those are keyed by object identity, which a new process does not share).  A class lists what it does not
want saved in ``checkpoint_skip`` (fixed tables rebuilt by the setup, caches) or takes over with
``state_dict``/``load_state_dict``.  Tensors are restored in place, so the optimizer's and hooks'
references stay valid.

Files are written atomically (``jsonio.atomic_write_with``: temp file, fsync, rename) and read with ``torch.load(weights_only=True)``: a
checkpoint holds tensors and plain values only.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from capbench.errors import CapbenchError
from capbench.jsonio import atomic_write_with
from capbench.provenance import git_commit
from capbench.records import CHECKPOINTS_DIR

DEFAULT_EVERY_SECONDS = 600.0  # a lost interval costs at most 10 minutes; a MiniLM save takes about 1 s
FORMAT = 1

_UNSET = object()
_SKIP = ("skip", None)  # not state: restoring it leaves the live value


def checkpoint_path(directory: str | Path, name: str) -> Path:
    """``<directory>/.checkpoints/<name>.pt``: a cell's under its run directory, a teacher's under the cache."""
    return Path(directory) / CHECKPOINTS_DIR / f"{name}.pt"


# --------------------------------------------------------------------------------------- object state
def object_state(obj, _seen: set | None = None):
    """The checkpointable state of ``obj`` as nested tagged tuples of tensors and plain values (see the
    module docstring for what counts); ``_SKIP``-free.  Raises nothing: what is not state is left out."""
    captured = _capture(obj, set() if _seen is None else _seen)
    return None if captured is _SKIP else captured


def _capture(value, seen: set):
    if value is None or isinstance(value, bool | int | float | str):
        return ("prim", value)
    if isinstance(value, torch.Tensor):
        return ("tensor", value.detach().cpu().clone())
    if isinstance(value, torch.Generator):
        return ("gen", value.get_state())
    if isinstance(value, np.ndarray) and not isinstance(value, np.memmap):
        return ("array", torch.from_numpy(np.array(value)))
    if isinstance(value, nn.Module | torch.optim.Optimizer | torch.utils.data.DataLoader):
        return _SKIP
    if isinstance(value, list | tuple):
        return ("list" if isinstance(value, list) else "tuple", [_capture(v, seen) for v in value])
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            return _SKIP
        return ("dict", {k: _capture(v, seen) for k, v in value.items()})
    if not type(value).__module__.startswith("capbench.") or id(value) in seen or _frozen(value):
        return _SKIP
    seen.add(id(value))
    if hasattr(value, "state_dict") and hasattr(value, "load_state_dict"):
        return ("custom", _capture(value.state_dict(), seen))
    if not hasattr(value, "__dict__"):
        return _SKIP
    skip = set(getattr(type(value), "checkpoint_skip", ()))
    attrs = {k: _capture(v, seen) for k, v in vars(value).items() if k not in skip}
    return ("obj", {k: v for k, v in attrs.items() if v is not _SKIP})


def _frozen(value) -> bool:
    """A frozen dataclass (a config) cannot change during training: not state."""
    params = getattr(type(value), "__dataclass_params__", None)
    return bool(params is not None and params.frozen)


def load_object_state(obj, state) -> None:
    """Restore ``object_state(obj)`` into a live ``obj`` built by the same setup.

    Raises CapbenchError when the saved state cannot be put back (an object the live one lacks)."""
    if state is not None:
        _restore(obj, state, "state")


def _restore(live, saved, where: str):
    kind, value = saved
    if kind == "skip":
        return live
    if kind == "prim":
        return value
    if kind == "tensor":
        if isinstance(live, torch.Tensor) and live.shape == value.shape and live.dtype == value.dtype:
            with torch.no_grad():
                live.copy_(value)
            return live
        return value.to(live.device) if isinstance(live, torch.Tensor) else value
    if kind == "gen":
        if not isinstance(live, torch.Generator):
            raise CapbenchError(f"checkpoint: {where} was a generator; the live object has {type(live)}")
        live.set_state(value)
        return live
    if kind == "array":
        return value.numpy()
    if kind in ("list", "tuple"):
        olds = (
            list(live) if isinstance(live, list | tuple) and len(live) == len(value) else [None] * len(value)
        )
        items = [_restore(o, s, f"{where}[{i}]") for i, (o, s) in enumerate(zip(olds, value, strict=True))]
        if kind == "tuple":
            return tuple(items)
        if isinstance(live, list):
            live[:] = items  # keep the list's identity: others may hold it
            return live
        return items
    if kind == "dict":
        old = live if isinstance(live, dict) else {}
        items = {k: _restore(old.get(k), s, f"{where}[{k!r}]") for k, s in value.items()}
        if isinstance(live, dict):
            live.clear()
            live.update(items)
            return live
        return items
    if live is None:
        raise CapbenchError(f"checkpoint: {where} holds an object the resumed run did not build")
    if kind == "custom":
        live.load_state_dict(_restore(None, value, where))
        return live
    for name, attr in value.items():
        setattr(live, name, _restore(getattr(live, name, None), attr, f"{where}.{name}"))
    return live


# --------------------------------------------------------------------------------------- model, RNG, data
def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (persistent or not: masks are not) by name, on the host."""
    out = {name: p.detach().cpu().clone() for name, p in model.named_parameters()}
    out.update({name: b.detach().cpu().clone() for name, b in model.named_buffers()})
    return out


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``model_state`` back in place.  Raises CapbenchError if the names differ (another model)."""
    live = dict(model.named_parameters())
    live.update(dict(model.named_buffers()))
    if set(live) != set(state):
        missing, extra = sorted(set(live) - set(state)), sorted(set(state) - set(live))
        raise CapbenchError(f"checkpoint is of another model: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for name, tensor in live.items():
            tensor.copy_(state[name])


def rng_state() -> dict:
    """torch (and every CUDA device's), numpy and Python random states."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (kind, torch.from_numpy(np.array(keys)), int(pos), int(has_gauss), float(gauss)),
        "python": _to_lists(random.getstate()),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    random.setstate(_to_tuples(state["python"]))


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, tuple) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


def loader_generators(loader) -> list[torch.Generator]:
    """The torch generators that decide a loader's order: its own, its sampler's, its batch sampler's."""
    found, seen = [], set()
    for owner in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and id(gen) not in seen:
            seen.add(id(gen))
            found.append(gen)
    return found


def epoch_start_state(loader) -> dict:
    """What an epoch's order depends on, taken just before ``iter(loader)``: the loader's generators and the
    global torch generator (a loader without its own draws its workers' base seed from it)."""
    return {"loader": [g.get_state() for g in loader_generators(loader)], "torch": torch.get_rng_state()}


def resume_epoch(loader, start: dict, taken: int):
    """An iterator over the rest of an epoch: the order of ``start`` (``epoch_start_state``) with its first
    ``taken`` batches drawn and dropped.  The caller restores the step's RNG state afterwards."""
    gens = loader_generators(loader)
    if len(gens) != len(start["loader"]):
        raise CapbenchError("checkpoint: the loader's generators differ from the saved run's")
    for gen, state in zip(gens, start["loader"], strict=True):
        gen.set_state(state)
    torch.set_rng_state(start["torch"])
    batches = iter(loader)
    for _ in range(taken):
        next(batches)
    return batches


# --------------------------------------------------------------------------------------- the file
class Checkpointer:
    """Where one training run keeps its checkpoint and how often it writes it.

    ``path``: the file (``checkpoint_path``); ``every_seconds``: wall time between saves (0 or None: never
    save; a resumable file is still read).  ``identity``: what the file must match to be resumed (the cell's
    digest); a file of another identity is ignored and replaced.
    """

    def __init__(self, path: str | Path, every_seconds: float | None, identity: str):
        self.path = Path(path)
        self.every = float(every_seconds or 0.0)
        self.identity = identity
        self._last = time.monotonic()
        self.saves = 0
        self.commit = _UNSET

    def due(self) -> bool:
        return self.every > 0 and time.monotonic() - self._last >= self.every

    def save(self, state: dict) -> None:
        """Write ``state`` atomically (a crash mid-write leaves the previous checkpoint whole)."""
        if self.commit is _UNSET:
            self.commit = git_commit()  # once per run: the code that wrote this training state
        payload = {"format": FORMAT, "identity": self.identity, "commit": self.commit, **state}
        atomic_write_with(self.path, lambda handle: torch.save(payload, handle))
        self._last = time.monotonic()
        self.saves += 1

    def load(self) -> dict | None:
        """The saved state of this identity, or None (no file, another identity or format, unreadable)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged file is never trusted: train from the start
            return None
        if state.get("format") != FORMAT or state.get("identity") != self.identity:
            return None
        return state

    @staticmethod
    def saved_info(path: str | Path) -> dict | None:
        """{"step", "identity"} of a checkpoint file, read without loading its tensors (mmap); None when
        there is no readable checkpoint."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return {"step": int(state["step"]), "identity": str(state.get("identity", ""))}
        except Exception:
            return None

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
