"""What produced a number: package versions, the git commit, the machine."""

from __future__ import annotations

import functools
import os
import platform
import re
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import capbench

PACKAGES = ("torch", "transformers", "datasets", "numpy", "scikit-learn", "scipy")


def package_versions() -> dict[str, str]:
    versions = {"capbench": capbench.__version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


CODE_PATHS = ("capbench", "tasks", "pyproject.toml")  # what a run executes, relative to the checkout


@functools.cache
def git_commit() -> str | None:
    """The commit of the capbench checkout, with '+dirty' for local changes to what a run executes (the
    package, the task files, pyproject.toml; not records or leaderboards, which a grid itself writes into
    the checkout), or None outside a checkout.

    Read once per process (``capbench run`` reads it before any work): the code the process imported. A
    checkout updated under a running grid (a pull, a merge) must not relabel the records that process
    still writes with code it never ran."""
    source = Path(capbench.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


# ------------------------------------------------------------------------------------------------- machine
# The one machine description: records' provenance (`record["machine"]`), speed measurements
# (`record["speed"]["machine"]`), `capbench bench` JSON and the pytest-benchmark machine info all take it.

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
_CPUINFO_KEYS = {"cpu family": "cpu_family", "model": "cpu_model_id"}


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_details(cpuinfo: str | None = None) -> dict:
    """Family/model numbers and the SIMD flags that matter for GEMM, from /proc/cpuinfo when present."""
    info: dict = {}
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in _CPUINFO_KEYS and _CPUINFO_KEYS[key] not in info:
            info[_CPUINFO_KEYS[key]] = value.strip()
        elif key in ("flags", "features") and "simd" not in info:
            flags = set(value.split())
            info["simd"] = [f for f in _SIMD_FLAGS if f in flags]
    return info


def _torch_config_line(pattern: str) -> str | None:
    import torch

    try:
        text = torch.__config__.show()
    except Exception:  # pragma: no cover - exotic builds
        return None
    m = re.search(pattern, text)
    return m.group(1).strip() if m else None


def _torch_build() -> dict:
    import torch

    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - older torch
        capability = None
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "cpu_capability": capability,
        "mkl": bool(torch.backends.mkl.is_available()),
        "mkl_version": _torch_config_line(r"Math Kernel Library Version ([^\n]*?)(?:-Product|\n)"),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "onednn_version": _torch_config_line(r"MKL-DNN (v[0-9.]+)"),
        "openmp": bool(torch.backends.openmp.is_available()),
        "cuda": cuda,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
    }


def machine() -> dict:
    """A JSON-serialisable description of this machine and its torch build: CPU model, family and SIMD flags,
    cores, torch threads, platform, Python, torch version, CPU capability, BLAS backends, CUDA device."""
    import torch

    cpuinfo = _cpuinfo()
    return {
        "cpu": cpu_model(cpuinfo),
        **cpu_details(cpuinfo),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "system": platform.system(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **_torch_build(),
    }


def cpu_line(machine: Mapping) -> str:
    """The CPU as a board names it: model name, then family/model numbers and torch's kernel level where
    known (``AMD EPYC (family 23 model 1, AVX2)``). Two CPUs of one model name can run different kernels
    (AVX2 against AVX512) and so give different numbers: the name alone cannot tell them apart."""
    details = []
    if machine.get("cpu_family") is not None and machine.get("cpu_model_id") is not None:
        details.append(f"family {machine['cpu_family']} model {machine['cpu_model_id']}")
    if machine.get("cpu_capability"):
        details.append(str(machine["cpu_capability"]))
    name = machine.get("cpu", "unknown CPU")
    return f"{name} ({', '.join(details)})" if details else name


def machine_line(machine: Mapping) -> str:
    """One line for table headers and provenance: CPU (``cpu_line``), threads, torch version (and BLAS
    backends, CUDA device)."""
    extras = []
    if machine.get("mkl"):
        extras.append("MKL " + machine["mkl_version"] if machine.get("mkl_version") else "MKL")
    if machine.get("mkldnn"):
        extras.append("oneDNN " + machine["onednn_version"] if machine.get("onednn_version") else "oneDNN")
    if machine.get("cuda_device"):
        extras.append(machine["cuda_device"])
    tail = f" ({', '.join(extras)})" if extras else ""
    return (
        f"{cpu_line(machine)}, {machine.get('threads', '?')} threads, torch {machine.get('torch', '?')}{tail}"
    )
