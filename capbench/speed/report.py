"""`bench_model`: the speed record of one pruned model; tables for the CLI and the leaderboard."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

from capbench.pruning.compact import compact_zeroed
from capbench.speed.formats import DEFAULT_BLOCK_SIZES
from capbench.speed.kernels import (
    DEFAULT_TOKEN_COUNTS,
    bench_linears,
    iter_encoder_linears,
    parse_token_count,
    summarize_layers,
    token_count_label,
)
from capbench.speed.machine import describe_machine, machine_line
from capbench.speed.model import (
    DEFAULT_MODEL_TOKEN_COUNTS,
    encoder_flops_per_token,
    format_counts,
    realise,
    time_breakdown,
    time_models,
)
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


def _nearest(label: str, candidates: list[str]) -> str:
    tokens = math.prod(parse_token_count(label))
    return min(candidates, key=lambda c: abs(math.log(math.prod(parse_token_count(c)) / tokens)))


def _linear_counts(model: nn.Module) -> tuple[int, int, list[tuple[int, ...]]]:
    numel = nnz = 0
    shapes = []
    for _, m in iter_encoder_linears(model):
        numel += m.weight.numel()
        nnz += int(torch.count_nonzero(m.weight))
        shapes.append(tuple(m.weight.shape))
    return numel, nnz, shapes


def format_label(counts: dict[str, int], compacted: bool) -> str:
    parts = ["compacted"] if compacted else []
    total = sum(counts.values())
    for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if name != "dense":
            parts.append(name if n == total else f"{name} {n}/{total}")
    return " + ".join(parts) if parts else "dense"


def bench_model(
    model: nn.Module,
    dense_model: nn.Module | None = None,
    *,
    token_counts: Iterable = DEFAULT_TOKEN_COUNTS,
    model_token_counts: Iterable = DEFAULT_MODEL_TOKEN_COUNTS,
    repeats: int = 5,
    warmup: int = 1,
    layer_budget: float | None = 2.0,
    model_budget: float | None = None,
    breakdown: bool = True,
    compact: bool = True,
    compact_multiple: int = 16,
    min_sparsity: float = 0.5,
    max_block_density: float = 0.5,
    block_sizes: Iterable[int] = DEFAULT_BLOCK_SIZES,
    min_gain: float = 1.02,
    clock: Clock = time.perf_counter,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Measure what a pruned model's sparsity buys in time on this machine. JSON-serialisable result.

    1. A structured model saved with zeroed heads / neurons is compacted (`compact_zeroed`); an already
       compacted model is simply a smaller dense model.
    2. Every encoder linear is timed in every format (dense, CSR, BSR, compact; 2:4 on CUDA) at each of
       `token_counts`; the best format per layer is the fastest one beating dense by `min_gain`.
    3. At each of `model_token_counts` (batch x seq), the model with each layer in its best format (chosen at
       the nearest kernel token count) is timed end to end against `dense_model`, interleaved. Without a
       dense model the baseline is `model` itself run densely (right for unstructured masks only).
    4. A hook-based breakdown of the pruned and dense forward at the largest shape.

    Sparse formats are skipped below `min_sparsity`, BSR above `max_block_density` stored blocks: the
    skipped formats are listed with the reason.
    """
    say = progress or (lambda msg: None)
    token_counts = [token_count_label(t) for t in token_counts]
    model_token_counts = [token_count_label(t) for t in model_token_counts]
    model = model.eval()
    baseline = (dense_model if dense_model is not None else model).eval()
    numel_dense, _, dense_shapes = _linear_counts(baseline)
    numel, nnz, shapes = _linear_counts(model)

    runnable, compaction = model, None
    if compact:
        compacted, compaction = compact_zeroed(model, multiple=compact_multiple)
        if compaction["changed"]:
            runnable = compacted
    # compacted: runs as a physically smaller dense model (zeroed heads/neurons removed here, or saved so)
    compacted_model = bool(compaction and compaction["changed"]) or (
        dense_model is not None and shapes != dense_shapes
    )

    format_kwargs = dict(
        min_sparsity=min_sparsity, max_block_density=max_block_density, block_sizes=tuple(block_sizes)
    )
    say(f"timing {sum(1 for _ in iter_encoder_linears(runnable))} encoder linears at {token_counts}")
    layers = bench_linears(
        runnable,
        token_counts=token_counts,
        repeats=repeats,
        warmup=warmup,
        budget=layer_budget,
        clock=clock,
        min_gain=min_gain,
        progress=progress,
        **format_kwargs,
    )

    whole: dict = {}
    realised_by_choice: dict[tuple, nn.Module] = {}
    realised = runnable
    for label in model_token_counts:
        kernel_label = _nearest(label, token_counts)
        choices = {layer["name"]: layer["best"][kernel_label] for layer in layers}
        key = tuple(sorted(choices.items()))
        if key not in realised_by_choice:
            realised_by_choice[key] = realise(runnable, choices, **format_kwargs)
        realised = realised_by_choice[key]
        say(f"whole model at {label} (layer formats chosen at {kernel_label})")
        models = {"dense": baseline, "pruned": realised}
        row = time_models(models, [label], repeats=repeats, warmup=warmup, budget=model_budget, clock=clock)[
            label
        ]
        row["kernel_token_count"] = kernel_label
        row["formats"] = format_counts(realised)
        whole[label] = row

    breakdowns = {}
    if breakdown and model_token_counts:
        largest = max(model_token_counts, key=lambda t: math.prod(parse_token_count(t)))
        say(f"time breakdown at {largest}")
        key = tuple(
            sorted(
                {layer["name"]: layer["best"][_nearest(largest, token_counts)] for layer in layers}.items()
            )
        )
        target = realised_by_choice.get(key, realised)
        breakdowns = {
            "token_count": largest,
            "pruned": time_breakdown(target, largest, warmup=warmup, clock=clock),
            "dense": time_breakdown(baseline, largest, warmup=warmup, clock=clock),
        }

    ref = "32x128" if "32x128" in whole else (model_token_counts[-1] if model_token_counts else None)
    sparsity = 1.0 - nnz / numel_dense if numel_dense else 0.0
    theoretical = numel_dense / nnz if nnz else None
    summary: dict = {
        "token_count": ref,
        "sparsity": sparsity,
        "compacted": compacted_model,
        "theoretical_speedup": theoretical,
    }
    if ref is not None:
        _, seq = parse_token_count(ref)
        f_dense = encoder_flops_per_token(baseline, seq)
        f_pruned = encoder_flops_per_token(runnable, seq)
        pruned_flops = f_pruned["linear_nonzero"] + f_pruned["attention_core"]
        summary["theoretical_model_speedup"] = (
            (f_dense["linear_dense"] + f_dense["attention_core"]) / pruned_flops if pruned_flops else None
        )
        measured = whole[ref]["models"]["pruned"]["speedup"]
        counts = whole[ref]["formats"]
        kernel = summarize_layers(layers, whole[ref]["kernel_token_count"])
        summary.update(
            measured_speedup=measured,
            measured_speedup_iqr=whole[ref]["models"]["pruned"]["speedup_iqr"],
            fraction_of_theoretical=(measured / theoretical) if theoretical else None,
            linear_time_speedup=kernel["linear_time_speedup"],
            median_layer_speedup=kernel["median_layer_speedup"],
            format=format_label(counts, compacted_model),
            format_counts=counts,
            sparse_not_faster=bool(sparsity > SPARSE and measured < NOT_FASTER),
        )
    return jsonable(
        {
            "schema": SPEED_SCHEMA,
            "machine": describe_machine(),
            "settings": {
                "token_counts": token_counts,
                "model_token_counts": model_token_counts,
                "repeats": repeats,
                "warmup": warmup,
                "layer_budget_s": layer_budget,
                "min_gain": min_gain,
                "dense_baseline": "dense_model"
                if dense_model is not None
                else "self (masked, dense kernels)",
                **format_kwargs,
            },
            "compaction": compaction,
            "layers": layers,
            "model": whole,
            "breakdown": breakdowns,
            "summary": summary,
        }
    )


