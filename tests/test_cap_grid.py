"""Every CAP method, and ablations of it, through the real grid: tiny model here, offline model (slow)."""

import pytest

from capbench.cli import main
from capbench.records import load_records
from tests.test_runner import run_args

CAP_METHODS = ["cap_magnitude", "cap_movement", "cap_soft", "cap_first_order"]


def _check_cap_records(records, sparsity):
    cap = {r["spec"]["method"]: r for r in records if r["spec"]["method"].startswith("cap_")}
    assert sorted(cap) == sorted(CAP_METHODS)
    for method, record in cap.items():
        assert record["status"] == "done", record.get("error")
        assert record["sparsity"]["linear"] == pytest.approx(sparsity, abs=0.01), method
        report = record["cap"]
        assert report["config"] == record["spec"]["cap"]
        assert report["bank_dtype"] == "float16" and report["bank_bytes_total"] > 0
        assert set(report["bank_bytes"]) == {"prc", "snc", "fic"}
        assert report["extra_forward_examples"]["prc"] > 0 or report["bank_build_seconds"]["prc"] == 0.0
        # KD rides along with the contrastive terms: the teacher's logits computed here or reused from the cache
        # an earlier student of the same teacher left (capbench.teacher_logits)
        used = record["train"]["teacher_logits"]
        assert used["computed_batches"] + used["reused_batches"] > 0
        assert (report["teacher_forward_examples"] > 0) == (used["computed_batches"] > 0)
        magnitudes = record["train"]["loss_term_magnitudes"]  # mean |term| over the last 10% of steps
        assert {"ce", "kd", "prc_unsup", "prc_sup", "fic_unsup", "fic_sup"} <= set(magnitudes), method
        assert all(value >= 0 for value in magnitudes.values())
        if record["spec"]["cap"]["snapshot_on"] != "pruning_step":
            assert report["snapshots_taken"] == report["snapshots_planned"] >= 1, method


def test_every_cap_method_runs_in_the_grid_on_the_tiny_model(tiny_model_dir, tiny_glue, tmp_path, capsys):
    out = tmp_path / "run"
    args = run_args(tiny_model_dir, tiny_glue, out, tmp_path / "cache", "--methods", ",".join(CAP_METHODS))
    assert main([*args, "--sparsity", "0.5"]) == 0
    _check_cap_records(load_records(out), 0.5)
    capsys.readouterr()
    assert main(["leaderboard", "--runs", str(out)]) == 0
    board = capsys.readouterr().out
    for method in CAP_METHODS:
        assert f"| {method} |" in board


def test_cap_ablations_are_separate_rows_and_in_the_ablation_table(
    tiny_model_dir, tiny_glue, tmp_path, capsys
):
    out = tmp_path / "run"
    base = run_args(tiny_model_dir, tiny_glue, out, tmp_path / "cache", "--methods", "cap_magnitude")
    base += ["--sparsity", "0.5"]
    assert main(base) == 0
    assert main([*base, "--cap-option", "modules=prc", "--cap-option", "sup=false"]) == 0
    records = [r for r in load_records(out) if r["spec"]["method"] == "cap_magnitude"]
    assert sorted(r["cap"]["label"] for r in records) == ["prc+snc+fic/unsup+sup/pooler", "prc/unsup/pooler"]
    ablated = next(r for r in records if r["cap"]["label"] == "prc/unsup/pooler")
    assert set(ablated["cap"]["bank_bytes"]) == {"prc"}
    capsys.readouterr()
    assert main(["leaderboard", "--runs", str(out)]) == 0
    board = capsys.readouterr().out
    assert "| cap_magnitude [modules=prc sup=False] |" in board and "| cap_magnitude |" in board
    ablations = board.split("## CAP ablations")[1]
    assert "| rte | cap_magnitude [modules=prc sup=False] | prc | unsup | pooler |" in ablations
    assert "loss terms, mean abs. (last 10% of steps)" in ablations and "prc_unsup " in ablations


def test_snc_that_would_take_no_snapshot_is_refused_before_any_cell(
    tiny_model_dir, tiny_glue, tmp_path, capsys
):
    out = tmp_path / "run"
    args = run_args(
        tiny_model_dir, tiny_glue, out, tmp_path / "cache", "--methods", "magnitude,cap_magnitude"
    )
    args += [
        "--sparsity",
        "0.5",
        "--cap-option",
        "snapshot_on=steps",
        "--cap-option",
        "snapshot_interval=100000",
    ]
    capsys.readouterr()
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("capbench: error: cap_magnitude on rte") and "take no snapshot" in error
    assert "\n" not in error
    assert not load_records(out) if out.exists() else True


@pytest.mark.slow
def test_every_cap_method_on_the_offline_model(offline_model_dir, shared_glue, tmp_path, all_threads):
    out = tmp_path / "run"
    args = ["run", "--tasks", "rte", "--methods", ",".join(CAP_METHODS), "--sparsity", "0.5"]
    args += ["--preset", "smoke", "--max-train-examples", "64", "--max-eval-examples", "64"]
    args += ["--max-seq-length", "64"]
    args += ["--data-dir", str(shared_glue), "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert main([*args, "--quiet", "--no-save-models"]) == 0
    records = load_records(out)
    _check_cap_records(records, 0.5)
    assert all(r["spec"]["model"] == "sentence-transformers/all-MiniLM-L6-v2" for r in records)


def test_kd_records_store_the_loss_term_magnitudes(tiny_model_dir, tiny_glue, tmp_path):
    out = tmp_path / "run"
    args = run_args(tiny_model_dir, tiny_glue, out, tmp_path / "cache", "--methods", "magnitude")
    assert main([*args, "--sparsity", "0.5"]) == 0
    (record,) = [r for r in load_records(out) if r["spec"]["method"] == "magnitude"]
    assert record["spec"]["kd"] is not None
    assert set(record["train"]["loss_term_magnitudes"]) == {"ce", "kd"}
    assert "cap" not in record or not record["cap"]
