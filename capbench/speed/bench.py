"""`bench_model`: the speed record of one pruned model (`record["speed"]`, `capbench bench --json`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from capbench.provenance import machine
from capbench.pruning.compact import compact_zeroed
from capbench.speed.ceiling import attainable, free_linears
from capbench.speed.formats import format_label
from capbench.speed.inputs import Sentences, model_inputs
from capbench.speed.kernels import bench_linears, iter_encoder_linears, summarize_layers
from capbench.speed.load import LoadMonitor, LoadProbe, available_cores, busy_verdict
from capbench.speed.model import encoder_flops_per_token, format_counts, realise, time_breakdown, time_models
from capbench.speed.options import DEFAULT_OPTIONS, BenchOptions, parse_token_count
from capbench.speed.timing import Clock

# 2: calibration apart from measurement, stopping rule, intervals, free-linears ceiling, machine load, inputs.
SPEED_SCHEMA = 2
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


# One thread by default: on a shared 2-vCPU machine, an idle one, MiniLM's dense batch-1 forward at 2 threads
# flips between 9.3 and 12.0 ms every few seconds (host contention invisible in /proc/stat), which moved one
# model's measured speedup between 1.23x and 1.13x from run to run; at 1 thread it stays within 13.7-15.0 ms.
DEFAULT_THREADS = 1


@contextmanager
def pinned_threads(threads: int | None) -> Iterator[int]:
    """torch intra-op threads set to `threads` (None: DEFAULT_THREADS) inside the block, the previous count
    restored after it; yields the count in force."""
    count = threads or DEFAULT_THREADS
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)


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

    @property
    def sparsity(self) -> float:
        """Encoder-linear sparsity against the dense model's weight count."""
        return 1.0 - self.nnz / self.numel_dense if self.numel_dense else 0.0


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


def _realised(subject: _Subject, layers: list[dict], options: BenchOptions) -> dict[str, nn.Module]:
    """Per whole-model shape: the pruned model with each layer in the format calibration chose for it at the
    nearest calibration shape (one copy per distinct choice)."""
    by_choice: dict[tuple, nn.Module] = {}
    out = {}
    for label in options.model_token_counts:
        key = _choices(layers, _nearest(label, options.token_counts))
        if key not in by_choice:
            by_choice[key] = realise(subject.runnable, dict(key), options.policy)
        out[label] = by_choice[key]
    return out


def _ceiling(row: dict, sparsity: float) -> None:
    """Add the measured ceiling (dense / free linears), the attainable speedup and the share of it reached."""
    free, pruned = row["models"]["free_linears"], row["models"]["pruned"]
    row["ceiling"] = free["speedup"]
    row["ceiling_ci"] = free["speedup_ci"]
    row.update(attainable(free["speedup"], sparsity))
    bound = row["attainable_speedup"]
    row["fraction_of_attainable"] = pruned["speedup"] / bound if bound else None


def _time_whole(
    subject: _Subject,
    realised: dict[str, nn.Module],
    options: BenchOptions,
    clock: Clock,
    say,
    sentences: Sentences | None,
) -> dict:
    """Per whole-model shape, a fresh interleaved measurement of the dense baseline, the pruned model in its
    calibrated formats and the same model with free encoder linears (the ceiling)."""
    whole: dict = {}
    free = free_linears(subject.runnable)
    rounds = options.model_rounds()
    for label in options.model_token_counts:
        kernel_label = _nearest(label, options.token_counts)
        say(f"whole model at {label}: dense, pruned (formats chosen at {kernel_label}), free linears")
        models = {"dense": subject.baseline, "pruned": realised[label], "free_linears": free}
        row = time_models(models, [label], rounds, clock=clock, seed=options.seed, sentences=sentences)[label]
        row["kernel_token_count"] = kernel_label
        row["formats"] = format_counts(realised[label])
        _ceiling(row, subject.sparsity)
        whole[label] = row
    return whole