# ---------------------------------------------------------------------------------------------- tables


def _fmt(x, spec: str = ".2f", suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:{spec}}{suffix}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    from capbench.report.markdown import markdown_table as table

    return table(header, rows)


def render_layer_table(speed: dict) -> str:
    """Per-layer table: shape, sparsity, ideal, dense time and each format's speedup per token count."""
    layers = speed.get("layers") or []
    if not layers:
        return "(no per-layer timings)"
    labels = speed["settings"]["token_counts"]
    names: list[str] = []  # formats timed on at least one layer; the others are listed below the table
    for layer in layers:
        for row in layer["token_counts"].values():
            for name in row["results"]:
                if name not in names:
                    names.append(name)
    blocks = []
    for label in labels:
        header = [
            "layer",
            "shape",
            "sparsity",
            "ideal",
            "dense ms",
            *[n for n in names if n != "dense"],
            "best",
        ]
        rows = []
        for layer in layers:
            row = layer["token_counts"].get(label)
            if row is None:
                continue
            cells = [
                layer["name"],
                "x".join(map(str, layer["shape"])),
                _fmt(layer["sparsity"], ".3f"),
                _fmt(layer["theoretical_speedup"], ".1f", "x"),
                _fmt(row["results"]["dense"]["median_s"] * 1e3, ".3f"),
            ]
            for name in names:
                if name == "dense":
                    continue
                res = row["results"].get(name)
                cells.append(_fmt(res["speedup"], ".2f", "x") if res else "—")
            cells.append(f"{row['best']} ({row['best_speedup']:.2f}x)")
            rows.append(cells)
        blocks.append(
            f"Per-layer speedup vs dense at {label} tokens (median of per-round ratios):\n\n"
            + markdown_table(header, rows)
        )
    unavailable = {}
    for layer in layers:
        for name, info in layer["formats"].items():
            if not info["available"] and not info["reason"].startswith("skipped"):
                unavailable.setdefault(name, info["reason"])
    skipped = sorted(
        {
            name
            for layer in layers
            for name, info in layer["formats"].items()
            if info["reason"].startswith("skipped")
        }
    )
    notes = [f"- {name}: unavailable ({reason})" for name, reason in unavailable.items()]
    if skipped:
        notes.append(
            f"- skipped on some layers (sparsity/block density too low to pay): {', '.join(skipped)}"
        )
    return "\n\n".join(blocks) + ("\n\n" + "\n".join(notes) if notes else "")


