"""Kernel formats, timing harness and whole-model latency: what a pruned model's sparsity buys in time."""

from capbench.provenance import machine, machine_line
from capbench.pruning.compact import compact_zeroed
from capbench.speed.bench import bench_model
from capbench.speed.formats import FORMAT_ORDER, FormatPolicy, KernelFormat, build_formats
from capbench.speed.kernels import bench_layer, bench_linears
from capbench.speed.model import FormatLinear, realise, time_breakdown, time_models
from capbench.speed.options import DEFAULT_MODEL_TOKEN_COUNTS, DEFAULT_TOKEN_COUNTS, BenchOptions
from capbench.speed.report import render_layer_table, render_model_table, render_speed_table
from capbench.speed.timing import Rounds, summarize, time_interleaved

__all__ = [
    "DEFAULT_MODEL_TOKEN_COUNTS",
    "DEFAULT_TOKEN_COUNTS",
    "FORMAT_ORDER",
    "BenchOptions",
    "FormatLinear",
    "FormatPolicy",
    "KernelFormat",
    "Rounds",
    "bench_layer",
    "bench_linears",
    "bench_model",
    "build_formats",
    "compact_zeroed",
    "machine",
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
