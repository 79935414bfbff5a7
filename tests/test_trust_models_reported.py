"""Issue 13, items 6 and 3: any BERT checkpoint loads whatever its classifier head, and a paper's number gets a
capbench Δ only from records that reproduce the paper's setting."""

import copy
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from capbench.cli import main
from capbench.errors import CapbenchError
from capbench.models import load_classifier
from capbench.reported import compare_reported, load_reported, render_reported_table
from capbench.testing import tiny_bert, tiny_tokenizer

# --- item 6: checkpoints with a classifier head of any label count ------------------------------------------


def save_with_head(directory: Path, num_labels: int, seed: int = 0, **config) -> Path:
    """A tiny fine-tuned checkpoint: BertForSequenceClassification saved whole, head and label names included."""
    model = tiny_bert(num_labels=num_labels, seed=seed)
    names = {1: ["score"], 2: ["no", "yes"], 3: ["entailment", "neutral", "contradiction"]}[num_labels]
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {name: i for i, name in enumerate(names)}
    for key, value in config.items():
        setattr(model.config, key, value)
    model.save_pretrained(directory)
    tiny_tokenizer(directory).save_pretrained(directory)
    return directory


def _saved(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def test_a_head_of_another_label_count_is_reinitialised_with_one_line(tmp_path, capsys):
    directory = save_with_head(tmp_path / "mnli-model", 3, problem_type="single_label_classification")
    model = load_classifier(str(directory), 2, task="rte")
    assert model.classifier.weight.shape == (2, 32) and model.config.num_labels == 2
    assert model.config.id2label == {0: "LABEL_0", 1: "LABEL_1"}  # the saved MNLI names do not carry over
    saved = _saved(directory)
    assert torch.equal(
        model.bert.encoder.layer[0].output.dense.weight, saved["bert.encoder.layer.0.output.dense.weight"]
    )
    err = capsys.readouterr().err
    line = f"capbench: --model {directory} has a 3-label classifier head; rte needs 2, so the head is re-initialised"
    assert line in err.splitlines()
    load_classifier(str(directory), 2, task="rte")  # a grid loads it once per cell: said once
    assert line not in capsys.readouterr().err


def test_a_head_of_the_task_label_count_is_kept(tmp_path, capsys):
    directory = save_with_head(tmp_path / "rte-model", 2)
    model = load_classifier(str(directory), 2)
    saved = _saved(directory)
    assert torch.equal(model.classifier.weight, saved["classifier.weight"])
    assert torch.equal(model.classifier.bias, saved["classifier.bias"])
    assert model.config.id2label == {0: "no", 1: "yes"}
    assert "re-initialised" not in capsys.readouterr().err


def test_a_bare_encoder_gets_a_head_silently(tiny_model_dir, capsys):
    model = load_classifier(str(tiny_model_dir), 3)
    assert model.classifier.weight.shape == (3, 32)
    assert "re-initialised" not in capsys.readouterr().err


def test_regression_heads_and_the_saved_problem_type(tmp_path, capsys):
    """stsb (1 label, MSE) from a classification checkpoint and a 2-class task from an stsb checkpoint: the loss
    follows the label count, not the problem type the saved head was trained with."""
    batch = {"input_ids": torch.tensor([[2, 7, 8, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}

    classifier = save_with_head(tmp_path / "cls", 2, problem_type="single_label_classification")
    stsb = load_classifier(str(classifier), 1, task="stsb")
    out = stsb(**batch, labels=torch.tensor([3.5]))
    assert stsb.config.problem_type == "regression"
    assert out.loss.item() == pytest.approx((out.logits.item() - 3.5) ** 2, rel=1e-5)
    assert "2-label classifier head; stsb needs 1" in capsys.readouterr().err

    regression = save_with_head(tmp_path / "stsb", 1, problem_type="regression")
    kept = load_classifier(str(regression), 1)
    assert torch.equal(kept.classifier.weight, _saved(regression)["classifier.weight"])
    rte = load_classifier(str(regression), 2, task="rte")
    out = rte(**batch, labels=torch.tensor([1]))
    assert rte.config.problem_type == "single_label_classification" and out.loss.item() > 0
    assert "1-label classifier head; rte needs 2" in capsys.readouterr().err


def test_a_checkpoint_that_contradicts_its_config_is_a_one_line_error(tmp_path):
    directory = save_with_head(tmp_path / "broken", 2)
    config = json.loads((directory / "config.json").read_text())
    config["intermediate_size"] = 48  # the saved weights are 64 wide
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CapbenchError, match="does not give; the checkpoint and its config do not match"
    ) as info:
        load_classifier(str(directory), 2)
    assert "\n" not in str(info.value)


def test_run_accepts_a_checkpoint_with_a_three_label_head(tmp_path, tiny_glue, capsys):
    """The CLI grid on a fine-tuned MNLI-style checkpoint (3-label head) for rte (2 labels)."""
    directory = save_with_head(tmp_path / "mnli-finetuned", 3)
    out = tmp_path / "run"
    args = [
        "run", "--tasks", "rte", "--methods", "magnitude", "--sparsity", "0.5", "--preset", "smoke",
        "--model", str(directory), "--data-dir", str(tiny_glue), "--max-train-examples", "16",
        "--max-eval-examples", "8", "--batch-size", "8", "--out", str(out),
        "--cache-dir", str(tmp_path / "cache"), "--quiet",
    ]  # fmt: skip
    assert main(args) == 0
    records = [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]
    assert sorted(r["spec"]["method"] for r in records) == ["dense", "magnitude"]
    assert all(r["status"] == "done" for r in records), [r.get("error") for r in records]
    err = capsys.readouterr().err
    assert f"--model {directory} has a 3-label classifier head" in err
    assert "ignore_mismatched_sizes" not in err


# --- item 3: a Δ only for a reproduction -------------------------------------------------------------------

ENTRY = {
    "source": "Paper P, Table 9",
    "model": "bert-base-uncased",
    "task": "qqp",
    "split": "validation",
    "metric": "accuracy",
    "method": "magnitude",
    "sparsity": 0.9,
    "kd": True,
    "value": 80.0,
    "checkpoint_repo_ids": ["bert-base-uncased", "google-bert/bert-base-uncased"],
    "checkpoint_weights_sha256": ["0123456789abcdef0123"],
    "epochs": 10,
    "learning_rate": 3.0e-5,
    "batch_size": 32,
    "kd_setting": {"temperature": 2.0, "w_ce": 0.1, "w_kd": 0.9},
    "setting_source": "Paper P, appendix",
}
HUB = {
    "source": "hub",
    "repo_id": "bert-base-uncased",
    "revision": "86b5e0934494bd15c9632b12f734a8a67f723594",
}


def reproduction(value: float = 0.82) -> dict:
    """A record in the current shape that matches ENTRY's setting in every respect."""
    return {
        "schema_version": 2,
        "cell_id": "qqp-magnitude-0.9-seed0-0123456789",
        "status": "done",
        "spec": {
            "task": "qqp",
            "method": "magnitude",
            "sparsity": 0.9,
            "seed": 0,
            "model": "bert-base-uncased",
            "model_identity": dict(HUB),
            "preset": "paper",
            "data": {"kind": "hub", "sha256": "feedfacefeedfacefeed"},
            "max_train_examples": None,
            "max_eval_examples": None,
            "max_seq_length": 128,
            "data_sample_seed": 1234,
            "train": {
                "epochs": 10.0,
                "batch_size": 32,
                "learning_rate": 3e-05,
                "eval_batch_size": 64,
                "warmup_ratio": 0.1,
                "weight_decay": 0.0,
                "max_grad_norm": 1.0,
            },
            "method_options": {"scope": "global"},
            "kd": {"temperature": 2.0, "w_ce": 0.1, "w_kd": 0.9},
            "cap": None,
            "probes": [],
            "speed": False,
        },
        "data": {
            "source": {"kind": "hub"},
            "splits": {
                "train": {"official": True, "provenance": "nyu-mll/glue/qqp", "rows": 363846},
                "validation": {"official": True, "provenance": "nyu-mll/glue/qqp", "rows": 40430},
            },
        },
        "metrics": {"validation": {"accuracy": value, "f1": value - 0.03}},
        "main_metric": {"name": "accuracy", "split": "validation", "value": value},
    }


def _apply(record: dict, path: str, value) -> dict:
    *parents, last = path.split(".")
    node = record
    for key in parents:
        node = node[key]
    node[last] = copy.deepcopy(value)
    return record


def _changed(path: str, value) -> dict:
    return _apply(reproduction(), path, value)


def _row(record: dict, entry: dict = ENTRY) -> dict:
    (row,) = compare_reported([entry], [record])
    return row


def test_a_reproduction_of_every_condition_gets_a_delta():
    row = _row(reproduction(0.82))
    assert row["capbench"] == pytest.approx(82.0) and row["delta"] == pytest.approx(2.0)
    assert row["capbench_n"] == 1 and "not_a_reproduction" not in row
    namespaced = _changed("spec.model_identity.repo_id", "google-bert/bert-base-uncased")
    assert "delta" in _row(namespaced)
    listed_local = _changed(
        "spec.model_identity",
        {
            "source": "local",
            "weights_sha256": "0123456789abcdef0123",
            "config_sha256": "c",
            "tokenizer_sha256": "t",
        },
    )
    listed_local["spec"]["model"] = "/models/my-copy"  # the folder's name does not matter either way
    assert "delta" in _row(listed_local)
    cap = reproduction()
    cap["spec"].update(
        method="cap_magnitude", kd=None, cap={"kd_temperature": 2.0, "w_ce": 0.1, "w_kd": 0.9, "w_sup": 10.0}
    )
    assert "delta" in _row(cap, {**ENTRY, "method": "cap_magnitude"}), "CAP's own KD weights count as its KD"


UNLISTED_LOCAL = {"source": "local", "weights_sha256": "ffffffffffffffffffff", "config_sha256": "c"}
MISMATCHES = {
    "folder named bert-base-uncased, unlisted weights": (
        {"spec.model": "/data/bert-base-uncased", "spec.model_identity": UNLISTED_LOCAL},
        "local weights ffffffffffffffffffff are not a listed bert-base-uncased checkpoint",
    ),
    "another hub checkpoint": (
        {"spec.model_identity": {"source": "hub", "repo_id": "sentence-transformers/all-MiniLM-L6-v2"}},
        "checkpoint sentence-transformers/all-MiniLM-L6-v2 is not a listed bert-base-uncased",
    ),
    "no model identity": ({"spec.model_identity": {}}, "no model identity recorded"),
    "carved train split": (
        {"data.splits.train": {"official": False, "rows": 64}, "spec.max_train_examples": 64},
        "64 carved train rows (official: 363,846)",
    ),
    "part of the official train split": (
        {"data.splits.train": {"official": True, "rows": 64}, "spec.max_train_examples": 64},
        "64 of 363,846 train rows",
    ),
    "unofficial evaluation split": (
        {"data.splits.validation": {"official": False, "rows": 40430}},
        "40,430 carved validation rows (official: 40,430)",
    ),
    "official train split, row count not recorded": (
        {"data.splits.train": {"official": True}},
        "train rows not recorded",
    ),
    "part of the official evaluation split": (
        {"data.splits.validation": {"official": True, "rows": 8}, "spec.max_eval_examples": 8},
        "8 of 40,430 validation rows",
    ),
    "other epochs": ({"spec.train.epochs": 2.0}, "epochs 2 (source: 10)"),
    "other learning rate": ({"spec.train.learning_rate": 3e-4}, "learning rate 0.0003 (source: 3e-05)"),
    "other batch size": ({"spec.train.batch_size": 16}, "batch size 16 (source: 32)"),
    "KD off": ({"spec.kd": None}, "KD off (source: on)"),
    "other KD weights": (
        {"spec.kd": {"temperature": 1.0, "w_ce": 0.5, "w_kd": 0.5}},
        "KD temperature 1.0, w_ce 0.5, w_kd 0.5 (source: temperature 2.0, w_ce 0.1, w_kd 0.9)",
    ),
}


@pytest.mark.parametrize("name", MISMATCHES)
def test_each_single_mismatch_withholds_the_delta_and_says_why(name):
    changes, reason = MISMATCHES[name]
    record = reproduction()
    for path, value in changes.items():
        record = _apply(record, path, value)
    row = _row(record)
    assert "delta" not in row and "capbench" not in row
    assert row["not_a_reproduction"] == [reason]


def test_kd_on_against_a_no_kd_entry():
    row = _row(reproduction(), {**ENTRY, "kd": False, "kd_setting": "unknown"})
    assert row["not_a_reproduction"] == ["KD on (source: off)"]


def test_a_setting_the_source_does_not_give_rules_out_the_delta():
    entry = {**ENTRY, "epochs": "unknown", "kd_setting": "unknown"}
    row = _row(reproduction(), entry)
    assert "delta" not in row and row["unknown_settings"] == ["epochs", "KD setting"]
    assert row["not_a_reproduction"] == ["the source gives no epochs or KD setting"]
    table = render_reported_table([row])
    assert "| 80.0 | [1] | the source gives no epochs or KD setting |" in table
    assert "[1] Paper P, Table 9; it gives no epochs or KD setting, so no Δ is claimed against it" in table
    missing = {k: v for k, v in ENTRY.items() if k not in ("epochs", "learning_rate")}
    assert "delta" not in _row(reproduction(), missing), "a file without the setting keys claims no Δ"


def test_only_reproductions_enter_the_mean():
    rows = compare_reported(
        [ENTRY], [reproduction(0.80), _changed("spec.train.epochs", 1.0), reproduction(0.84)]
    )
    (row,) = rows
    assert row["capbench_n"] == 2 and row["capbench"] == pytest.approx(82.0)


def test_builtin_entries_say_their_setting_and_cite_it():
    entries = load_reported()
    for entry in entries:
        assert entry["checkpoint_repo_ids"] == ["bert-base-uncased", "google-bert/bert-base-uncased"]
        assert entry["setting_source"]
        if entry["source"].startswith("Sanh et al. 2020"):
            # 6 to 10 epochs per task in the paper, per-point values only in an external spreadsheet
            assert entry["epochs"] == entry["learning_rate"] == "unknown"
            assert not entry["kd"] or entry["kd_setting"] == "unknown"
        elif entry["source"].startswith("Kurtic et al. 2022, oBERT"):
            if "30 epochs" in entry["source"]:
                # sparseml research/optimal_BERT_surgeon_oBERT: 30epochs script + recipes, hardness 1.0, T 2.0
                assert (entry["epochs"], entry["learning_rate"], entry["batch_size"]) == (30, 5e-5, 32)
                assert entry["kd_setting"] == {"temperature": 2.0, "w_ce": 0.0, "w_kd": 1.0}
            else:
                # the 10-epoch column has no recipe: its setting stays unknown, so no delta is claimed
                assert entry["epochs"] == 10
                assert entry["learning_rate"] == entry["kd_setting"] == "unknown"
        else:
            assert entry["source"].startswith("Xu et al. 2022 (CAP)")
            assert (entry["epochs"], entry["learning_rate"], entry["batch_size"]) == (10, 3e-5, 32)
            assert entry["kd_setting"] == {"temperature": 2.0, "w_ce": 0.1, "w_kd": 0.9}


def test_smoke_qqp_run_in_a_folder_named_bert_base_uncased_gets_no_delta(tmp_path):
    """The report of issue 13: a MiniLM copy in `bert-base-uncased/`, 64 carved QQP train rows, smoke preset."""
    record = reproduction(0.656)
    record["cell_id"] = "qqp-dense-0-seed0-0123456789"
    record["spec"].update(
        method="dense",
        sparsity=0.0,
        kd=None,
        model="/home/me/models/bert-base-uncased",
        model_identity={"source": "local", "weights_sha256": "53aa51172d142c89d9ab", "config_sha256": "c"},
        preset="smoke",
        max_train_examples=64,
        max_eval_examples=256,
        train={"epochs": 1.0, "batch_size": 16, "learning_rate": 3e-4},
    )
    record["data"]["splits"] = {
        "train": {"official": False, "rows": 64, "provenance": "CARVED"},
        "validation": {"official": False, "rows": 256, "provenance": "CARVED"},
    }
    run = tmp_path / "run"
    (run / "records").mkdir(parents=True)
    (run / "records" / f"{record['cell_id']}.json").write_text(json.dumps(record))
    out = tmp_path / "board.md"
    assert main(["leaderboard", "--runs", str(run), "--out", str(out)]) == 0
    reported = out.read_text().split("## Reported in papers")[1]
    assert "Δ -" not in reported and "Δ +" not in reported
    (dense,) = [line for line in reported.splitlines() if line.startswith("| dense (BERT base fine-tuned)")]
    ref = re.search(r"\| 91\.4 \| 88\.4 \| \[(\d+)\] \|", dense).group(1)
    assert f"[{ref}] Sanh et al. 2020, Movement Pruning (arXiv 2005.07683), Table 2" in reported
    assert "64 carved train rows (official: 363,846)" in dense
    assert "local weights 53aa51172d142c89d9ab are not a listed bert-base-uncased checkpoint" in dense
    assert "never by folder name" in reported
    rows = json.loads(out.with_suffix(".json").read_text())["reported"]
    assert not any("delta" in row for row in rows)


def test_a_malformed_setting_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump([{**ENTRY, "learning_rate": "3e-5"}]))
    with pytest.raises(CapbenchError, match="learning_rate must be a number or 'unknown'"):
        load_reported(bad)
    bad.write_text(yaml.safe_dump([{**ENTRY, "kd_setting": {"temperature": 2.0}}]))
    with pytest.raises(CapbenchError, match="kd_setting must be"):
        load_reported(bad)
