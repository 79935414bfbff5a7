"""Per-layer kernel benchmark: every format of one linear layer, timed against dense in the same run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

import torch
from torch import nn

from capbench.layout import FFN_IN_PATHS, Layout
from capbench.speed.formats import KernelFormat, build_formats, sparsity_of
from capbench.speed.options import (
    DEFAULT_OPTIONS,
    DEFAULT_TOKEN_COUNTS,
    BenchOptions,
    parse_token_count,
    token_count_label,
)
from capbench.speed.timing import DEFAULT_ROUNDS, Clock, Rounds, time_interleaved


def theoretical_speedup(nnz: int, numel: int) -> float | None:
    """Ideal speedup from non-zero FLOPs, numel / nnz = 1 / (1 - s); None when nothing is left."""
    return numel / nnz if nnz > 0 else None


def iter_encoder_linears(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(qualified name, module) of every encoder linear (the six per layer of ``capbench.layout``, in module
    order; not embeddings, pooler or classifier), whether nn.Linear or a speed FormatLinear."""
    yield from Layout(model).linears()


# Encoder linears whose output goes through an elementwise activation into another linear only (the FFN
# input of every family), so a column-major output (no copy back from the sparse kernel's y^T) costs
# nothing downstream.
LAYOUT_FREE_SUFFIXES = FFN_IN_PATHS


def layout_free_output(name: str) -> bool:
    return name.endswith(LAYOUT_FREE_SUFFIXES)


def _stats_row(times: dict, speedup: dict) -> dict:
    return {
        "median_s": times["median"],
        "iqr_s": times["iqr"],
        "mad_s": times["mad"],
        "min_s": times["min"],
        "max_s": times["max"],
        "speedup": speedup["median"],
        "speedup_iqr": speedup["iqr"],
        "speedup_min": speedup["min"],
        "speedup_max": speedup["max"],
    }


def _best(results: dict, min_gain: float) -> tuple[str, float]:
    """The fastest format beating dense by more than `min_gain` (else dense) and its speedup."""
    best, best_speedup = "dense", 1.0
    for name, row in results.items():
        if name != "dense" and row["speedup"] > max(best_speedup, min_gain):
            best, best_speedup = name, row["speedup"]
    return best, best_speedup


def _time_at(
    formats: dict[str, KernelFormat], spec, rounds: Rounds, clock: Clock, g: torch.Generator
) -> dict:
    """Every available format on one random input of `spec` tokens, interleaved with dense."""
    dense = formats["dense"]
    batch, seq = parse_token_count(spec)
    x = torch.randn(batch * seq, dense.in_features, generator=g).to(dense.weight.device, dense.weight.dtype)
    fns: dict[str, Callable[[], object]] = {
        name: (lambda f=fmt, x=x: f(x)) for name, fmt in formats.items() if fmt.available
    }
    with torch.inference_mode():
        timing = time_interleaved(fns, rounds, baseline="dense", clock=clock)
    return {
        "tokens": batch * seq,
        "rounds": timing["rounds"],
        "threads": timing["threads"],
        "results": {name: _stats_row(timing["times"][name], timing["speedup"][name]) for name in fns},
    }


def time_formats(
    formats: dict[str, KernelFormat],
    token_counts: Iterable = DEFAULT_TOKEN_COUNTS,
    rounds: Rounds = DEFAULT_ROUNDS,
    *,
    clock: Clock = time.perf_counter,
    min_gain: float = 1.0,
    seed: int = 0,
) -> dict:
    """Time every available format at each token count, interleaved with dense; speedups per round."""
    out: dict = {}
    g = torch.Generator().manual_seed(seed)
    for spec in token_counts:
        row = _time_at(formats, spec, rounds, clock, g)
        row["best"], row["best_speedup"] = _best(row["results"], min_gain)
        out[token_count_label(spec)] = row
    return out


def bench_layer(
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    options: BenchOptions = DEFAULT_OPTIONS,
    *,
    name: str = "",
    mask: torch.Tensor | None = None,
    contiguous: bool = True,
    clock: Clock = time.perf_counter,
    seed: int = 0,
) -> dict:
    """Benchmark one linear layer in every format at each of `options.token_counts`.

    Returns the layer's shape, sparsity, theoretical speedup (non-zero FLOPs), each format's availability,
    per token count each format's time statistics and its speedup vs dense (median of per-round ratios),
    and the best format per token count (a format must beat dense by `options.min_gain` to be chosen).
    `contiguous=False`: sparse formats may return a column-major output (see `layout_free_output`).
    """
    w = weight.detach() if mask is None else weight.detach() * mask.to(weight.dtype)
    formats = build_formats(w, bias, replace(options.policy, contiguous=contiguous))
    nnz = int(torch.count_nonzero(w))
    result = {
        "name": name,
        "shape": list(w.shape),
        "nnz": nnz,
        "sparsity": sparsity_of(w),
        "theoretical_speedup": theoretical_speedup(nnz, w.numel()),
        "formats": {fname: fmt.describe() for fname, fmt in formats.items()},
    }
    rounds = options.rounds(options.layer_budget)
    timed = time_formats(
        formats, options.token_counts, rounds, clock=clock, min_gain=options.min_gain, seed=seed
    )
    result["token_counts"] = timed
    result["best"] = {label: row["best"] for label, row in timed.items()}
    return result


def bench_linears(
    model: nn.Module,
    options: BenchOptions = DEFAULT_OPTIONS,
    *,
    clock: Clock = time.perf_counter,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """`bench_layer` for every encoder linear of `model`, in module order.

    Sparse formats copy their output back to row-major except on `layout_free_output` layers, exactly as
    `capbench.speed.model.realise` runs them, so per-layer numbers are what the model gets.
    """
    layers = list(iter_encoder_linears(model))
    results = []
    for i, (name, module) in enumerate(layers):
        if progress is not None:
            progress(f"layer {i + 1}/{len(layers)} {name}")
        weight = getattr(module, "weight", None)
        if weight is None:
            continue
        contiguous = not layout_free_output(name)
        results.append(
            bench_layer(weight, module.bias, options, name=name, contiguous=contiguous, clock=clock)
        )
    return results


def summarize_layers(layers: list[dict], label: str) -> dict:
    """Across layers at one token count: format counts, median speedup, total-time speedup."""
    counts: dict[str, int] = {}
    speedups, dense_total, best_total = [], 0.0, 0.0
    for layer in layers:
        row = layer["token_counts"].get(label)
        if row is None:
            continue
        counts[row["best"]] = counts.get(row["best"], 0) + 1
        speedups.append(row["best_speedup"])
        dense_total += row["results"]["dense"]["median_s"]
        best_total += row["results"][row["best"]]["median_s"]
    return {
        "formats": counts,
        "median_layer_speedup": statistics.median(speedups) if speedups else None,
        "linear_time_speedup": dense_total / best_total if best_total > 0 else None,
    }
