"""Per-layer kernel benchmark: every format of one linear layer, timed against dense in the same run."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import replace

import torch
from torch import nn

from capbench.layout import FFN_IN_PATHS, ROLES, Layout
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
        "speedup_ci": [speedup["ci_low"], speedup["ci_high"]],
    }


def _best(results: dict, min_gain: float) -> tuple[str, float]:
    """The sparse format with the highest median speedup among those whose interval of the median lies wholly
    above `min_gain` (a win larger than its own noise), else dense; and its median speedup.

    Identical layers then choose alike: a format that is faster by less than the round-to-round noise loses
    to dense every time, rather than winning on some layers by chance.
    """
    best, best_speedup = "dense", 1.0
    for name, row in results.items():
        low = row["speedup_ci"][0] if "speedup_ci" in row else row["speedup"]
        if name != "dense" and low > min_gain and row["speedup"] > best_speedup:
            best, best_speedup = name, row["speedup"]
    return best, best_speedup


COLUMN_MAJOR = "column-major"
ROW_MAJOR = "row-major"


def _input(spec, dense: KernelFormat, g: torch.Generator, column_major: bool) -> torch.Tensor:
    """Random tokens x features of `spec`; column-major (strides (1, tokens)) as a sparse-left format's
    transposed output reaches the next linear after an elementwise activation."""
    batch, seq = parse_token_count(spec)
    tokens, features = batch * seq, dense.in_features
    x = (
        torch.randn(features, tokens, generator=g).t()
        if column_major
        else torch.randn(tokens, features, generator=g)
    )
    return x.to(dense.weight.device, dense.weight.dtype)


def _time_at(
    formats: dict[str, KernelFormat],
    spec,
    rounds: Rounds,
    clock: Clock,
    g: torch.Generator,
    column_major: bool = False,
) -> dict:
    """Every available format on one random input of `spec` tokens (in the given layout), interleaved with
    dense."""
    x = _input(spec, formats["dense"], g, column_major)
    fns: dict[str, Callable[[], object]] = {
        name: (lambda f=fmt, x=x: f(x)) for name, fmt in formats.items() if fmt.available
    }
    with torch.inference_mode():
        timing = time_interleaved(fns, rounds, baseline="dense", clock=clock)
    return {
        "tokens": x.shape[0],
        "input_layout": COLUMN_MAJOR if column_major else ROW_MAJOR,
        "rounds": timing["rounds"],
        "stop": timing["stop"],
        "threads": timing["threads"],
        "results": {name: _stats_row(timing["times"][name], timing["speedup"][name]) for name in fns},
    }


def time_formats(
    formats: dict[str, KernelFormat],
    token_counts: Iterable = DEFAULT_TOKEN_COUNTS,
    rounds: Rounds = DEFAULT_ROUNDS,
    *,
    clock: Clock | None = None,
    min_gain: float = 1.0,
    seed: int = 0,
    column_major: Collection[str] = (),
) -> dict:
    """Time every available format at each token count, interleaved with dense; speedups per round. The
    input is column-major at the token counts (labels) in `column_major`, row-major elsewhere. Each row says
    the chosen format (`_best`) and the layout of its output."""
    out: dict = {}
    g = torch.Generator().manual_seed(seed)
    for spec in token_counts:
        label = token_count_label(spec)
        row = _time_at(formats, spec, rounds, clock, g, label in column_major)
        row["best"], row["best_speedup"] = _best(row["results"], min_gain)
        row["output_layout"] = COLUMN_MAJOR if formats[row["best"]].column_major_output else ROW_MAJOR
        out[label] = row
    return out


def bench_layer(
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    options: BenchOptions = DEFAULT_OPTIONS,
    *,
    name: str = "",
    mask: torch.Tensor | None = None,
    contiguous: bool = True,
    clock: Clock | None = None,
    seed: int = 0,
    column_major: Collection[str] = (),
) -> dict:
    """Benchmark one linear layer in every format at each of `options.token_counts`.

    Returns the layer's shape, sparsity, theoretical speedup (non-zero FLOPs), each format's availability,
    per token count each format's time statistics and its speedup vs dense (median of per-round ratios, with
    its interval), and the best format per token count (see `_best`: its interval must clear
    `options.min_gain`). `contiguous=False`: sparse formats may return a column-major output (see
    `layout_free_output`); `column_major`: token counts at which the layer's input is column-major.
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
    rounds = options.calibration_rounds()
    timed = time_formats(
        formats,
        options.token_counts,
        rounds,
        clock=clock,
        min_gain=options.min_gain,
        seed=seed,
        column_major=column_major,
    )
    result["token_counts"] = timed
    result["best"] = {label: row["best"] for label, row in timed.items()}
    return result


