"""Kernel formats, timing harness and whole-model latency: what a pruned model's sparsity buys in time."""

from capbench.provenance import machine, machine_line
from capbench.pruning.compact import compact_zeroed
from capbench.speed.bench import bench_model, pinned_threads
from capbench.speed.ceiling import FreeLinear, attainable, free_linears
from capbench.speed.formats import FORMAT_ORDER, FormatPolicy, KernelFormat, build_formats
from capbench.speed.inputs import Sentences, file_sentences, task_sentences
from capbench.speed.kernels import bench_layer, bench_linears
from capbench.speed.load import LoadMonitor, LoadProbe, busy_verdict
from capbench.speed.model import FormatLinear, realise, time_breakdown, time_models
from capbench.speed.oneshot import prune_one_shot
from capbench.speed.options import DEFAULT_MODEL_TOKEN_COUNTS, DEFAULT_TOKEN_COUNTS, BenchOptions
from capbench.speed.report import render_layer_table, render_model_table, render_speed_table
from capbench.speed.stats import median_ci, summarize
from capbench.speed.timing import Rounds, time_interleaved

__all__ = [
    "DEFAULT_MODEL_TOKEN_COUNTS",
    "DEFAULT_TOKEN_COUNTS",
    "FORMAT_ORDER",
    "BenchOptions",
    "FormatLinear",
    "FormatPolicy",
    "FreeLinear",
    "KernelFormat",
    "LoadMonitor",
    "LoadProbe",
    "Rounds",
    "Sentences",
    "attainable",
    "bench_layer",
    "bench_linears",
    "bench_model",
    "build_formats",
    "busy_verdict",
    "compact_zeroed",
    "file_sentences",
    "free_linears",
    "machine",
    "machine_line",
    "median_ci",
    "pinned_threads",
    "prune_one_shot",
    "realise",
    "render_layer_table",
    "render_model_table",
    "render_speed_table",
    "summarize",
    "task_sentences",
    "time_breakdown",
    "time_interleaved",
    "time_models",
]
