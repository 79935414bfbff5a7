"""`bench_model`: the speed record of one pruned model (`record["speed"]`, `capbench bench --json`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from capbench.provenance import machine
from capbench.pruning.compact import compact_zeroed
from capbench.speed.kernels import bench_linears, iter_encoder_linears, summarize_layers
from capbench.speed.model import encoder_flops_per_token, format_counts, realise, time_breakdown, time_models
from capbench.speed.options import DEFAULT_OPTIONS, BenchOptions, parse_token_count
from capbench.speed.report import format_label
from capbench.speed.timing import Clock

SPEED_SCHEMA = 1
NOT_FASTER = 1.05  # a measured speedup below this is "not faster" (within run-to-run noise)
SPARSE = 0.05  # sparsity above which a model counts as sparse


def jsonable(obj):
    """Plain JSON: NaN/inf -> None, tuples -> lists, tensors -> numbers, keys -> str."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.item() if obj.numel() == 1 else obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def _tokens(label: str) -> int:
    return math.prod(parse_token_count(label))


def _nearest(label: str, candidates: tuple[str, ...]) -> str:
    return min(candidates, key=lambda c: abs(math.log(_tokens(c) / _tokens(label))))


def _linear_counts(model: nn.Module) -> tuple[int, int, list[tuple[int, ...]]]:
    numel = nnz = 0
    shapes = []
    for _, m in iter_encoder_linears(model):
        numel += m.weight.numel()
        nnz += int(torch.count_nonzero(m.weight))
        shapes.append(tuple(m.weight.shape))
    return numel, nnz, shapes


@dataclass
class _Subject:
    """What is timed: `runnable` (the pruned model, compacted when zeroed heads/neurons were removed) against
    `baseline` (the dense model, or the pruned one run densely)."""

    runnable: nn.Module
    baseline: nn.Module
    has_dense: bool
    compaction: dict | None
    compacted: bool  # runs as a physically smaller dense model (compacted here, or saved so)
    numel_dense: int
    nnz: int


def _subject(model: nn.Module, dense_model: nn.Module | None, options: BenchOptions) -> _Subject:
    model = model.eval()
    baseline = (dense_model if dense_model is not None else model).eval()
    numel_dense, _, dense_shapes = _linear_counts(baseline)
    _, nnz, shapes = _linear_counts(model)
    runnable, compaction = model, None
    if options.compact:
        compacted, compaction = compact_zeroed(model, multiple=options.compact_multiple)
        if compaction["changed"]:
            runnable = compacted
    smaller = bool(compaction and compaction["changed"]) or (
        dense_model is not None and shapes != dense_shapes
    )
    return _Subject(runnable, baseline, dense_model is not None, compaction, smaller, numel_dense, nnz)


def _choices(layers: list[dict], kernel_label: str) -> tuple:
    """Each layer's best format at one kernel token count, as a hashable key."""
    return tuple(sorted({layer["name"]: layer["best"][kernel_label] for layer in layers}.items()))


def _time_whole(subject: _Subject, layers: list[dict], options: BenchOptions, clock: Clock, say) -> tuple:
    """(per whole-model shape: the pruned model in its layers' best formats vs the baseline, interleaved;
    the realised models by layer-format choice)."""
    whole: dict = {}
    realised: dict[tuple, nn.Module] = {}
    for label in options.model_token_counts:
        kernel_label = _nearest(label, options.token_counts)
        key = _choices(layers, kernel_label)
        if key not in realised:
            realised[key] = realise(subject.runnable, dict(key), options.policy)
        say(f"whole model at {label} (layer formats chosen at {kernel_label})")
        models = {"dense": subject.baseline, "pruned": realised[key]}
        row = time_models(models, [label], options.rounds(options.model_budget), clock=clock)[label]
        row["kernel_token_count"] = kernel_label
        row["formats"] = format_counts(realised[key])
        whole[label] = row
    return whole, realised


def _breakdown(
    subject: _Subject, layers: list[dict], realised: dict, options: BenchOptions, clock: Clock, say
):
    """Where the time goes in the pruned (as timed) and the dense forward at the largest whole-model shape."""
    if not options.breakdown or not options.model_token_counts:
        return {}
    largest = max(options.model_token_counts, key=_tokens)
    say(f"time breakdown at {largest}")
    target = realised[_choices(layers, _nearest(largest, options.token_counts))]
    return {
        "token_count": largest,
        "pruned": time_breakdown(target, largest, warmup=options.warmup, clock=clock),
        "dense": time_breakdown(subject.baseline, largest, warmup=options.warmup, clock=clock),
    }