def iter_encoder_linear_roles(model: nn.Module) -> Iterator[tuple[str, str, nn.Module]]:
    """(qualified name, role, module) of every encoder linear, layer by layer in `capbench.layout.ROLES`
    order (query, key, value, attn_out, ffn_in, ffn_out)."""
    linears = Layout(model).linears()
    for (name, module), role in zip(linears, ROLES * (len(linears) // len(ROLES)), strict=True):
        yield name, role, module


def _group_key(layer: dict, role: str, label: str) -> tuple:
    """Layers that should run one format at a token count: same role and shape, sparsity within 0.05, same
    input layout."""
    row = layer["token_counts"][label]
    return (role, tuple(layer["shape"]), round(layer["sparsity"] * 20) / 20, row["input_layout"])


def _choose_by_group(layers: list[dict], role: str, min_gain: float) -> None:
    """Replace each layer's own choice by its group's (see `_group_key`): the sparse format with the highest
    median over the group's layers of their median speedups, when that exceeds `min_gain` (a group of one
    keeps `_best`'s interval rule). Identical layers then run one format: per-layer choices between formats
    within a few percent of each other follow timing noise, and which layers drew the faster format moved
    whole-model speedups between runs of the same model (MiniLM random-90% at 32x128: 1.23x with 12/36
    layers on CSR, 1.14x with 10/36 in the next run; per-layer choice)."""
    labels = list(layers[0]["token_counts"]) if layers else []
    for label in labels:
        groups: dict[tuple, list[dict]] = {}
        for layer in layers:
            groups.setdefault(_group_key(layer, role, label), []).append(layer)
        for members in groups.values():
            rows = [m["token_counts"][label] for m in members]
            if len(members) > 1:
                names = [
                    n for n in rows[0]["results"] if n != "dense" and all(n in r["results"] for r in rows)
                ]
                medians = {n: statistics.median(r["results"][n]["speedup"] for r in rows) for n in names}
                ok = {n: v for n, v in medians.items() if v > min_gain}
                best = max(ok, key=ok.get) if ok else "dense"
            else:
                best = rows[0]["best"]
            for member, row in zip(members, rows, strict=True):
                row["layer_best"] = row["best"]
                row["best"] = best
                row["best_speedup"] = row["results"][best]["speedup"] if best != "dense" else 1.0
                row["group_size"] = len(members)
                sparse_left = best == "csr" or best.startswith("bsr")
                row["output_layout"] = COLUMN_MAJOR if sparse_left and not member["contiguous"] else ROW_MAJOR
                member["best"][label] = best


def bench_linears(
    model: nn.Module,
    options: BenchOptions = DEFAULT_OPTIONS,
    *,
    clock: Clock | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """The calibration: `bench_layer` for every encoder linear of `model`, each fed the input layout it gets in
    the model as `capbench.speed.model.realise` runs it; returned in module order.

    Layers are timed role by role (`capbench.layout.ROLES`) and each role's layers then choose by group
    (`_choose_by_group`). Sparse formats copy their output back to row-major except on `layout_free_output`
    layers (the FFN input); where an FFN input's chosen format returns a column-major output, the FFN output
    linear after it is calibrated on a column-major input, at that token count (in the model it receives
    exactly that, whatever its own format).
    """
    layers = list(iter_encoder_linear_roles(model))
    order = {name: i for i, (name, _, _) in enumerate(layers)}
    by_role: dict[str, list[tuple[int, str, nn.Module]]] = {}
    for i, (name, role, module) in enumerate(layers):
        if getattr(module, "weight", None) is not None:
            by_role.setdefault(role, []).append((i, name, module))
    results: dict[str, dict] = {}
    handed_over: dict[
        int, set[str]
    ] = {}  # layer index -> token counts at which its FFN input is column-major
    done = 0
    for role in ROLES:
        timed = []
        for i, name, module in by_role.get(role, []):
            done += 1
            if progress is not None:
                progress(f"layer {done}/{len(layers)} {name}")
            contiguous = not layout_free_output(name)
            result = bench_layer(
                module.weight,
                module.bias,
                options,
                name=name,
                contiguous=contiguous,
                clock=clock,
                column_major=handed_over.get(i, set()) if role == "ffn_out" else (),
            )
            result["contiguous"] = contiguous
            timed.append((i, result))
        _choose_by_group([r for _, r in timed], role, options.min_gain)
        for i, result in timed:
            results[result["name"]] = result
            if role == "ffn_in":  # the FFN output of the same layer comes next in module order
                handed_over[i + 1] = {
                    label
                    for label, row in result["token_counts"].items()
                    if row["output_layout"] == COLUMN_MAJOR
                }
    return sorted(results.values(), key=lambda r: order[r["name"]])


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
