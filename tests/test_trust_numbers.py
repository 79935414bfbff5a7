"""Issue 13, "numbers that lie" (items 1, 2, 4, 5, 10, 12): tested through the command line and the files.

Each test plants one instance of a fault kind and asserts the expected behaviour: a diverged run is a failed
cell, a collapsed model an undefined metric, new weights new cells, unlike runs a refused comparison, a
corrupt record a named error, and every cell keeps its per-example predictions.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fixture_records import fixture_records, write_fixture_run

from capbench import runner
from capbench.cli import main
from capbench.errors import CapbenchError
from capbench.records import RECORDS_DIR, SCHEMA_VERSION, load_records, write_json
from tests.test_runner import run_args


def _ok(records):
    return [r for r in records if r["status"] == "done"]


def _records(out: Path) -> dict:
    return {
        (r["spec"]["method"], r["spec"]["sparsity"], r["spec"]["seed"]): r
        for r in load_records(out, skip_bad=True)
    }


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def write_tiny_stsb(root: Path, n_train: int = 48, n_eval: int = 16) -> Path:
    from capbench.testing import TINY_WORDS

    rng = random.Random(0)
    (root / "stsb").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("validation", n_eval)):
        rows = [
            {
                "sentence1": " ".join(rng.sample(TINY_WORDS, 5)),
                "sentence2": " ".join(rng.sample(TINY_WORDS, 5)),
                "label": round(rng.uniform(0, 5), 2),
                "idx": i,
            }
            for i in range(n)
        ]
        (root / "stsb" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


# ---------------------------------------------------------------- 1. non-finite results never pass as done


def test_diverged_training_is_a_failed_cell_with_one_line(tiny_model_dir, tmp_path, capsys):
    glue = write_tiny_stsb(tmp_path / "glue")
    out = tmp_path / "run"
    args = run_args(tiny_model_dir, glue, out, tmp_path / "cache", "--methods", "magnitude")
    args[args.index("rte")] = "stsb"
    assert main([*args, "--sparsity", "0.5", "--learning-rate", "1e6"]) == 1
    records = list(_records(out).values())
    assert records and {r["status"] for r in records} == {"failed"}
    for record in records:
        assert re.fullmatch(
            r"training diverged at step \d+: (loss is (nan|inf)|gradient norm is (nan|inf)|weight \S+ is not finite); "
            r"lower --learning-rate",
            record["error"],
        ), record["error"]
    for path in (out / RECORDS_DIR).glob("*.json"):
        assert not re.search(r"\b(NaN|Infinity)\b", path.read_text()), path


def test_json_writers_refuse_nan_and_inf(tmp_path):
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match=r"non-finite number at metrics\.validation\.pearson"):
            write_json(tmp_path / "r.json", {"metrics": {"validation": {"pearson": bad}}})
    assert not (tmp_path / "r.json").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_accounting_refuses_non_finite_weights():
    from capbench.pruning.accounting import NonFiniteWeights, sparsity_report
    from capbench.testing import tiny_bert

    model = tiny_bert()
    with torch.no_grad():
        model.bert.encoder.layer[0].intermediate.dense.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteWeights, match="intermediate.dense.weight holds nan or inf"):
        sparsity_report(model, None, 0.5)


def test_constant_predictions_make_an_undefined_metric_not_nan(tiny_model_dir, tmp_path, monkeypatch):
    """A collapsed model is not a crash: done, metric null with its reason, never NaN."""
    glue = write_tiny_stsb(tmp_path / "glue")
    real_predict = runner.predict

    def constant(model, loader, *args):
        logits, labels = real_predict(model, loader, *args)
        return np.full_like(logits, 2.5), labels

    monkeypatch.setattr(runner, "predict", constant)
    out = tmp_path / "run"
    args = run_args(tiny_model_dir, glue, out, tmp_path / "cache", "--methods", "magnitude")
    args[args.index("rte")] = "stsb"
    assert main([*args, "--sparsity", "0.5"]) == 0
    for record in _records(out).values():
        assert record["status"] == "done"
        assert record["metrics"]["validation"] == {"pearson": None, "spearmanr": None}
        assert record["main_metric"]["value"] is None
        assert record["main_metric"]["undefined"] == "predictions are constant"
        assert record["undefined_metrics"]["validation"]["pearson"] == "predictions are constant"
    board = tmp_path / "board.md"
    assert main(["leaderboard", "--runs", str(out), "--out", str(board)]) == 0
    assert "undefined: predictions are constant (n=1)" in board.read_text()
    json.loads(board.with_suffix(".json").read_text(), parse_constant=lambda c: pytest.fail(c))


def _baseline(tmp_path, records, name="base"):
    run = write_fixture_run(tmp_path / name, records)
    out = tmp_path / f"{name}.md"
    assert main(["leaderboard", "--runs", str(run), "--out", str(out)]) == 0
    return out.with_suffix(".json")


def _planted(records, where, change):
    planted = copy.deepcopy(records)
    for record in planted:
        if where(record):
            change(record)
    return planted


def _soft(record):
    return record["spec"]["method"] == "soft_movement"


@pytest.mark.parametrize(
    "fault, note",
    [
        (lambda r: r["main_metric"].update(value=None, undefined="predictions are constant"), "undefined"),
        (lambda r: r["main_metric"].update(value=float("nan")), "non-finite"),
        (lambda r: r.update(status="failed", error="RuntimeError: boom"), "failed"),
    ],
    ids=["finite->undefined", "finite->non-finite", "done->failed"],
)
def test_compare_counts_a_lost_value_as_a_regression(tmp_path, capsys, fault, note):
    records = _ok(fixture_records())
    baseline = _baseline(tmp_path, records)
    run = tmp_path / "new"
    planted = _planted(records, _soft, fault)
    (run / RECORDS_DIR).mkdir(parents=True)
    for record in planted:  # raw json.dumps: an older capbench did write NaN
        (run / RECORDS_DIR / f"{record['cell_id']}.json").write_text(json.dumps(record))
    assert main(["compare", "--baseline", str(baseline), "--runs", str(run)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"\| regressed \| rte \| soft_movement \+KD \| 0\.9 \|.*" + note, out), out


def test_compare_treats_an_undefined_baseline_as_the_worst_score(tmp_path, capsys):
    records = _ok(fixture_records())
    undefined = _planted(records, _soft, lambda r: r["main_metric"].update(value=None, undefined="x"))
    baseline = _baseline(tmp_path, undefined)
    run = write_fixture_run(tmp_path / "new", records)
    assert main(["compare", "--baseline", str(baseline), "--runs", str(run)]) == 0
    assert "| improved | rte | soft_movement +KD | 0.9 |" in capsys.readouterr().out


def test_old_baseline_json_with_nan_is_read_as_no_value(tmp_path, capsys):
    records = _ok(fixture_records())
    baseline = _baseline(tmp_path, records)
    data = json.loads(baseline.read_text())
    data["tasks"]["rte"]["rows"]["soft_movement +KD"]["0.9"]["mean"] = float("nan")
    baseline.write_text(json.dumps(data))
    run = write_fixture_run(tmp_path / "new", records)
    assert main(["compare", "--baseline", str(baseline), "--runs", str(run)]) == 0
    assert "| improved | rte | soft_movement +KD | 0.9 |" in capsys.readouterr().out


# ------------------------------------------------------------------- 2. a cell's identity covers its model


def _plan(capsys, args) -> dict[str, str]:
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    plan = {}
    for line in out.splitlines():
        if line.startswith(("finished", "to run", "measure")):
            state, cell = line.rsplit(None, 1)
            plan[cell] = state
    return plan


def _states(plan: dict) -> set[str]:
    return {state.strip() for state in plan.values()}


def test_new_weights_or_tokenizer_under_the_same_model_dir_are_new_cells(
    tiny_model_dir, tiny_glue, tmp_path, capsys
):
    from capbench.testing import save_tiny_model_dir

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    args = run_args(model, tiny_glue, tmp_path / "run", tmp_path / "cache", "--methods", "magnitude")
    args += ["--sparsity", "0.5", "--no-save-models"]
    assert main(args) == 0
    capsys.readouterr()
    assert _states(_plan(capsys, args)) == {"finished"}

    # The same files in another folder: the same cells (the folder name is not the model).
    elsewhere = tmp_path / "copy-of-model"
    shutil.copytree(model, elsewhere)
    moved = [a if a != str(model) else str(elsewhere) for a in args]
    assert _states(_plan(capsys, moved)) == {"finished"}

    # New weights under the same name: every cell is to run, and a run trains them.
    save_tiny_model_dir(tmp_path / "other", seed=7)
    for weights in (tmp_path / "other").glob("*.safetensors"):
        shutil.copy(weights, model / weights.name)
    assert _states(_plan(capsys, args)) == {"to run"}
    assert main(args) == 0
    assert "2 run, 0 already finished" in capsys.readouterr().out

    # A changed tokenizer alone also changes the cells.
    with open(model / "vocab.txt", "a") as handle:
        handle.write("zzznewtoken\n")
    assert _states(_plan(capsys, args)) == {"to run"}


def test_digest_covers_the_model_identity_and_not_the_folder_name(tiny_model_dir, tiny_glue, tmp_path):
    from capbench.model_identity import model_identity
    from capbench.spec import digest_fields

    identity = model_identity(str(tiny_model_dir))
    assert identity["source"] == "local" and identity["weights_sha256"] and identity["tokenizer_sha256"]
    assert "model" not in digest_fields({"model": "x", "model_identity": identity, "task": "rte"})


def test_model_files_changed_after_planning_stop_the_run(tiny_model_dir, tiny_glue, tmp_path):
    from capbench.runner import check_model_identity
    from capbench.spec import CellSpec

    spec = CellSpec(
        task="rte", method="dense", sparsity=0.0, seed=0, model=str(tiny_model_dir), preset="smoke",
        data={}, max_train_examples=None, max_eval_examples=None, max_seq_length=32, data_sample_seed=1,
        train={}, model_identity={"source": "local", "weights_sha256": "old"},
    )  # fmt: skip
    with pytest.raises(CapbenchError, match="files changed since this grid was planned"):
        check_model_identity(spec)


def test_hub_ids_are_named_by_their_resolved_revision(monkeypatch):
    import huggingface_hub

    from capbench import model_identity as mi

    class Info:
        sha = "0123abcd" * 5

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, repo, revision=None: Info())
    assert mi.model_identity("some-org/some-bert") == {
        "source": "hub",
        "repo_id": "some-org/some-bert",
        "revision": Info.sha,
    }

    def offline(self, repo, revision=None):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", offline)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    with pytest.raises(CapbenchError, match="cannot resolve its hub revision"):
        mi.model_identity("some-org/not-cached")


def test_schema_2_records_migrate_to_the_digest_a_fresh_run_gives(
    tiny_model_dir, tiny_glue, tmp_path, capsys
):
    out = tmp_path / "run"
    args = run_args(tiny_model_dir, tiny_glue, out, tmp_path / "cache", "--methods", "magnitude")
    args += ["--sparsity", "0.5", "--no-save-models"]
    assert main(args) == 0
    fresh = {path.name for path in (out / RECORDS_DIR).glob("*.json")}
    for path in list((out / RECORDS_DIR).glob("*.json")):
        record = json.loads(path.read_text())
        record["schema_version"] = 2
        del record["spec"]["model_identity"]
        record["cell_id"] = record["cell_id"][:-10] + "schema2old"
        path.unlink()
        write_json(path.with_name(record["cell_id"] + ".json"), record)
    capsys.readouterr()
    assert "migrate-records" in _error(capsys, args)
    assert main(["migrate-records", str(out)]) == 0
    assert {path.name for path in (out / RECORDS_DIR).glob("*.json")} == fresh
    assert {r["schema_version"] for r in load_records(out)} == {SCHEMA_VERSION}
    capsys.readouterr()
    assert _states(_plan(capsys, args)) == {"finished"}


# ------------------------------------------------------------------ 4. compare refuses unlike with unlike


def test_compare_refuses_a_candidate_with_another_configuration(tmp_path, capsys):
    records = _ok(fixture_records())
    baseline = _baseline(tmp_path, records)
    other = _planted(records, lambda r: True, lambda r: r["spec"]["train"].update(learning_rate=1e6))
    run = write_fixture_run(tmp_path / "new", other)
    err = _error(capsys, ["compare", "--baseline", str(baseline), "--runs", str(run)])
    assert "differ from the baseline in train.learning_rate" in err and "--allow-spec-change" in err

    assert main(["compare", "--baseline", str(baseline), "--runs", str(run), "--allow-spec-change"]) == 0
    out = capsys.readouterr().out
    assert "spec changed: train.learning_rate" in out


def test_compare_names_every_differing_field(tmp_path, capsys):
    records = _ok(fixture_records())
    baseline = _baseline(tmp_path, records)

    def change(record):
        record["spec"]["model_identity"]["weights_sha256"] = "other-weights"
        record["spec"]["method_options"] = {**record["spec"]["method_options"], "scope": "global"}

    run = write_fixture_run(tmp_path / "new", _planted(records, lambda r: r["spec"]["task"] == "rte", change))
    err = _error(capsys, ["compare", "--baseline", str(baseline), "--runs", str(run)])
    assert "method_options.scope, model_identity.weights_sha256" in err


def test_seed_and_model_folder_name_are_not_a_configuration_change(tmp_path, capsys):
    records = _ok(fixture_records())
    baseline = _baseline(tmp_path, records)
    renamed = _planted(records, lambda r: True, lambda r: r["spec"].update(model="/elsewhere/minilm"))
    run = write_fixture_run(tmp_path / "new", renamed)
    assert main(["compare", "--baseline", str(baseline), "--runs", str(run)]) == 0


@pytest.mark.parametrize("achieved, status", [(0.894, "regressed"), (0.896, "unchanged")])
def test_compare_flags_a_cell_below_its_target_sparsity(tmp_path, capsys, achieved, status):
    records = _ok(fixture_records())
    baseline = _baseline(tmp_path, records)
    planted = _planted(records, _soft, lambda r: r["sparsity"].update(linear=achieved, granularity=0.005))
    run = write_fixture_run(tmp_path / "new", planted)
    assert main(["compare", "--baseline", str(baseline), "--runs", str(run)]) == (status == "regressed")
    assert f"| {status} | rte | soft_movement +KD | 0.9 |" in capsys.readouterr().out


def test_structured_granularity_is_one_heads_share():
    from capbench.pruning.accounting import sparsity_report
    from capbench.testing import tiny_bert

    model = tiny_bert()
    structured = sparsity_report(model, None, 0.5, structured=True)
    unstructured = sparsity_report(model, None, 0.5)
    config = model.config
    head = 4 * config.hidden_size * (config.hidden_size // config.num_attention_heads)
    assert structured["granularity"] == pytest.approx(head / structured["counts"]["linear_dense"])
    assert unstructured["granularity"] == 0.005


# ---------------------------------------------------------------------- 5. a corrupt record never vanishes


def test_truncated_and_malformed_records_are_named_and_exit_2(tmp_path, capsys):
    run = write_fixture_run(tmp_path / "run")
    paths = sorted((run / RECORDS_DIR).glob("*.json"))
    paths[0].write_text(paths[0].read_text()[:100])
    broken = json.loads(paths[1].read_text())
    del broken["spec"]["method"]
    paths[1].write_text(json.dumps(broken))
    baseline = _baseline(tmp_path, _ok(fixture_records()), name="good")

    for argv in (
        ["leaderboard", "--runs", str(run)],
        ["compare", "--baseline", str(baseline), "--runs", str(run)],
    ):
        err = _error(capsys, argv)
        assert "2 bad record files" in err
        assert f"{paths[0]}: not valid JSON" in err and f"{paths[1]}: missing field spec.method" in err

    out = tmp_path / "board.md"
    assert main(["leaderboard", "--runs", str(run), "--out", str(out), "--skip-bad-records"]) == 0
    assert "2 unreadable or malformed skipped" in out.read_text()
    assert json.loads(out.with_suffix(".json").read_text())["provenance"]["bad_records"] == 2


# -------------------------------------------------- 10. per-example predictions beside every record; 12. mode


def test_every_cell_keeps_its_per_example_predictions(tiny_model_dir, tiny_glue, tmp_path):
    from capbench.predictions import read_predictions

    out = tmp_path / "run"
    args = run_args(tiny_model_dir, tiny_glue, out, tmp_path / "cache", "--methods", "magnitude")
    assert main([*args, "--sparsity", "0.5", "--no-save-models"]) == 0
    records = load_records(out)
    assert len(records) == 2
    for record in records:
        ref = record["predictions"]
        assert (
            ref["file"] == f"{record['cell_id']}.{ref['sha256'][:12]}.predictions.npz"
            and len(ref["sha256"]) == 64
        )
        arrays = read_predictions(record, out / RECORDS_DIR)
        split = arrays["validation"]
        assert ref["rows"] == {"validation": len(split["label"])} == {"validation": 24}
        assert sorted(split["idx"].tolist()) == list(range(24))
        assert split["logits"].shape == (24, 2)
        assert (split["prediction"] == split["logits"].argmax(1)).all()
        accuracy = float((split["prediction"] == split["label"]).mean())
        assert accuracy == pytest.approx(record["metrics"]["validation"]["accuracy"])

    tampered = out / RECORDS_DIR / records[0]["predictions"]["file"]
    tampered.write_bytes(tampered.read_bytes() + b"x")
    with pytest.raises(CapbenchError, match="sha256 differs"):
        read_predictions(records[0], out / RECORDS_DIR)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_record_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == mode


def test_metric_values_are_never_nan():
    from capbench.metrics import compute_metrics, undefined_metrics

    constant = np.full(5, 1.0)
    references = np.arange(5.0)
    assert compute_metrics(["pearson", "spearmanr"], constant, references) == {
        "pearson": None,
        "spearmanr": None,
    }
    assert undefined_metrics(["pearson"], constant, references) == {"pearson": "predictions are constant"}
    with pytest.raises(ValueError, match="not finite"):
        compute_metrics(["pearson"], np.array([1.0, math.nan, 2.0]), np.arange(3.0))
