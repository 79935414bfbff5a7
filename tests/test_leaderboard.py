import copy
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from fixture_records import fixture_records, write_fixture_run

from capbench.cli import main
from capbench.errors import CapbenchError
from capbench.predictions import write_predictions
from capbench.report import render_markdown, summarize

# rte's 256 evaluation rows in the golden run: a balanced split, so chance (majority class) is 50.0
BALANCED = np.array([0, 1] * 128)

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = os.environ.get("CAPBENCH_REGENERATE_GOLDEN") == "1"


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if REGENERATE:
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; rerun with CAPBENCH_REGENERATE_GOLDEN=1 if intended"


def with_predictions(records: list[dict], records_dir: Path, labels: np.ndarray, task: str = "rte") -> list:
    """The records, each finished one of `task` pointing at a predictions file of `labels` written to
    `records_dir` (the per-example file the runner writes beside a record)."""
    out = []
    for record in copy.deepcopy(records):
        if record["status"] == "done" and record["spec"]["task"] == task:
            columns = {"idx": np.arange(len(labels)), "label": labels, "prediction": labels}
            columns["logits"] = np.zeros((len(labels), 2), dtype=np.float32)
            split = record["main_metric"]["split"]
            record["predictions"] = write_predictions(records_dir, record["cell_id"], {split: columns})
        out.append(record)
    return out


def test_markdown_and_json_match_golden_files(tmp_path, capsys):
    records = with_predictions(fixture_records(), tmp_path / "run" / "records", BALANCED)
    run = write_fixture_run(tmp_path / "run", records)  # mnli's predictions are missing: chance unknown
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


def test_plot_series_styles_do_not_repeat_and_the_legend_hides_no_point():
    """20 rows (methods plus CAP ablations): every series gets its own colour-marker-line, and the legend
    sits right of the axes, so no point lies under it."""
    import matplotlib.pyplot as plt

    from capbench.plots import _outside_legend, series_style

    styles = {
        (series_style(i)["color"], series_style(i)["marker"], str(series_style(i)["linestyle"]))
        for i in range(40)
    }
    assert len(styles) == 40
    fig, ax = plt.subplots()
    for i in range(20):
        ax.plot([0.5, 0.9], [i, i + 1], label=f"row {i}", **series_style(i))
    _outside_legend(ax)
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 > ax.get_window_extent().x1
    plt.close(fig)


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


def _at_majority(records: list[dict], value: float, good: float) -> list[dict]:
    """rte's finished cells all scoring `value` (what predicting the majority class scores), but
    soft_movement's, which scores `good`."""
    out = []
    for record in copy.deepcopy(records):
        if record["status"] == "done" and record["spec"]["task"] == "rte":
            score = good if record["spec"]["method"] == "soft_movement" else value
            record["main_metric"]["value"] = score
        out.append(record)
    return out


def test_cells_at_chance_are_marked_and_a_dense_reference_at_chance_warns(tmp_path):
    labels = np.array([0] * 200 + [1] * 56)  # majority class: 200/256
    records_dir = tmp_path / "run" / "records"
    records = with_predictions(_at_majority(fixture_records(), 200 / 256, 0.95), records_dir, labels)
    run = write_fixture_run(tmp_path / "run", records)
    summary = summarize(records, run_dirs=[run])
    rte = summary["tasks"]["rte"]
    assert rte["chance"] == [
        {"split": "validation", "rows": 256, "value": pytest.approx(200 / 256, abs=1e-4)}
    ]
    assert rte["rows"]["dense"]["0"]["vs_chance"] == "at"
    assert rte["rows"]["magnitude +KD"]["0.9"]["vs_chance"] == "at"
    assert rte["rows"]["soft_movement +KD"]["0.9"]["vs_chance"] == "above"
    retention = summary["tables"]["retention"]["rows"]
    assert {
        r["row"]: r.get("vs_chance") for r in retention if r["task"] == "rte" and r["sparsity_key"] == "0.9"
    } == {
        "magnitude +KD": "at",
        "movement +KD": None,
        "soft_movement +KD": "above",
    }
    text = render_markdown(summary)
    lines = {line.split(" | ")[0]: line for line in text.split("## rte: accuracy")[1].splitlines()[:12]}
    assert "≈ chance" in lines["| dense"] and "≈ chance" in lines["| magnitude +KD"]
    assert "≈ chance" not in lines["| soft_movement +KD"]
    assert "Chance: 78.1 (majority class, the 256 validation rows)." in text
    assert "Dense reference is at chance on rte: results on this task do not measure pruning." in text
    assert "Dense reference is at chance on mnli" not in text


def test_chance_is_unknown_without_the_predictions_files(tmp_path):
    records = _at_majority(fixture_records(), 200 / 256, 0.95)
    summary = summarize(records, run_dirs=[write_fixture_run(tmp_path / "run", records)])
    assert summary["tasks"]["rte"]["chance"] == [{"split": "validation", "rows": 256, "value": None}]
    assert "vs_chance" not in summary["tasks"]["rte"]["rows"]["dense"]["0"]
    text = render_markdown(summary)
    assert "Chance: unknown (no per-example predictions of the 256 validation rows" in text
    assert "≈ chance" not in text and "at chance on rte" not in text


def test_rows_that_learned_from_different_teachers_are_named():
    """A grid run across machines retrains the cached teacher; the board says which rows of a seed learned
    from which teacher (weights hash, or for older records the machine that trained it)."""
    records = fixture_records()
    markdown = render_markdown(summarize(records))
    assert "dense teachers of the same recipe" not in markdown  # one teacher per (task, seed)
    retrained = next(
        r
        for r in records
        if r["spec"]["task"] == "rte"
        and r["spec"]["method"] == "magnitude"
        and r["spec"]["sparsity"] == 0.5
        and r["spec"]["seed"] == 0
    )
    retrained["teacher"]["weights_sha256"] = "ffffeeeeddddccccbbbb"
    legacy = next(r for r in records if r["spec"]["task"] == "rte" and r["spec"]["method"] == "soft_movement")
    del legacy["teacher"]["weights_sha256"]
    markdown = render_markdown(summarize(records))
    notes = [line for line in markdown.splitlines() if "dense teachers of the same recipe" in line]
    assert len(notes) == 1 and notes[0].startswith("Seed 0 used 3 dense teachers")  # rte seed 0 only
    assert "weights ffffeeeedddd: magnitude +KD s=0.5" in notes[0]
    assert (
        "trained on Test CPU with torch 2.13.0" in notes[0]
        and "weights not recorded: soft_movement +KD s=0.9" in notes[0]
    )


def test_the_runner_records_which_teacher_weights_a_cell_learned_from():
    from fixture_records import runner_templates

    templates = runner_templates()
    trained, cached = templates["dense"]["teacher"], templates["magnitude"]["teacher"]
    assert not trained["cached"] and cached["cached"]  # the dense cell trained it; the pruned cell loaded it
    assert re.fullmatch("[0-9a-f]{20}", trained["weights_sha256"])
    assert cached["weights_sha256"] == trained["weights_sha256"]