def _breakdown(subject: _Subject, realised: dict, options: BenchOptions, clock: Clock, say, sentences):
    """Where the time goes in the pruned (as timed) and the dense forward at the largest whole-model shape."""
    if not options.breakdown or not options.model_token_counts:
        return {}
    largest = max(options.model_token_counts, key=_tokens)
    say(f"time breakdown at {largest}")
    batch, seq = parse_token_count(largest)
    first = model_inputs(subject.baseline, batch, seq, sentences, options.seed).batches[0]
    return {
        "token_count": largest,
        "pruned": time_breakdown(
            realised[largest], largest, warmup=options.warmup, clock=clock, inputs=first
        ),
        "dense": time_breakdown(subject.baseline, largest, warmup=options.warmup, clock=clock, inputs=first),
    }


def _shape_summary(row: dict) -> dict:
    pruned = row["models"]["pruned"]
    return {
        "batch": row["batch"],
        "measured_speedup": pruned["speedup"],
        "measured_speedup_iqr": pruned["speedup_iqr"],
        "measured_speedup_ci": pruned["speedup_ci"],
        "rounds": row["rounds"],
        "stop": row["stop"]["reason"],
        "ceiling": row["ceiling"],
        "linear_fraction": row["linear_fraction"],
        "attainable_speedup": row["attainable_speedup"],
        "fraction_of_attainable": row["fraction_of_attainable"],
    }


