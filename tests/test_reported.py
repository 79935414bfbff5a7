from pathlib import Path

import pytest
from fixture_records import _record, fixture_records, write_fixture_run

from capbench.cli import main
from capbench.reported import REQUIRED_KEYS, compare_reported, load_reported

FIXTURE = Path(__file__).parent / "fixture_reported.yaml"


def _bert_record(method, sparsity, value, kd=True):
    """A record in Paper A's setting (fixture_reported.yaml): bert-base-uncased pinned on the hub, the whole
    official MNLI train and validation_matched splits, 10 epochs at lr 3e-5."""
    record = _record("mnli", method, sparsity, 0, value, sparsity)
    record["spec"] = {
        **record["spec"],
        "model": "google-bert/bert-base-uncased",
        "model_identity": {"source": "hub", "repo_id": "google-bert/bert-base-uncased", "revision": "a" * 40},
        "max_train_examples": None,
        "max_eval_examples": None,
        "train": {"epochs": 10.0, "batch_size": 32, "learning_rate": 3e-5},
    }
    record["data"] = {
        "splits": {
            "train": {"official": True, "rows": 392702},
            "validation_matched": {"official": True, "rows": 9815},
        }
    }
    if not kd:
        record["spec"]["kd"] = None
    return record


def test_builtin_reported_numbers_are_well_formed():
    entries = load_reported()
    assert entries, "capbench/reported.yaml is empty"
    for entry in entries:
        assert set(REQUIRED_KEYS) <= set(entry)
        assert 0 <= entry["sparsity"] < 1
        assert 0 < entry["value"] <= 100
        assert entry["metric"] in {"accuracy", "f1", "matthews_correlation", "pearson", "spearmanr"}


def test_delta_only_for_a_reproduction_of_the_reported_setting():
    records = [
        _bert_record("magnitude", 0.9, 0.760, kd=False),
        _bert_record("magnitude", 0.9, 0.700, kd=True),  # KD on: not the reported setting
        *fixture_records(),  # MiniLM records on carved MNLI splits, 1 epoch
    ]
    rows = compare_reported(load_reported(FIXTURE), records)
    by_source = {(r["model"], r["sparsity"]): r for r in rows}
    bert = by_source[("bert-base-uncased", 0.9)]
    assert bert["capbench"] == pytest.approx(76.0) and bert["delta"] == pytest.approx(-1.8)
    assert bert["capbench_n"] == 1
    # Same method, sparsity and KD as the MiniLM entry, but the fixture records' local weights are not a listed
    # checkpoint and they ran on carved MNLI splits: the published number stands alone, with the reasons.
    minilm = by_source[("sentence-transformers/all-MiniLM-L6-v2", 0.5)]
    assert "delta" not in minilm and "capbench" not in minilm
    reasons = minilm["not_a_reproduction"]
    assert "all-MiniLM-L6-v2 checkpoint" in reasons[0] or reasons[0] == "no model identity recorded"
    assert any("carved train rows" in reason for reason in reasons)
    assert all(r["task"] != "qqp" for r in rows), "tasks without records are left out"


def test_hub_ids_with_or_without_namespace_count_only_when_listed():
    entries = load_reported(FIXTURE)
    record = _bert_record("magnitude", 0.9, 0.760, kd=False)
    for repo_id, reproduces in [
        ("bert-base-uncased", True),
        ("google-bert/bert-base-uncased", True),
        ("someone/bert-base-uncased", False),  # the same last name is not the same checkpoint
    ]:
        record["spec"]["model_identity"] = {"source": "hub", "repo_id": repo_id, "revision": "b" * 40}
        (row,) = [r for r in compare_reported(entries, [record]) if r["sparsity"] == 0.9]
        assert ("delta" in row) == reproduces, repo_id


def test_leaderboard_lists_reported_rows_apart_from_its_own(tmp_path):
    run = write_fixture_run(
        tmp_path / "run", [*fixture_records(), _bert_record("magnitude", 0.9, 0.76, kd=False)]
    )
    out = tmp_path / "board.md"
    assert main(["leaderboard", "--runs", str(run), "--out", str(out), "--reported", str(FIXTURE)]) == 0
    text = out.read_text()
    own, reported = text.split("## Reported in papers")
    assert "77.8" not in own
    assert (
        "| magnitude (MaP) | bert-base-uncased | 0.9 | no | 77.8 (capbench Δ -1.8, n=1) | [1] | – |"
        in reported
    )
    assert "[1] Paper A, Table 1" in reported

    assert main(["leaderboard", "--runs", str(run), "--out", str(out), "--reported", "none"]) == 0
    assert "Reported in papers" not in out.read_text()


def test_malformed_reported_file_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- source: x\n  task: mnli\n")
    run = write_fixture_run(tmp_path / "run")
    assert main(["leaderboard", "--runs", str(run), "--reported", str(bad)]) != 0
    err = capsys.readouterr().err.strip()
    assert "entry 1: missing keys" in err and len(err.splitlines()) == 1