def render_model_table(speed: dict) -> str:
    """Whole-model latency/throughput per shape, the summary line and the time breakdown."""
    header = ["shape", "dense ms", "pruned ms", "speedup", "IQR", "pruned tokens/s", "formats"]
    rows = []
    for label, row in (speed.get("model") or {}).items():
        d, p = row["models"]["dense"], row["models"]["pruned"]
        rows.append(
            [
                label,
                _fmt(d["latency_s"]["median"] * 1e3, ".1f"),
                _fmt(p["latency_s"]["median"] * 1e3, ".1f"),
                _fmt(p["speedup"], ".2f", "x"),
                _fmt(p["speedup_iqr"], ".2f"),
                _fmt(p["tokens_per_s"], ",.0f"),
                format_label(row["formats"], speed["summary"].get("compacted", False)),
            ]
        )
    parts = [f"Whole model vs dense on {machine_line(speed['machine'])}:", markdown_table(header, rows)]
    s = speed.get("summary") or {}
    if s.get("measured_speedup") is not None:
        line = (
            f"Summary at {s['token_count']}: sparsity {s['sparsity']:.3f}, measured {s['measured_speedup']:.2f}x, "
            f"theoretical 1/(1-s) {_fmt(s['theoretical_speedup'], '.2f', 'x')} "
            f"(encoder incl. attention core {_fmt(s.get('theoretical_model_speedup'), '.2f', 'x')}), "
            f"{_fmt((s.get('fraction_of_theoretical') or 0) * 100, '.0f', '%')} of theoretical"
        )
        if s.get("sparse_not_faster"):
            line += " — SPARSE BUT NOT FASTER"
        parts.append(line)
    b = speed.get("breakdown") or {}
    if b:
        header = ["part", "dense ms", "dense %", "pruned ms", "pruned %"]
        rows = []
        for part in ("encoder_linears", "attention_core", "embeddings", "other", "total"):
            ds, ps = b["dense"]["seconds"][part], b["pruned"]["seconds"][part]
            df = b["dense"]["fractions"].get(part, 1.0) if part != "total" else 1.0
            pf = b["pruned"]["fractions"].get(part, 1.0) if part != "total" else 1.0
            rows.append(
                [
                    part,
                    _fmt(ds * 1e3, ".1f"),
                    _fmt(df * 100, ".0f"),
                    _fmt(ps * 1e3, ".1f"),
                    _fmt(pf * 100, ".0f"),
                ]
            )
        parts.append(f"Where the time goes at {b['token_count']}:\n\n" + markdown_table(header, rows))
    return "\n\n".join(parts)


def render_speed_table(records: Iterable[dict]) -> str:
    """Leaderboard speed table (`speed`, declared in capbench.report.builtin): one line per done record with
    a measurement: measured speedup, theoretical, fraction of it, format used."""
    from capbench.report import tables

    return tables.render_records("speed", list(records))
