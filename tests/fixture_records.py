"""Run records for leaderboard and compare tests, in the shape the real runner writes.

The shape comes from the runner itself: once per test session, `capbench run` trains a dense, a magnitude
and a diverging cell on the tiny model (a few seconds). Each fixture record is one of those records with its
identity (task, method, sparsity, seed) and its numbers set to the values the golden files pin, and its
environment-dependent parts (paths, provenance) set to fixed values, so renders are byte-identical
everywhere. A field the runner adds, renames or drops therefore shows up here too.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import tempfile
from pathlib import Path

from capbench.record import Record
from capbench.records import write_json
from capbench.spec import CellSpec

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_IDENTITY = {
    "source": "local",
    "weights_sha256": "fixture-weights",
    "config_sha256": "fixture-config",
    "tokenizer_sha256": "fixture-tokenizer",
}
PROVENANCE = {
    "git_commit": "abc1234",
    "versions": {"capbench": "0.1.0"},
    "machine": {"cpu": "Test CPU", "threads": 2, "torch": "2.13.0"},
}


@functools.lru_cache(maxsize=1)
def runner_templates() -> dict[str, dict]:
    """{"dense", "magnitude", "failed"}: records the real runner wrote on the tiny model (cached per session)."""
    from conftest import write_tiny_glue

    from capbench.cli import main
    from capbench.records import load_records
    from capbench.testing import save_tiny_model_dir

    # The records are read into memory, so the run folders go when this returns (no leftovers in /tmp).
    with tempfile.TemporaryDirectory(prefix="capbench-fixture-records-") as folder:
        root = Path(folder)
        glue = write_tiny_glue(root / "glue", n_train=32, n_eval=16)
        model = save_tiny_model_dir(root / "tiny-bert")
        common = ["--tasks", "rte", "--preset", "smoke", "--model", str(model), "--data-dir", str(glue)]
        common += ["--cache-dir", str(root / "cache"), "--batch-size", "8", "--quiet", "--no-save-models"]
        common += ["--methods", "magnitude", "--sparsity", "0.5"]
        assert main(["run", *common, "--out", str(root / "ok")]) == 0
        assert main(["run", *common, "--out", str(root / "diverged"), "--learning-rate", "1e6"]) == 1
        done = {r["spec"]["method"]: r for r in load_records(root / "ok")}
        failed = next(r for r in load_records(root / "diverged") if r["spec"]["method"] == "magnitude")
    return {"dense": done["dense"], "magnitude": done["magnitude"], "failed": failed}


def _spec(template: dict, task, method, sparsity, seed, kd=True) -> dict:
    from capbench.methods import method_spec

    spec = copy.deepcopy(template["spec"])
    options, _, _ = method_spec(method, {}, False, {}) if method != "dense" else ({}, None, None)
    spec.update(
        task=task,
        method=method,
        sparsity=sparsity,
        seed=seed,
        model=MODEL,
        model_identity=dict(MODEL_IDENTITY),
        data={"kind": "local", "sha256": f"fixture-{task}"},
        method_options=options,
        kd={"w_ce": 0.1} if kd and method != "dense" else None,
    )
    return spec


def _record(task, method, sparsity, seed, value, achieved=None, status="done", official=True, day=1):
    templates = runner_templates()
    template = templates["failed" if status != "done" else "dense" if method == "dense" else "magnitude"]
    record = copy.deepcopy(template)
    # the spec of a cell that ran with the fixture's settings (the failed template diverged at another lr)
    source = templates["dense" if method == "dense" else "magnitude"]
    spec = CellSpec(**{**_spec(source, task, method, sparsity, seed), "probes": ()})
    split = "validation_matched" if task == "mnli" else "validation"
    record.update(
        cell_id=spec.cell_id,
        spec=spec.to_dict(),
        spec_hash=spec.digest,
        finished_at=f"2026-11-0{day}T12:00:00+00:00",
        **copy.deepcopy(PROVENANCE),
    )
    if status != "done":
        record.update(error="RuntimeError: boom", traceback="Traceback (fixture)")
        return Record.from_dict(record).to_dict()
    record["metrics"] = {split: {"accuracy": value}}
    record["main_metric"] = {"name": "accuracy", "split": split, "value": value}
    record["sparsity"].update(target=sparsity, linear=achieved if achieved is not None else sparsity)
    record["data"] = {
        "source": {"kind": "local", "root": "/data/glue"},
        "splits": {"train": {"official": official, "rows": 256}, split: {"official": official, "rows": 256}},
    }
    record["predictions"] = {**record["predictions"], "file": f"{spec.cell_id}.fixture.predictions.npz"}
    record["model_dir"] = record["dense_model_dir"] = f"/runs/fixture/models/{spec.cell_id}"
    # one teacher per (task, seed), as a run on one machine has
    teacher_weights = hashlib.sha256(f"{task} seed {seed}".encode()).hexdigest()[:20]
    record["teacher"] = {
        **record["teacher"],
        "path": "/cache/dense/fixture",
        "weights_sha256": teacher_weights,
    }
    return Record.from_dict(record).to_dict()


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
