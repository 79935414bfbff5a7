"""Smoke integration on the offline model and ../shared/glue (marked slow; minutes on 2 cores)."""

import pytest

from capbench.cli import main
from capbench.records import load_records

pytestmark = pytest.mark.slow


def test_smoke_cell_on_offline_model_and_shared_glue(
    offline_model_dir, shared_glue, tmp_path, capsys, all_threads
):
    out = tmp_path / "run"
    args = [
        "run",
        "--tasks",
        "rte",
        "--sparsity",
        "0.5",
        "--methods",
        "magnitude",
        "--preset",
        "smoke",
        # the whole path on the real model and data, on fewer rows than smoke's 256 and 64 tokens, not 128
        "--max-train-examples",
        "64",
        "--max-eval-examples",
        "128",
        "--max-seq-length",
        "64",
        "--data-dir",
        str(shared_glue),
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
    ]
    assert main(args) == 0
    records = load_records(out)
    assert {r["spec"]["method"] for r in records} == {"dense", "magnitude"}
    for record in records:
        assert record["status"] == "done"
        assert record["data"]["splits"]["validation"]["official"] is True
        assert 0.3 < record["main_metric"]["value"] < 0.9  # a real accuracy on 128 RTE dev rows
    pruned = next(r for r in records if r["spec"]["method"] == "magnitude")
    assert pruned["sparsity"]["linear"] == pytest.approx(0.5, abs=0.01)
    capsys.readouterr()
    assert main(args) == 0
    assert "0 run, 2 already finished" in capsys.readouterr().out
    assert main(["leaderboard", "--runs", str(out)]) == 0
    board = capsys.readouterr().out
    assert "## rte: accuracy on validation" in board and "magnitude +KD" in board
