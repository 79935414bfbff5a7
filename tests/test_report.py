"""capbench.report: records -> one frame -> declared tables, rendered to markdown and written to the JSON."""

import json
import re

import pytest
from fixture_records import fixture_records, write_fixture_run

from capbench.cli import main
from capbench.report import (
    TABLES,
    Col,
    Table,
    markdown_table,
    records_frame,
    register_column,
    register_table,
    render_markdown,
    summarize,
)
from capbench.report.frame import EXTRA_COLUMNS


@pytest.fixture
def registry():
    """Leave the table and column registries as the test found them."""
    tables, columns = list(TABLES), dict(EXTRA_COLUMNS)
    yield
    TABLES[:] = tables
    EXTRA_COLUMNS.clear()
    EXTRA_COLUMNS.update(columns)


def test_a_new_leaderboard_column_is_one_registration(tmp_path, registry):
    records = fixture_records()
    for number, record in enumerate(records):
        record["timings"] = {"train_seconds": 100.0 + number}
    register_column("train_seconds", lambda record: (record.get("timings") or {}).get("train_seconds"))
    register_table(
        Table(
            name="train_time",
            title="## Training time (s, mean over seeds)",
            keys=("task", "row"),
            aggregate=lambda group: {"seconds": float(group["train_seconds"].mean())},
            lead=(Col("task", lambda r: r["task"]), Col("method", lambda r: r["row"])),
            cells=(Col("s={label}", lambda r: f"{r['seconds']:.1f}"),),
            spread="sparsity_key",
            spread_order=float,
            where=lambda frame: frame["status"].eq("done"),
        ),
        before="probes",
    )
    out = tmp_path / "board.md"
    assert (
        main(["leaderboard", "--runs", str(write_fixture_run(tmp_path / "run", records)), "--out", str(out)])
        == 0
    )
    text = out.read_text()
    assert (
        "## Training time (s, mean over seeds)\n\n| task | method | s=0 | s=0.5 | s=0.9 |\n|---|---|---|---|---|"
        in text
    )
    assert (
        "| rte | magnitude +KD | – | 102.5 | 104.0 |" in text
    )  # seeds 0, 1 at 0.5; the failed seed left out
    rows = json.loads(out.with_suffix(".json").read_text())["tables"]["train_time"]["rows"]
    assert {"task": "rte", "row": "magnitude +KD", "sparsity_key": "0.5", "seconds": 102.5} in rows


def test_every_table_is_in_the_json_with_raw_numbers():
    summary = summarize(fixture_records())
    assert set(summary["tables"]) == {"main_metric", "retention"}  # no probes, speed or CAP in the fixture
    cell = next(
        r
        for r in summary["tables"]["main_metric"]["rows"]
        if (r["task"], r["row"], r["sparsity_key"]) == ("rte", "magnitude +KD", "0.5")
    )
    assert cell["mean"] == pytest.approx(0.61) and cell["n"] == 2
    assert summary["tasks"]["rte"]["rows"]["magnitude +KD"]["0.5"] == {
        k: v for k, v in cell.items() if k not in ("task", "row", "sparsity_key")
    }
    assert summary["tables"]["main_metric"]["keys"] == ["task", "row", "sparsity_key"]
    retention = summary["tables"]["retention"]["rows"]
    assert all(
        set(r)
        <= {
            "task",
            "row",
            "sparsity_key",
            "status",
            "retention",
            "achieved_sparsity",
            "target_sparsity",
            "sparsity_granularity",
        }
        for r in retention
    )


def test_speed_table_reaches_the_json_one_line_per_record():
    records = fixture_records()
    for record in records:
        if record["status"] == "done" and record["spec"]["method"] != "dense":
            record["speed"] = {
                "machine": {"cpu": "Test CPU", "threads": 2, "torch": "2.x"},
                "summary": {
                    "measured_speedup": 1.5,
                    "theoretical_speedup": 2.0,
                    "fraction_of_theoretical": 0.75,
                    "format": "csr",
                    "token_count": "32x128",
                    "sparsity": 0.5,
                },
            }
    summary = summarize(records)
    speed = summary["tables"]["speed"]["rows"]
    assert len(speed) == 5 and {r["measured_speedup"] for r in speed} == {1.5}
    assert speed[0]["machine"] == "Test CPU, 2 threads, torch 2.x"


