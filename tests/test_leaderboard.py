import json
import os
from pathlib import Path

import pytest
from fixture_records import fixture_records, write_fixture_run

from capbench.cli import main
from capbench.leaderboard import summarize

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = os.environ.get("CAPBENCH_REGENERATE_GOLDEN") == "1"


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if REGENERATE:
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; rerun with CAPBENCH_REGENERATE_GOLDEN=1 if intended"


def test_markdown_and_json_match_golden_files(tmp_path, capsys):
    run = write_fixture_run(tmp_path / "run")
    out = tmp_path / "board.md"
    assert (
        main(["leaderboard", "--runs", str(run), "--out", str(out), "--command", "capbench run --tasks rte"])
        == 0
    )
    _check_golden("leaderboard.md", out.read_text())
    _check_golden("leaderboard.json", out.with_suffix(".json").read_text())


def test_output_is_byte_identical_across_record_order(tmp_path):
    records = fixture_records()
    first = json.dumps(summarize(records), sort_keys=True)
    second = json.dumps(summarize(list(reversed(records))), sort_keys=True)
    assert first == second


def test_cells_show_mean_std_retention_failed_and_missing(tmp_path):
    summary = summarize(fixture_records())
    rte = summary["tasks"]["rte"]["rows"]
    assert list(rte)[0] == "dense"
    cell = rte["magnitude +KD"]["0.5"]
    assert cell["mean"] == pytest.approx(0.61) and cell["n"] == 2
    assert cell["std"] == pytest.approx(0.0141, abs=1e-4)
    assert cell["retention"] == pytest.approx(0.61 / 0.65, abs=1e-4)
    assert rte["magnitude +KD"]["0.9"]["failed"] == 1 and rte["magnitude +KD"]["0.9"]["n"] == 1
    assert rte["movement +KD"]["0.9"]["status"] == "failed"
    assert "0.5" not in rte["movement +KD"]
    assert rte["soft_movement +KD"]["0.9"]["achieved_sparsity"] == pytest.approx(0.893)
    assert summary["provenance"]["carved_splits"] == ["mnli/train", "mnli/validation_matched"]


def test_leaderboard_without_records_is_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["leaderboard", "--runs", str(tmp_path / "empty")]) == 2
    assert "no records" in capsys.readouterr().err
