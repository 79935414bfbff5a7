"""The leaderboard's CAP ablation table pairs each variant with the default CAP cell by evaluation example."""

import json

import pandas as pd
import pytest
from test_cap_effect import tiny_rte_run

from capbench.cli import main
from capbench.methods import cap_variant
from capbench.report.ablation_effect import VERDICTS, _pairable
from capbench.report.cap_effect import NOT_DISTINGUISHABLE


def _run(out, tmp_path, tiny_model_dir, tiny_glue, *extra):
    assert main(tiny_rte_run(out, tmp_path, tiny_model_dir, tiny_glue, "cap_magnitude", *extra)) == 0


def _board(out, tmp_path):
    board = tmp_path / "board.md"
    assert main(["leaderboard", "--runs", str(out), "--out", str(board), "--reported", "none"]) == 0
    return board.read_text(), json.loads(board.with_suffix(".json").read_text())["tables"]


def test_each_variant_is_paired_with_the_default_cap_cell(tiny_model_dir, tiny_glue, tmp_path, capsys):
    out = tmp_path / "run"
    _run(out, tmp_path, tiny_model_dir, tiny_glue, "--cap-option", "modules=prc+snc")
    capsys.readouterr()
    text, tables = _board(out, tmp_path)
    assert "cap_ablation_effect" not in tables  # variants alone: nothing to pair with, no table
    assert "## CAP ablations − default CAP" not in text
    _run(out, tmp_path, tiny_model_dir, tiny_glue)  # the default CAP cells
    capsys.readouterr()
    text, tables = _board(out, tmp_path)
    assert "## CAP ablations − default CAP, paired by evaluation example" in text
    (row,) = tables["cap_ablation_effect"]["rows"]
    assert row["task"] == "rte" and row["sparsity_key"] == "0.5" and "modules=" in row["row"]
    assert row["status"] == "done" and row["seeds"] == 2 and row["rows"] == 16 and row["seed_list"] == [0, 1]
    assert row["low"] <= row["difference"] <= row["high"]
    assert row["verdict"] in (NOT_DISTINGUISHABLE, *VERDICTS)
    paired = text.split("## CAP ablations − default CAP")[1]
    line = next(line for line in paired.splitlines() if line.startswith("| rte | cap_magnitude [modules="))
    assert "2 seeds" in line and line.count("|") == 4  # task, variant, s=0.5
    # the variant's own numbers stay in the ablation table; the default is not a row of the paired one
    assert all("[" in r["row"] for r in tables["cap_ablation_effect"]["rows"])
    # a default cell that learned from another teacher is not paired with the variant of that seed
    paths = sorted((out / "records").glob("rte-cap_magnitude-0.5-seed0-*.json"))
    default = next(p for p in paths if not cap_variant(json.loads(p.read_text())["spec"]))
    record = json.loads(default.read_text())
    record["teacher"]["weights_sha256"] = "0" * 20
    record["teacher"]["training"]["final_loss_terms"]["ce"] *= 1.01
    default.write_text(json.dumps(record))
    _, tables = _board(out, tmp_path)
    (row,) = tables["cap_ablation_effect"]["rows"]
    assert row["seeds"] == 1 and "different dense teachers" in row["skipped"]["0"]
    # the same recipe retrained (other weights, the final loss equal to rounding) is paired and named
    record["teacher"]["training"]["final_loss_terms"]["ce"] /= 1.01
    default.write_text(json.dumps(record))
    _, tables = _board(out, tmp_path)
    (row,) = tables["cap_ablation_effect"]["rows"]
    assert row["seeds"] == 2 and row["retrained_teacher"] == [0] and "skipped" not in row


def test_pairable_needs_a_variant_and_a_default_of_the_same_criterion_and_sparsity():
    def frame(*cells):
        return pd.DataFrame(
            [
                {
                    "status": "done",
                    "sparsity": s,
                    "sparsity_key": str(s),
                    "task": "mnli",
                    "ablation_side": side,
                }
                | {"ablation_criterion": criterion}
                for side, criterion, s in cells
            ]
        )

    assert _pairable(frame(("variant", "first_order", 0.97), ("default", "first_order", 0.97)))
    assert not _pairable(frame(("variant", "first_order", 0.97), ("default", "magnitude", 0.97)))
    assert not _pairable(frame(("variant", "first_order", 0.97), ("default", "first_order", 0.9)))
    assert not _pairable(frame(("default", "first_order", 0.97)))


def test_each_variant_is_paired_with_its_criterion_alone(tiny_model_dir, tiny_glue, tmp_path, capsys):
    """The second paired table: variant − the criterion's +KD cell (does any CAP variant beat KD alone?)."""
    from capbench.records import load_records
    from capbench.report.frame import records_frame

    out = tmp_path / "run"
    _run(out, tmp_path, tiny_model_dir, tiny_glue, "--cap-option", "modules=prc+snc")
    capsys.readouterr()
    text, tables = _board(out, tmp_path)
    assert "cap_ablation_vs_criterion" not in tables and "## CAP ablations − criterion" not in text
    assert main(tiny_rte_run(out, tmp_path, tiny_model_dir, tiny_glue, "magnitude")) == 0
    capsys.readouterr()
    text, tables = _board(out, tmp_path)
    assert "## CAP ablations − criterion, paired by evaluation example" in text
    assert "cap_ablation_effect" not in tables  # still no default CAP cell
    (row,) = tables["cap_ablation_vs_criterion"]["rows"]
    assert "modules=" in row["row"] and row["status"] == "done" and row["seeds"] == 2 and row["rows"] == 16
    frame = records_frame(load_records(out), [out])
    means = frame[frame["status"].eq("done")].groupby("row")["value"].mean()
    variant = next(label for label in means.index if "modules=" in label)
    assert row["difference"] == pytest.approx(100 * (means[variant] - means["magnitude +KD"]), abs=1e-6)
    assert row["low"] <= row["difference"] <= row["high"]


def test_pairable_vs_criterion_needs_both_cells_with_stored_predictions():
    from capbench.report.ablation_effect import _pairable_vs_criterion

    def cell(ablation_side, effect_side, s=0.97, examples="x.npz"):
        return {
            "status": "done",
            "sparsity": s,
            "sparsity_key": str(s),
            "task": "mnli",
            "ablation_side": ablation_side,
            "ablation_criterion": "first_order" if ablation_side else None,
            "effect_side": effect_side,
            "effect_criterion": "first_order" if effect_side else None,
            "examples": examples,
        }

    assert _pairable_vs_criterion(pd.DataFrame([cell("variant", None), cell(None, "criterion")]))
    assert not _pairable_vs_criterion(pd.DataFrame([cell("variant", None), cell(None, "criterion", s=0.9)]))
    assert not _pairable_vs_criterion(
        pd.DataFrame([cell("variant", None, examples=None), cell(None, "criterion")])
    )
    assert not _pairable_vs_criterion(pd.DataFrame([cell("variant", None)]))
