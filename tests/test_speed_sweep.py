from dataclasses import replace

import pytest

from capbench.speed.sweep import SWEEP_OPTIONS, break_even, render_sweep, sweep


def _row(s, speedups, mask="random", label="32x128"):
    return {
        "shape": "t",
        "out": 8,
        "in": 16,
        "mask": mask,
        "sparsity": s,
        "ideal": 1 / (1 - s),
        "token_count": label,
        "threads": 1,
        "rounds": 1,
        "dense_s": 1e-3,
        "speedup": speedups,
        "speedup_iqr": {k: 0.0 for k in speedups},
        "unavailable": {},
    }


def test_break_even_interpolates_in_log_speedup():
    rows = [
        _row(0.5, {"csr": 0.25}),
        _row(0.8, {"csr": 0.5}),
        _row(0.9, {"csr": 2.0}),
        _row(0.97, {"csr": 4.0}),
    ]
    (be,) = break_even(rows)
    assert be["format"] == "csr"
    assert be["break_even"] == pytest.approx(0.85)  # halfway in log between 0.5x and 2x


def test_break_even_edge_cases():
    rows = [_row(0.5, {"a": 1.2, "b": 0.5, "c": 2.0}), _row(0.9, {"a": 1.5, "b": 0.9, "c": 0.8})]
    by = {b["format"]: b for b in break_even(rows)}
    assert by["a"]["break_even"] == 0.5 and "every" in by["a"]["note"]
    assert by["b"]["break_even"] is None and "not faster" in by["b"]["note"]
    assert by["c"]["break_even"] is None  # faster only at a lower sparsity: noise, not a break-even


def test_tiny_sweep_runs_and_renders():
    options = replace(SWEEP_OPTIONS, token_counts=("1x4", "2x4"), repeats=1, warmup=0)
    rows = sweep([("t", 16, 32)], [0.5, 0.9], options, cases={"rows": ("csr", "compact")})
    assert len(rows) == 4
    assert set(rows[0]["speedup"]) == {"csr", "compact"}
    text = render_sweep(rows)
    assert "Break-even sparsity" in text and "| t 16x32 | rows |" in text