def _summary(subject: _Subject, layers: list[dict], whole: dict, options: BenchOptions) -> dict:
    """The headline numbers at 32x128 (else the last whole-model shape): measured vs theoretical speedup."""
    tcs = options.model_token_counts
    ref = "32x128" if "32x128" in whole else (tcs[-1] if tcs else None)
    sparsity = 1.0 - subject.nnz / subject.numel_dense if subject.numel_dense else 0.0
    theoretical = subject.numel_dense / subject.nnz if subject.nnz else None
    summary: dict = {
        "token_count": ref,
        "sparsity": sparsity,
        "compacted": subject.compacted,
        "theoretical_speedup": theoretical,
    }
    if ref is None:
        return summary
    f_dense = encoder_flops_per_token(subject.baseline, parse_token_count(ref)[1])
    f_pruned = encoder_flops_per_token(subject.runnable, parse_token_count(ref)[1])
    pruned_flops = f_pruned["linear_nonzero"] + f_pruned["attention_core"]
    summary["theoretical_model_speedup"] = (
        (f_dense["linear_dense"] + f_dense["attention_core"]) / pruned_flops if pruned_flops else None
    )
    pruned = whole[ref]["models"]["pruned"]
    measured = pruned["speedup"]
    kernel = summarize_layers(layers, whole[ref]["kernel_token_count"])
    summary.update(
        measured_speedup=measured,
        measured_speedup_iqr=pruned["speedup_iqr"],
        fraction_of_theoretical=(measured / theoretical) if theoretical else None,
        linear_time_speedup=kernel["linear_time_speedup"],
        median_layer_speedup=kernel["median_layer_speedup"],
        format=format_label(whole[ref]["formats"], subject.compacted),
        format_counts=whole[ref]["formats"],
        sparse_not_faster=bool(sparsity > SPARSE and measured < NOT_FASTER),
    )
    return summary


def _settings(options: BenchOptions, has_dense: bool) -> dict:
    return {
        "token_counts": options.token_counts,
        "model_token_counts": options.model_token_counts,
        "repeats": options.repeats,
        "warmup": options.warmup,
        "layer_budget_s": options.layer_budget,
        "min_gain": options.min_gain,
        "dense_baseline": "dense_model" if has_dense else "self (masked, dense kernels)",
        "min_sparsity": options.min_sparsity,
        "max_block_density": options.max_block_density,
        "block_sizes": options.block_sizes,
    }


def bench_model(
    model: nn.Module,
    dense_model: nn.Module | None = None,
    options: BenchOptions = DEFAULT_OPTIONS,
    *,
    clock: Clock = time.perf_counter,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Measure what a pruned model's sparsity buys in time on this machine. JSON-serialisable result.

    1. A structured model saved with zeroed heads / neurons is compacted (`compact_zeroed`); an already
       compacted model is simply a smaller dense model.
    2. Every encoder linear is timed in every format (dense, CSR, BSR, compact; 2:4 on CUDA) at each of
       `options.token_counts`; the best format per layer is the fastest one beating dense by `min_gain`.
    3. At each of `options.model_token_counts` (batch x seq), the model with each layer in its best format
       (chosen at the nearest kernel token count) is timed end to end against `dense_model`, interleaved.
       Without a dense model the baseline is `model` itself run densely (right for unstructured masks only).
    4. A hook-based breakdown of the pruned and dense forward at the largest shape.

    Sparse formats are skipped below `min_sparsity`, BSR above `max_block_density` stored blocks: the
    skipped formats are listed with the reason.
    """
    say = progress or (lambda msg: None)
    subject = _subject(model, dense_model, options)
    count = sum(1 for _ in iter_encoder_linears(subject.runnable))
    say(f"timing {count} encoder linears at {list(options.token_counts)}")
    layers = bench_linears(subject.runnable, options, clock=clock, progress=progress)
    whole, realised = _time_whole(subject, layers, options, clock, say)
    breakdown = _breakdown(subject, layers, realised, options, clock, say)
    return jsonable(
        {
            "schema": SPEED_SCHEMA,
            "machine": machine(),
            "settings": _settings(options, subject.has_dense),
            "compaction": subject.compaction,
            "layers": layers,
            "model": whole,
            "breakdown": breakdown,
            "summary": _summary(subject, layers, whole, options),
        }
    )
