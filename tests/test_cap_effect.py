"""The CAP − criterion table: metrics on bootstrap weights equal capbench.metrics at weight 1, the paired
interval finds a planted effect and calls a null one "not distinguishable from 0", and the leaderboard pairs
real cells through their per-example predictions."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from capbench.cli import main
from capbench.metrics import compute_metrics
from capbench.report.cap_effect import NOT_DISTINGUISHABLE, paired_bootstrap, weighted_metric


@pytest.mark.parametrize("metric", ["accuracy", "f1", "matthews_correlation", "pearson"])
def test_weighted_metric_at_weight_one_is_the_metric(metric):
    rng = np.random.default_rng(1)
    if metric == "pearson":
        label, pred = rng.normal(size=300), rng.normal(size=300)
        pred = pred + label
    else:
        label = rng.integers(0, 2 if metric != "accuracy" else 3, 300)
        pred = np.where(rng.random(300) < 0.7, label, rng.integers(0, 2, 300))
    expected = compute_metrics([metric], pred, label)[metric]
    assert weighted_metric(metric, np.ones((1, 300)), pred, label)[0] == pytest.approx(expected, abs=1e-12)
    # counting a row twice is the same as repeating it
    w = np.ones((1, 300))
    w[0, :10] = 2
    twice = compute_metrics([metric], np.concatenate([pred, pred[:10]]), np.concatenate([label, label[:10]]))
    assert weighted_metric(metric, w, pred, label)[0] == pytest.approx(twice[metric], abs=1e-12)
    with pytest.raises(ValueError, match="no paired bootstrap for spearmanr"):
        weighted_metric("spearmanr", w, pred, label)


def _labels_and_base(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, n)
    base = np.where(rng.random(n) < 0.7, label, (label + 1) % 3)  # about 70% right
    return rng, label, base


def test_a_planted_gain_is_found_and_no_gain_is_not_distinguishable():
    rng, label, base = _labels_and_base()
    better = base.copy()
    wrong = np.flatnonzero(base != label)
    better[wrong[: len(wrong) // 2]] = label[
        wrong[: len(wrong) // 2]
    ]  # CAP fixes half the errors: +15 points
    gain = paired_bootstrap("accuracy", [(better, base)], label)
    assert gain["difference"] == pytest.approx(float((better == label).mean() - (base == label).mean()))
    assert 0 < gain["low"] < gain["difference"] < gain["high"]
    loss = paired_bootstrap("accuracy", [(base, better)], label)  # the planted fault: the pair swapped
    assert loss["high"] < 0
    same = paired_bootstrap("accuracy", [(base, base)], label)
    assert same["difference"] == same["low"] == same["high"] == 0
    # a different model with the same accuracy: 50 errors fixed, 50 new ones; the interval covers 0
    right, wrong = np.flatnonzero(base == label), np.flatnonzero(base != label)
    fixed = rng.choice(wrong, 50, replace=False)
    noisy = base.copy()
    noisy[fixed] = label[fixed]
    broken = rng.choice(right, 50, replace=False)
    noisy[broken] = (label[broken] + 1) % 3
    flat = paired_bootstrap("accuracy", [(noisy, base)], label)
    assert flat["difference"] == 0 and flat["low"] < 0 < flat["high"]


def test_seeds_combine_and_their_spread_widens_the_interval():
    _, label, base = _labels_and_base()
    wrong = np.flatnonzero(base != label)
    plus = []
    for k in (10, 40, 70):  # three seeds gaining 1, 4 and 7 points
        model = base.copy()
        model[wrong[: 10 * k]] = label[wrong[: 10 * k]]
        plus.append((model, base))
    combined = paired_bootstrap("accuracy", plus, label)
    assert combined["seeds"] == 3
    assert combined["difference"] == pytest.approx(
        np.mean([(m == label).mean() - (base == label).mean() for m, _ in plus])
    )
    one = paired_bootstrap("accuracy", [plus[1]], label)
    assert combined["high"] - combined["low"] > one["high"] - one["low"]  # seed-to-seed spread counts
    # seeds held fixed: rows drawn only, so the spread between seeds no longer widens it
    fixed = paired_bootstrap("accuracy", plus, label, draw_seeds=False)
    assert fixed["difference"] == combined["difference"]
    assert fixed["high"] - fixed["low"] < combined["high"] - combined["low"]
    assert fixed["low"] < fixed["difference"] < fixed["high"]
    same = paired_bootstrap("accuracy", [plus[1], plus[1]], label, draw_seeds=False)
    assert (same["low"], same["high"]) == pytest.approx((one["low"], one["high"]))  # the same row draws


def tiny_rte_run(out, tmp_path, tiny_model_dir, tiny_glue, methods, *extra) -> list[str]:
    """`capbench run` arguments of a tiny rte grid (16 evaluation rows) of `methods` at 0.5, seeds 0 and 1."""
    args = ["run", "--tasks", "rte", "--preset", "smoke", "--model", str(tiny_model_dir), "--quiet"]
    args += ["--data-dir", str(tiny_glue), "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    args += [
        "--max-train-examples",
        "32",
        "--max-eval-examples",
        "16",
        "--batch-size",
        "8",
        "--no-save-models",
    ]
    return [*args, "--methods", methods, "--sparsity", "0.5", "--seeds", "0,1", *extra]


def test_the_leaderboard_pairs_cap_with_its_criterion_by_example(tiny_model_dir, tiny_glue, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_rte_run(out, tmp_path, tiny_model_dir, tiny_glue, "magnitude,cap_magnitude")) == 0
    board = tmp_path / "board.md"
    capsys.readouterr()
    assert main(["leaderboard", "--runs", str(out), "--out", str(board), "--reported", "none"]) == 0
    text = board.read_text()
    assert "## CAP − criterion, paired by evaluation example" in text
    rows = json.loads(board.with_suffix(".json").read_text())["tables"]["cap_effect"]["rows"]
    (row,) = rows
    assert (row["task"], row["effect_criterion"], row["sparsity_key"]) == ("rte", "magnitude", "0.5")
    assert row["status"] == "done" and row["seeds"] == 2 and row["rows"] == 16
    assert row["low"] <= row["difference"] <= row["high"]
    line = next(
        line for line in text.splitlines() if line.startswith("| rte") and "magnitude" in line and "[" in line
    )
    assert "2 seeds" in line and (NOT_DISTINGUISHABLE in line or "CAP better" in line or "CAP worse" in line)
    # a tampered predictions file is named, never paired
    for path in (out / "records").glob("rte-cap_magnitude-*seed1*.predictions.npz"):
        path.write_bytes(path.read_bytes() + b"x")
    assert main(["leaderboard", "--runs", str(out), "--out", str(board), "--reported", "none"]) == 0
    (row,) = json.loads(board.with_suffix(".json").read_text())["tables"]["cap_effect"]["rows"]
    assert row["seeds"] == 1 and "sha256 differs" in row["skipped"]["1"]
    # a criterion cell whose teacher is the same recipe retrained on another machine (other weights, the
    # same final loss to rounding) is paired, and the cell says so
    (path,) = (out / "records").glob("rte-magnitude-0.5-seed0-*.json")
    record = json.loads(path.read_text())
    assert record["teacher"]["weights_sha256"]
    record["teacher"]["weights_sha256"] = "0" * 20
    loss = record["teacher"]["training"]["final_loss_terms"]
    loss["ce"] *= 1 + 1e-6
    path.write_text(json.dumps(record))
    assert main(["leaderboard", "--runs", str(out), "--out", str(board), "--reported", "none"]) == 0
    (row,) = json.loads(board.with_suffix(".json").read_text())["tables"]["cap_effect"]["rows"]
    assert row["status"] == "done" and row["seeds"] == 1 and row["retrained_teacher"] == [0]
    assert "seed 0: teacher retrained)" in board.read_text()
    # one that learned from another teacher (its training ended elsewhere) is not paired
    loss["ce"] *= 1.01
    path.write_text(json.dumps(record))
    assert main(["leaderboard", "--runs", str(out), "--out", str(board), "--reported", "none"]) == 0
    (row,) = json.loads(board.with_suffix(".json").read_text())["tables"]["cap_effect"]["rows"]
    assert row["status"] == "no pair" and "different dense teachers" in row["reason"]
    assert re.search(
        r"seed 0: the two cells learned from different dense teachers \(\w{20} vs 0{20};", row["reason"]
    )


def test_a_criterion_never_run_with_cap_on_a_task_gets_no_row():
    from capbench.report.cap_effect import CAP_EFFECT

    frame = pd.DataFrame(
        {
            "status": ["done"] * 5,
            "effect_side": ["cap", "criterion", "criterion", "criterion", None],
            "effect_criterion": ["magnitude", "magnitude", "magnitude", "movement", None],
            "task": ["mnli", "mnli", "sst2", "mnli", "mnli"],
            "sparsity": [0.9, 0.5, 0.9, 0.9, 0.0],
        }
    )
    # mnli magnitude has a CAP cell (its 0.5 criterion cell still shows, as "no pair");
    # sst2 magnitude and mnli movement have none, and the dense cell is neither side
    assert CAP_EFFECT.where(frame).tolist() == [True, True, False, False, False]
    assert CAP_EFFECT.present(frame)
    assert not CAP_EFFECT.present(frame[frame["effect_side"].ne("cap")])
    assert not CAP_EFFECT.where(frame.iloc[:0]).any()
