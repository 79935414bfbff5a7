"""Which machine a timing was taken on: CPU model, threads, torch build, BLAS backends."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


_SIMD_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "neon",
    "asimd",
)


def cpu_details() -> dict:
    """Family/model numbers and the SIMD flags that matter for GEMM, from /proc/cpuinfo when present."""
    info: dict = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        names = {"cpu family": "cpu_family", "model": "cpu_model_id"}
        if key in names and names[key] not in info:
            info[names[key]] = value.strip()
        elif key in ("flags", "features") and "simd" not in info:
            flags = set(value.split())
            info["simd"] = [f for f in _SIMD_FLAGS if f in flags]
    return info


def _config_line(pattern: str) -> str | None:
    try:
        text = torch.__config__.show()
    except Exception:  # pragma: no cover - exotic builds
        return None
    m = re.search(pattern, text)
    return m.group(1).strip() if m else None


def describe_machine() -> dict:
    """A JSON-serialisable description of the machine and torch build used for timing."""
    cuda = torch.cuda.is_available()
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - older torch
        capability = None
    return {
        "cpu": cpu_model(),
        **cpu_details(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_capability": capability,
        "mkl": bool(torch.backends.mkl.is_available()),
        "mkl_version": _config_line(r"Math Kernel Library Version ([^\n]*?)(?:-Product|\n)"),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "onednn_version": _config_line(r"MKL-DNN (v[0-9.]+)"),
        "openmp": bool(torch.backends.openmp.is_available()),
        "cuda": cuda,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
    }


def machine_line(machine: dict) -> str:
    """One line for table headers: CPU model, threads, torch version."""
    extras = []
    if machine.get("mkl"):
        extras.append("MKL " + machine["mkl_version"] if machine.get("mkl_version") else "MKL")
    if machine.get("mkldnn"):
        extras.append("oneDNN " + machine["onednn_version"] if machine.get("onednn_version") else "oneDNN")
    if machine.get("cuda_device"):
        extras.append(machine["cuda_device"])
    tail = f" ({', '.join(extras)})" if extras else ""
    return (
        f"{machine.get('cpu', 'unknown CPU')}, {machine.get('threads', '?')} threads, "
        f"torch {machine.get('torch', '?')}{tail}"
    )
