"""Hand-made run records for leaderboard and compare tests (no training involved)."""

from __future__ import annotations

import json
from pathlib import Path

from capbench.records import SCHEMA_VERSION, write_json

MODEL_IDENTITY = {
    "source": "local",
    "weights_sha256": "fixture-weights",
    "config_sha256": "fixture-config",
    "tokenizer_sha256": "fixture-tokenizer",
}


def _spec(task, method, sparsity, seed, kd=True):
    return {
        "task": task,
        "method": method,
        "sparsity": sparsity,
        "seed": seed,
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "preset": "smoke",
        "data": {"kind": "local", "root": "/data/glue"},
        "max_train_examples": 256,
        "max_eval_examples": 256,
        "max_seq_length": 128,
        "data_sample_seed": 1234,
        "train": {"epochs": 1.0},
        "method_options": {},
        "kd": {"w_ce": 0.1} if kd and method != "dense" else None,
        "cap": None,
        "probes": [],
        "speed": False,
        "model_identity": dict(MODEL_IDENTITY),
    }


def _record(task, method, sparsity, seed, value, achieved=None, status="done", official=True, day=1):
    split = "validation_matched" if task == "mnli" else "validation"
    record = {
        "schema_version": SCHEMA_VERSION,
        "cell_id": f"{task}-{method}-{sparsity:g}-seed{seed}",
        "spec": _spec(task, method, sparsity, seed),
        "spec_hash": f"hash-{task}-{method}-{sparsity}-{seed}",
        "status": status,
        "git_commit": "abc1234",
        "versions": {"capbench": "0.1.0"},
        "machine": {"cpu": "Test CPU", "threads": 2, "torch": "2.13.0"},
        "finished_at": f"2026-11-0{day}T12:00:00+00:00",
    }
    if status != "done":
        return {**record, "error": "RuntimeError: boom"}
    return {
        **record,
        "metrics": {split: {"accuracy": value}},
        "main_metric": {"name": "accuracy", "split": split, "value": value},
        "sparsity": {"target": sparsity, "linear": achieved if achieved is not None else sparsity},
        "data": {"splits": {"train": {"official": official}, split: {"official": official}}},
    }


def fixture_records() -> list[dict]:
    return [
        _record("rte", "dense", 0.0, 0, 0.66, day=1),
        _record("rte", "dense", 0.0, 1, 0.64, day=2),
        _record("rte", "magnitude", 0.5, 0, 0.62, 0.5),
        _record("rte", "magnitude", 0.5, 1, 0.60, 0.5),
        _record("rte", "magnitude", 0.9, 0, 0.55, 0.9),
        _record("rte", "magnitude", 0.9, 1, 0.0, status="failed"),
        _record("rte", "movement", 0.9, 0, 0.0, status="failed"),
        _record("rte", "soft_movement", 0.9, 0, 0.57, 0.897),
        _record("mnli", "dense", 0.0, 0, 0.7712, official=False, day=3),
        _record("mnli", "magnitude", 0.5, 0, 0.7431, 0.5, official=False),
    ]


def write_fixture_run(run_dir: Path, records: list[dict] | None = None) -> Path:
    for record in records if records is not None else fixture_records():
        write_json(run_dir / "records" / f"{record['cell_id']}.json", record)
    return run_dir


if __name__ == "__main__":
    print(json.dumps(fixture_records(), indent=2))
