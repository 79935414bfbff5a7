import json
import os
from pathlib import Path

import pytest
from fixture_records import fixture_records, write_fixture_run

from capbench.cli import main
from capbench.errors import CapbenchError
from capbench.report import summarize

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
        main(
            [
                "leaderboard",
                "--runs",
                str(run),
                "--out",
                str(out),
                "--command",
                "capbench run --tasks rte",
                "--reported",
                str(Path(__file__).parent / "fixture_reported.yaml"),
            ]
        )
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
    assert rte["soft_movement +KD"]["0.9"]["achieved_sparsity"] == pytest.approx(0.897)
    assert summary["provenance"]["carved_splits"] == ["mnli/train", "mnli/validation_matched"]


def test_leaderboard_without_records_is_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["leaderboard", "--runs", str(tmp_path / "empty")]) == 2
    assert "no records" in capsys.readouterr().err


def test_plots_are_written_as_valid_images(tmp_path):
    from fixture_records import fixture_records

    records = fixture_records()
    for record in records:
        if record["status"] == "done" and record["spec"]["method"] != "dense":
            record["speed"] = {"summary": {"measured_speedup": 1.0 + record["spec"]["sparsity"]}}
    run = write_fixture_run(tmp_path / "run", records)
    out = tmp_path / "site" / "board.md"
    assert main(["leaderboard", "--runs", str(run), "--out", str(out), "--plots"]) == 0
    text = out.read_text()
    for name in ("board-rte-sparsity.png", "board-rte-pareto.png", "board-mnli-sparsity.png"):
        assert f"]({name})" in text
        assert (out.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out.parent / name).with_suffix(".svg").read_text().lstrip().startswith("<?xml")

    first = {p.name: p.read_bytes() for p in out.parent.glob("*.*")}
    assert main(["leaderboard", "--runs", str(run), "--out", str(out), "--plots"]) == 0
    assert {p.name: p.read_bytes() for p in out.parent.glob("*.*")} == first, "plots are not byte-identical"


def test_pareto_front_keeps_only_undominated_points():
    from capbench.plots import pareto_front

    points = [(1.0, 80.0), (2.0, 78.0), (1.5, 70.0), (3.0, 60.0), (3.0, 50.0)]
    assert pareto_front(points) == [(1.0, 80.0), (2.0, 78.0), (3.0, 60.0)]


def test_a_cell_never_averages_two_configurations():
    records = fixture_records()
    other_lr = json.loads(json.dumps(records[3]))  # rte magnitude 0.5 seed 1
    other_lr["spec"]["train"] = {"epochs": 3.0}
    other_lr["cell_id"] += "-lr"
    with pytest.raises(CapbenchError, match=r"rte magnitude \+KD sparsity 0.5: .* differ in train"):
        summarize([*records[:3], other_lr])


def test_a_seed_counts_once_per_cell():
    records = fixture_records()
    again = {**records[2], "cell_id": records[2]["cell_id"] + "-copy"}
    with pytest.raises(CapbenchError, match="seed 0 appears twice"):
        summarize([*records, again])


def test_measurement_fields_do_not_split_a_cell():
    records = fixture_records()
    probed = json.loads(json.dumps(records[3]))
    probed["spec"]["probes"] = ["sentlen"]
    cell = summarize([*records[:3], probed, *records[4:]])["tasks"]["rte"]["rows"]["magnitude +KD"]["0.5"]
    assert cell["n"] == 2