def _summary(subject: _Subject, layers: list[dict], whole: dict, options: BenchOptions) -> dict:
    """The headline numbers at the largest whole-model shape (32x128 by default), and each shape's."""
    ref = max(whole, key=_tokens) if whole else None
    theoretical = subject.numel_dense / subject.nnz if subject.nnz else None
    summary: dict = {
        "token_count": ref,
        "sparsity": subject.sparsity,
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
    head = _shape_summary(whole[ref])
    measured = head["measured_speedup"]
    kernel = summarize_layers(layers, whole[ref]["kernel_token_count"])
    summary.update(
        {k: v for k, v in head.items() if k not in ("batch", "stop")},
        fraction_of_theoretical=(measured / theoretical) if theoretical else None,
        linear_time_speedup=kernel["linear_time_speedup"],
        median_layer_speedup=kernel["median_layer_speedup"],
        format=format_label(whole[ref]["formats"], subject.compacted),
        format_counts=whole[ref]["formats"],
        sparse_not_faster=bool(subject.sparsity > SPARSE and measured < NOT_FASTER),
        inputs=whole[ref]["inputs"]["kind"],
        shapes={label: _shape_summary(row) for label, row in whole.items()},
    )
    return summary


def _settings(options: BenchOptions, has_dense: bool, threads: int, threads_source: str) -> dict:
    return {
        "token_counts": options.token_counts,
        "model_token_counts": options.model_token_counts,
        "threads": threads,
        "threads_source": threads_source,
        "calibration_rounds": options.calibration_rounds().settings(),
        "model_rounds": options.model_rounds().settings(),
        "repeats": options.repeats,
        "min_repeats": options.min_repeats,
        "layer_min_repeats": options.layer_min_repeats,
        "warmup": options.warmup,
        "target_spread": options.target_spread,
        "layer_budget_s": options.layer_budget,
        "model_budget_s": options.model_budget,
        "confidence": options.confidence,
        "min_gain": options.min_gain,
        "choice_rule": (
            f"a sparse format is chosen when the lower end of the {options.confidence:.0%} interval of its "
            f"median speedup over dense exceeds {options.min_gain}"
        ),
        "dense_baseline": "dense_model" if has_dense else "self (masked, dense kernels)",
        "min_sparsity": options.min_sparsity,
        "max_block_density": options.max_block_density,
        "block_sizes": options.block_sizes,
        "busy_cores": options.busy_cores,
        "sentences": options.sentences,
        "seed": options.seed,
    }


def _load(readings: dict[str, dict], threads: int, options: BenchOptions) -> tuple[dict, bool | None, str]:
    """(the load record, busy, reason): each phase's reading with its verdict; busy when any phase was."""
    cores = available_cores()
    verdicts = {}
    for phase, reading in readings.items():
        busy, why = busy_verdict(reading, threads, cores, options.busy_cores)
        verdicts[phase] = {**reading, "busy": busy, "reason": why}
    flagged = [f"{phase}: {v['reason']}" for phase, v in verdicts.items() if v["busy"]]
    if flagged:
        busy, reason = True, "; ".join(flagged)
    elif all(v["busy"] is None for v in verdicts.values()):
        busy, reason = None, next(iter(verdicts.values()))["reason"] if verdicts else "not measured"
    else:
        busy, reason = False, "; ".join(f"{phase}: {v['reason']}" for phase, v in verdicts.items())
    record = {"cores": cores, "threads": threads, "threshold_cores": options.busy_cores, "phases": verdicts}
    return record, busy, reason


def place(model: nn.Module | None, device: torch.device, precision: str = "fp32") -> nn.Module | None:
    """``model`` on ``device`` with its weights in the timed dtype: bf16 or fp16 for those precisions (what a
    half-precision deployment runs, and what the 2:4 kernels take), else fp32.  None stays None."""
    if model is None:
        return None
    from capbench.device import DTYPES

    return model.to(device=device, dtype=DTYPES.get(precision, torch.float32)).eval()


def bench_model(
    model: nn.Module,
    dense_model: nn.Module | None = None,
    options: BenchOptions = DEFAULT_OPTIONS,
    *,
    clock: Clock | None = None,
    progress: Callable[[str], None] | None = None,
    sentences: Sentences | None = None,
    load_probe: LoadProbe | None = None,
) -> dict:
    """Measure what a pruned model's sparsity buys in time on this machine. JSON-serialisable result.

    1. torch runs `options.threads` intra-op threads (default DEFAULT_THREADS, 1) throughout,
       restored afterwards; the count is recorded.
    2. A structured model saved with zeroed heads / neurons is compacted (`compact_zeroed`); an already
       compacted model is simply a smaller dense model.
    3. Calibration: every encoder linear is timed in every format (dense, CSR, BSR, compact; 2:4 on CUDA) at
       each of `options.token_counts`, fed the input layout it gets in the model; a layer runs the fastest
       sparse format whose interval clears `min_gain` (else dense).
    4. Measurement, separate from the choice: at each of `options.model_token_counts` the dense baseline,
       the pruned model in its chosen formats and the same model with free encoder linears (the ceiling,
       `capbench.speed.ceiling`) run interleaved until the spread rule or a cap stops them. Inputs are
       `sentences` (real sentences with their padding) when given, else random token ids. Without a dense
       model the baseline is `model` itself run densely (right for unstructured masks only).
    5. A hook-based breakdown of the pruned and dense forward at the largest shape.

    Machine load is read around calibration and measurement (`capbench.speed.load`, through `load_probe`):
    `busy` is True, with the reason and numbers, when other processes used more than `options.busy_cores`
    cores beside them. Sparse formats are skipped below `min_sparsity`, BSR above `max_block_density` stored
    blocks: the skipped formats are listed with the reason.
    """
    with pinned_threads(options.threads) as threads:
        return _bench(model, dense_model, options, clock, progress, sentences, load_probe, threads)


def _bench(model, dense_model, options, clock, progress, sentences, load_probe, threads) -> dict:
    say = progress or (lambda msg: None)
    described = machine()  # inside the pinned thread count: it records it
    subject = _subject(model, dense_model, options)
    count = sum(1 for _ in iter_encoder_linears(subject.runnable))
    say(f"calibration: {count} encoder linears at {list(options.token_counts)}, {threads} threads")
    monitor = LoadMonitor(load_probe)
    monitor.start()
    layers = bench_linears(subject.runnable, options, clock=clock, progress=progress)
    readings = {"calibration": monitor.stop()}
    realised = _realised(subject, layers, options)
    monitor.start()
    whole = _time_whole(subject, realised, options, clock, say, sentences)
    readings["measurement"] = monitor.stop()
    breakdown = _breakdown(subject, realised, options, clock, say, sentences)
    load, busy, reason = _load(readings, threads, options)
    summary = _summary(subject, layers, whole, options)
    summary.update(busy=busy, busy_reason=reason)
    source = "given" if options.threads else "default"
    first = next(iter(whole.values()), None)
    return jsonable(
        {
            "schema": SPEED_SCHEMA,
            "machine": described,
            "settings": _settings(options, subject.has_dense, threads, source),
            "inputs": first["inputs"] if first else None,
            "compaction": subject.compaction,
            "layers": layers,
            "model": whole,
            "breakdown": breakdown,
            "load": load,
            "busy": busy,
            "busy_reason": reason,
            "summary": summary,
        }
    )