def test_undefined_metric_is_shown_with_its_reason(tmp_path):
    records = fixture_records()
    records[2]["main_metric"] = {
        **records[2]["main_metric"],
        "value": None,
        "undefined": "constant predictions",
    }
    out = tmp_path / "board.md"
    assert (
        main(["leaderboard", "--runs", str(write_fixture_run(tmp_path / "run", records)), "--out", str(out)])
        == 0
    )
    assert "| magnitude +KD | – | undefined: constant predictions (n=2) |" in out.read_text()


def test_frame_has_one_typed_row_per_record():
    frame = records_frame(fixture_records())
    assert len(frame) == 10
    assert frame["value"].dtype == float and frame["achieved"].dtype == float
    assert list(frame.loc[frame["task"] == "rte", "row"].unique()) == [
        "dense",
        "magnitude +KD",
        "movement +KD",
        "soft_movement +KD",
    ]
    assert frame["dense_mean"].iloc[0] == pytest.approx(0.65)


def test_markdown_writer_is_unpadded_with_right_aligned_rules():
    assert markdown_table(["a", "b"], [["x", ""], ["long cell", "1"]], ["left", "right"]) == (
        "| a | b |\n|---|---:|\n| x |  |\n| long cell | 1 |"
    )
    assert markdown_table(["a"], []) == "| a |\n|---|"


def test_builtin_tables_in_page_order():
    names = [t.name for t in TABLES]
    assert names == [
        "main_metric",
        "retention",
        "oneshot",
        "probes",
        "speed",
        "cap_effect",
        "cap_ablation",
        "cap_ablation_effect",
        "cap_ablation_vs_criterion",
        "reported",
    ]


def _with_speed(records, measured):
    for record in records:
        if record["status"] == "done" and record["spec"]["method"] != "dense":
            record["speed"] = {
                "machine": {"cpu": "Test CPU", "threads": 2, "torch": "2.x"},
                "summary": {"measured_speedup": measured, "theoretical_speedup": 2.0, "format": "csr"},
            }
    return [r for r in records if r["status"] == "done"]


def test_compare_gates_on_any_table_field(tmp_path, capsys):
    base_run = write_fixture_run(tmp_path / "base", _with_speed(fixture_records(), 1.5))
    board = tmp_path / "board.md"
    assert main(["leaderboard", "--runs", str(base_run), "--out", str(board)]) == 0
    baseline = str(board.with_suffix(".json"))
    same = write_fixture_run(tmp_path / "same", _with_speed(fixture_records(), 1.5))
    assert (
        main(["compare", "--baseline", baseline, "--runs", str(same), "--gate", "speed.measured_speedup"])
        == 0
    )
    slower = write_fixture_run(tmp_path / "slower", _with_speed(fixture_records(), 1.2))
    capsys.readouterr()
    assert main(["compare", "--baseline", baseline, "--runs", str(slower)]) == 0, (
        "the main metric did not move"
    )
    assert (
        main(["compare", "--baseline", baseline, "--runs", str(slower), "--gate", "speed.measured_speedup"])
        == 1
    )
    out = capsys.readouterr().out
    assert re.search(
        r"\| regressed \| rte \| speed\.measured_speedup magnitude, rte-magnitude-0\.5-seed0-\w+ \| 0\.5 \| 1\.5 \| 1\.2 \|",
        out,
    ), out
    assert main(["compare", "--baseline", baseline, "--runs", str(slower), "--gate", "nope.x"]) == 2
    assert "tables: main_metric, reported, retention, speed" in capsys.readouterr().err


def test_header_states_the_compute_the_finished_records_cost():
    records = fixture_records()[:6]  # rte: 5 finished, then 1 failed
    for record, seconds in zip(records, (1800.0, 3600.0, 900.0, None, 7200.0, 7200.0), strict=True):
        record["timings"] = {} if seconds is None else {"total_seconds": seconds}
    records[2]["probes"] = {"timings": {"total_seconds": 720.0}}
    summary = summarize(records)
    assert summary["provenance"]["compute"] == {
        "cell_hours": 3.75,  # 1800 + 3600 + 900 + 7200 s: the untimed cell and the failed one are not counted
        "cells_timed": 4,
        "probe_hours": 0.2,
        "cells_probed": 1,
    }
    page = render_markdown(summary)
    assert "- compute: 3.75 cell-hours (the sum of 4 finished records' `timings.total_seconds`" in page
    assert "plus 0.20 h of probes (1 cell)" in page
    records[2]["probes"] = {}
    assert "of probes" not in render_markdown(summarize(records))
