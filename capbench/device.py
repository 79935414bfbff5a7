"""Where cells run and in what precision: ``--device`` and ``--precision``, resolved once, before any work.

The precision changes results, so it is part of each cell's spec (``train.precision``; a CPU-fp32 and a
GPU-bf16 run never share a digest or a leaderboard mean); the device is provenance only (``record.device``:
type, name, driver, peak memory).  Mixed precision is autocast around the forward and the loss (weights,
optimizer state, masks and pruning scores stay fp32); fp16 adds a gradient scaler.
"""

from __future__ import annotations

import contextlib
import os

import torch

from capbench.errors import CapbenchError

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def add_arguments(parser, precision_means: str) -> None:
    """``--device`` and ``--precision`` on a command's parser; ``precision_means`` says what the precision
    changes for that command (e.g. "part of the spec")."""
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA, then MPS, then CPU) | cpu | cuda | cuda:N | mps"
    )
    parser.add_argument(
        "--precision",
        default="auto",
        help=f"auto (bf16 on a GPU that supports it, else fp32) | fp32 | bf16 | fp16 (GPU only); {precision_means}",
    )


def resolve_device(text: str | None) -> torch.device:
    """``auto`` (CUDA if present, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` as a device.

    Raises CapbenchError, naming the flag and the fix, for an unknown name or a device this machine lacks."""
    text = (text or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", process_cuda_index())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise CapbenchError("--device mps: no Apple GPU (MPS) here; use --device cpu or auto")
        return torch.device("mps")
    if text == "cuda" or text.startswith("cuda:"):
        index = text.partition(":")[2]
        if index and not index.isdigit():
            raise CapbenchError(f"--device {text}: expected cuda or cuda:N with N a GPU index, e.g. cuda:0")
        if not torch.cuda.is_available():
            raise CapbenchError(f"--device {text}: no CUDA GPU here; use --device cpu (or auto)")
        number = int(index) if index else process_cuda_index()
        if number >= torch.cuda.device_count():
            raise CapbenchError(
                f"--device {text}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
        return torch.device("cuda", number)
    raise CapbenchError(f"--device {text!r}: expected one of {', '.join(DEVICES)}")


def process_cuda_index() -> int:
    """The GPU of this process: ``LOCAL_RANK``'s under torchrun or accelerate launch (one GPU per process on
    a node), else the current CUDA device."""
    local = os.environ.get("LOCAL_RANK", "")
    if local.isdigit() and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return int(local) % max(1, torch.cuda.device_count())
    return torch.cuda.current_device()


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_precision(text: str | None, device: torch.device) -> str:
    """``auto`` -> bf16 on a CUDA GPU that supports it, fp32 elsewhere; fp32, bf16 or fp16 as given.

    fp16 needs a GPU (its gradient scaler is CUDA's); bf16 runs on any device, on CPU through autocast's
    bfloat16 kernels.  Raises CapbenchError naming the flag and the fix."""
    text = (text or "auto").strip().lower()
    if text not in PRECISIONS:
        raise CapbenchError(f"--precision {text!r}: expected one of {', '.join(PRECISIONS)}")
    if text == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if text == "fp16" and device.type != "cuda":
        raise CapbenchError(f"--precision fp16 on {device.type}: fp16 needs a CUDA GPU; use bf16 or fp32")
    return text


def slow_precision_warning(device: torch.device, precision: str) -> str | None:
    """A one-line warning when ``precision`` is emulated on this device: bf16 on a CPU whose kernels lack
    AVX-512 (torch's CPU capability AVX2 or less) ran about 85x slower than fp32 here (the smoke preset's
    dense MiniLM RTE cell: 85 s per training step against about 1 s, 2026-12-01); None otherwise."""
    if device.type != "cpu" or precision != "bf16":
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    if "AVX512" in capability or "AMX" in capability:
        return None
    return (
        f"--precision bf16 on a CPU with {capability} kernels: bfloat16 is emulated here, about 85x slower "
        "than fp32 (measured on MiniLM); use --precision fp32 on this machine"
    )


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def autocast(device: torch.device, precision: str):
    """The forward's autocast context for ``precision`` (a no-op context for fp32)."""
    if precision in (None, "fp32"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def grad_scaler(device: torch.device, precision: str):
    """A gradient scaler for fp16 (None otherwise): fp16 gradients underflow without one."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def loader_options(device: torch.device | None) -> dict:
    """DataLoader settings for batches bound for ``device``.  On a GPU: page-locked (pinned) host memory, so
    ``to_device``'s non-blocking copies overlap compute, and worker processes collating the next batches
    (``CAPBENCH_LOADER_WORKERS``, default min(4, cores - 1)).  On CPU: none of either, since the step
    itself uses the cores and pinning would only cost."""
    if device is None or device.type != "cuda":
        return {}
    raw = os.environ.get("CAPBENCH_LOADER_WORKERS", "")
    if raw.strip():
        if not raw.strip().isdigit():
            raise CapbenchError(
                f"CAPBENCH_LOADER_WORKERS={raw!r}: expected a whole number of workers, e.g. 4"
            )
        workers = int(raw)
    else:
        workers = min(4, max(0, (os.cpu_count() or 1) - 1))
    options = {"pin_memory": True, "num_workers": workers}
    if workers > 0:
        options.update(persistent_workers=True, prefetch_factor=4)
    return options


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch's tensors on ``device`` (non-blocking from pinned memory); other values as they are."""
    if device.type == "cpu":
        return batch
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def describe(device: torch.device) -> dict:
    """The record's ``device`` section: type and name, for CUDA also the driver's CUDA version, the
    capability and the peak memory allocated by this process (``torch.cuda.max_memory_allocated``)."""
    out = {"type": device.type, "name": str(device)}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        out.update(
            name=torch.cuda.get_device_name(index),
            index=index,
            cuda=torch.version.cuda,
            capability=".".join(map(str, torch.cuda.get_device_capability(index))),
            peak_memory_bytes=int(torch.cuda.max_memory_allocated(index)),
        )
    return out
