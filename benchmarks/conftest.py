"""pytest-benchmark suite for capbench's kernel formats (not part of the default test run)."""

import os

import torch

from capbench.provenance import machine

# Same thread policy as the tests; CAPBENCH_BENCH_THREADS overrides it.
torch.set_num_threads(int(os.environ.get("CAPBENCH_BENCH_THREADS", max(1, min(2, os.cpu_count() or 1)))))


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record CPU model, threads, torch and BLAS builds in the saved JSON, so compares say what ran where."""
    machine_info["capbench"] = machine()
