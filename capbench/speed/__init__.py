"""Kernel formats, timing harness and whole-model latency: what a pruned model's sparsity buys in time."""

from capbench.pruning.compact import compact_zeroed
from capbench.speed.formats import FORMAT_ORDER, KernelFormat, build_formats
from capbench.speed.kernels import DEFAULT_TOKEN_COUNTS, bench_layer, bench_linears
from capbench.speed.machine import describe_machine, machine_line
from capbench.speed.model import (
    DEFAULT_MODEL_TOKEN_COUNTS,
    FormatLinear,
    realise,
    time_breakdown,
    time_models,
)
from capbench.speed.report import bench_model, render_layer_table, render_model_table, render_speed_table
from capbench.speed.timing import summarize, time_interleaved

__all__ = [
    "DEFAULT_MODEL_TOKEN_COUNTS",
    "DEFAULT_TOKEN_COUNTS",
    "FORMAT_ORDER",
    "FormatLinear",
    "KernelFormat",
    "bench_layer",
    "bench_linears",
    "bench_model",
    "build_formats",
    "compact_zeroed",
    "describe_machine",
    "machine_line",
    "realise",
    "render_layer_table",
    "render_model_table",
    "render_speed_table",
    "summarize",
    "time_breakdown",
    "time_interleaved",
    "time_models",
]
