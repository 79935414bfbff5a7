"""Mask churn of the learned-score methods (issue 16 item 6): the fraction of mask entries flipped by each mask
update, summarised in ``config()["mask_churn"]`` and so in ``record["method_config"]``."""

import json

import pytest

from capbench.cli import main
from capbench.pruning import make_pruner
from capbench.pruning.base import churn_summary
from capbench.records import load_records
from capbench.testing import tiny_bert
from tests.test_pruning_methods import train_with
from tests.test_runner import run_args


def test_churn_summary_splits_updates():
    churn = [(step, value, value / 2) for step, value in enumerate([0.5] + [0.1] * 18 + [0.0])]
    summary = churn_summary(churn)
    assert summary == {
        "updates": 20,
        "first_step": 0,
        "last_step": 19,
        "first_10pct": pytest.approx(0.3),
        "middle": pytest.approx(0.1),
        "last_10pct": pytest.approx(0.05),
        "max": 0.5,
        "last": 0.0,
        "swapped": {
            "first_10pct": pytest.approx(0.15),
            "middle": pytest.approx(0.05),
            "last_10pct": pytest.approx(0.025),
            "max": 0.25,
            "last": 0.0,
        },
    }
    assert churn_summary([(3, 0.25, 0.0)])["middle"] is None  # one update: the middle is empty


@pytest.mark.parametrize("method", ["movement", "soft_movement"])
def test_learned_methods_record_churn(method):
    model = tiny_bert()
    pruner = make_pruner(method, 0.5)
    train_with(model, pruner, steps=20)
    # one entry per mask update during training (movement: from the first step with a sparsity > 0)
    assert pruner.churn and all(0 <= swapped <= value <= 1 for _, value, swapped in pruner.churn)
    steps = [step for step, _, _ in pruner.churn]
    assert steps == sorted(steps) and steps[-1] == 19
    # the first update prunes from a dense mask: the scheduled sparsity flips, nothing is swapped
    first_step, first, swapped = pruner.churn[0]
    assert first >= pruner.scheduled_sparsity(first_step + 1) - 0.01 and swapped == 0
    summary = pruner.config()["mask_churn"]
    assert summary["updates"] == len(pruner.churn) and summary["last"] == round(pruner.churn[-1][1], 6)
    json.dumps(pruner.config())


def test_churn_counts_flipped_entries():
    model = tiny_bert()
    pruner = make_pruner("movement", 0.5)
    pruner.attach(model, 10)
    masks = [m.mask.bool().clone() for m in pruner.modules]
    masks[0][0, :4] = False  # prune 4 entries of the first matrix
    pruner.set_masks(masks, step=3)
    masks[0][0, :2] = True  # revive 2 of them and prune 2 others: 4 flips, 4 swapped
    masks[0][1, :2] = False
    pruner.set_masks(masks, step=4)
    total = sum(m.mask.numel() for m in pruner.modules)
    assert pruner.churn == [(3, 4 / total, 0.0), (4, 4 / total, 4 / total)]
    pruner.set_masks(masks)  # no step: not a training update, not recorded
    assert len(pruner.churn) == 2


def test_hard_methods_record_no_churn():
    pruner = make_pruner("magnitude", 0.5)
    train_with(tiny_bert(), pruner, steps=12)
    assert pruner.churn == [] and "mask_churn" not in pruner.config()


def test_churn_lands_in_the_record_without_changing_the_digest(tiny_model_dir, tiny_glue, tmp_path):
    out = tmp_path / "run"
    args = run_args(tiny_model_dir, tiny_glue, out, tmp_path / "cache", "--methods", "movement")
    assert main([*args, "--sparsity", "0.5"]) == 0
    (record,) = [r for r in load_records(out) if r["spec"]["method"] == "movement"]
    assert record["status"] == "done", record.get("error")
    churn = record["method_config"]["mask_churn"]
    assert churn["updates"] >= 1 and 0 <= churn["last"] <= 1
    assert "mask_churn" not in json.dumps(record["spec"])
