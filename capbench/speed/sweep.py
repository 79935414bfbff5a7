"""Synthetic kernel sweep: speedup vs dense of each format over sparsity, at real layer shapes.

Answers "from which sparsity on does CSR / BSR beat dense here" without a trained model: weights like
trained ones (`synthetic.weight_like_trained`), masks of each kind at each sparsity, every format timed
interleaved with dense (`kernels.time_formats`), and the break-even sparsity interpolated from the measured
speedups.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import replace

import torch

from capbench.speed.formats import build_formats
from capbench.speed.kernels import time_formats
from capbench.speed.options import BenchOptions
from capbench.speed.synthetic import BERT_BASE_SHAPES, MINILM_SHAPES, make_mask, weight_like_trained
from capbench.speed.timing import Clock

SHAPE_SETS = {"minilm": MINILM_SHAPES, "bert-base": BERT_BASE_SHAPES}
DEFAULT_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97)
# mask kind -> format families worth timing on it
DEFAULT_CASES = {
    "random": ("csr", "bsr"),
    "magnitude": ("csr",),
    "block4": ("csr", "bsr"),
    "rows": ("csr", "compact"),
}
# Sweep settings: three token counts, at most 2 s of rounds per case, BSR at 4x4 and 16x16, no format skipped
# (the sweep is about where they pay).
SWEEP_OPTIONS = BenchOptions(
    token_counts=("1x128", "32x128", "128x128"),
    layer_budget=2.0,
    block_sizes=(4, 16),
    min_sparsity=0.0,
    max_block_density=1.0,
)


def _row(shape: tuple[str, int, int], kind: str, s: float, formats: dict, label: str, timed: dict) -> dict:
    """One sweep row: each non-dense format's speedup vs dense at one token count."""
    shape_name, out_features, in_features = shape
    results = timed["results"]
    return {
        "shape": shape_name,
        "out": out_features,
        "in": in_features,
        "mask": kind,
        "sparsity": s,
        "ideal": 1 / (1 - s),
        "token_count": label,
        "threads": timed["threads"],
        "rounds": timed["rounds"],
        "dense_s": results["dense"]["median_s"],
        "speedup": {n: r["speedup"] for n, r in results.items() if n != "dense"},
        "speedup_iqr": {n: r["speedup_iqr"] for n, r in results.items() if n != "dense"},
        "unavailable": {n: f.reason for n, f in formats.items() if not f.available},
    }


def sweep(
    shapes: Iterable[tuple[str, int, int]] = MINILM_SHAPES,
    sparsities: Iterable[float] = DEFAULT_SPARSITIES,
    options: BenchOptions = SWEEP_OPTIONS,
    *,
    cases: dict[str, Iterable[str]] | None = None,
    large_sparsities: Iterable[float] | None = (0.5, 0.9, 0.97),
    large_tokens: int = 4096,
    clock: Clock | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """One row per (shape, mask kind, sparsity, token count): each format's speedup vs dense.

    Timed at `options.token_counts`, rounds as `options.calibration_rounds()` says (the stopping rule
    on spread, at most `options.repeats` rounds and `options.layer_budget` seconds per case);
    `cases` maps a mask kind to the format families timed on it (default `DEFAULT_CASES`).
    `large_sparsities` limits token counts above `large_tokens` to those sparsities (they cost the most).
    """
    cases = dict(DEFAULT_CASES if cases is None else cases)
    labels = options.token_counts
    large = {t for t in labels if math.prod(int(v) for v in t.split("x")) > large_tokens}
    large_set = None if large_sparsities is None else {round(s, 6) for s in large_sparsities}
    policy = replace(options.policy, check=False)
    rounds = options.calibration_rounds()
    rows = []
    for shape_name, out_features, in_features in shapes:
        weight = weight_like_trained(out_features, in_features, seed=out_features * 7 + in_features)
        bias = torch.zeros(out_features)
        for kind, families in cases.items():
            for s in sparsities:
                w = weight * make_mask(weight, s, kind)
                formats = build_formats(w, bias, policy, formats=["dense", *families])
                tcs = [t for t in labels if t not in large or large_set is None or round(s, 6) in large_set]
                if progress is not None:
                    progress(f"{shape_name} {out_features}x{in_features} {kind} s={s} at {tcs}")
                timed = time_formats(formats, tcs, rounds, clock=clock, min_gain=1.0)
                shape = (shape_name, out_features, in_features)
                rows += [_row(shape, kind, s, formats, label, row) for label, row in timed.items()]
    return rows


def break_even(rows: list[dict]) -> list[dict]:
    """Per (shape, mask, token count, format): the sparsity from which the format beats dense, interpolated
    linearly in log-speedup between the last measured sparsity where it did not and the next one."""
    groups: dict[tuple, list[tuple[float, float]]] = {}
    for row in rows:
        for fmt, speedup in row["speedup"].items():
            key = (row["shape"], row["mask"], row["token_count"], fmt)
            groups.setdefault(key, []).append((row["sparsity"], speedup))
    out = []
    for (shape, mask, label, fmt), points in groups.items():
        points.sort()
        value: float | None = None
        note = ""
        # the lowest measured sparsity from which every higher one is faster, so noise dips are not hidden
        k = len(points)
        while k > 0 and points[k - 1][1] > 1:
            k -= 1
        if k == len(points):
            note = f"not faster at s={points[-1][0]}"
        elif k == 0:
            value, note = points[0][0], "faster at every measured sparsity"
        else:
            (s0, v0), (s1, v1) = points[k - 1], points[k]
            t = -math.log(v0) / (math.log(v1) - math.log(v0)) if v0 > 0 else 0.0
            value = s0 + t * (s1 - s0)
        out.append(
            {
                "shape": shape,
                "mask": mask,
                "token_count": label,
                "format": fmt,
                "break_even": value,
                "note": note,
            }
        )
    return out


def render_sweep(rows: list[dict]) -> str:
    """Markdown: speedup of each format at each sparsity, and as a fraction of the ideal 1/(1-s)."""
    from capbench.speed.report import markdown_table

    formats = sorted({f for r in rows for f in r["speedup"]})
    header = ["shape", "mask", "tokens", "s", "ideal", "dense ms", *formats, "best / ideal"]
    table = []
    for r in rows:
        best = max(r["speedup"].values(), default=1.0)
        cells = [
            f"{r['shape']} {r['out']}x{r['in']}",
            r["mask"],
            r["token_count"],
            f"{r['sparsity']:.2f}",
            f"{r['ideal']:.1f}x",
            f"{r['dense_s'] * 1e3:.2f}",
        ]
        cells += [f"{r['speedup'][f]:.2f}x" if f in r["speedup"] else "—" for f in formats]
        cells.append(f"{best / r['ideal']:.0%}")
        table.append(cells)
    be = break_even(rows)
    be_table = [
        [
            b["shape"],
            b["mask"],
            b["token_count"],
            b["format"],
            f"{b['break_even']:.2f}" if b["break_even"] is not None else "—",
            b["note"],
        ]
        for b in be
    ]
    return (
        markdown_table(header, table)
        + "\n\nBreak-even sparsity (format faster than dense from here on):\n\n"
        + markdown_table(["shape", "mask", "tokens", "format", "break-even s", "note"], be_table)
    )
