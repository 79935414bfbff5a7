from pathlib import Path

import pytest
from fixture_records import _record, fixture_records, write_fixture_run

from capbench.cli import main
from capbench.reported import REQUIRED_KEYS, compare_reported, load_reported, model_name

FIXTURE = Path(__file__).parent / "fixture_reported.yaml"


def _bert_record(method, sparsity, value, kd=True):
    record = _record("mnli", method, sparsity, 0, value, sparsity)
    record["spec"] = {**record["spec"], "model": "google-bert/bert-base-uncased"}
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


def test_delta_only_for_the_same_model_method_sparsity_and_kd():
    records = [
        _bert_record("magnitude", 0.9, 0.760, kd=False),
        _bert_record("magnitude", 0.9, 0.700, kd=True),  # KD on: not the reported setting
        *fixture_records(),  # MiniLM records: no reproduction of bert-base rows
    ]
    rows = compare_reported(load_reported(FIXTURE), records)
    by_source = {(r["model"], r["sparsity"]): r for r in rows}
    bert = by_source[("bert-base-uncased", 0.9)]
    assert bert["capbench"] == pytest.approx(76.0) and bert["delta"] == pytest.approx(-1.8)
    assert bert["capbench_n"] == 1
    minilm = by_source[("sentence-transformers/all-MiniLM-L6-v2", 0.5)]
    assert minilm["delta"] == pytest.approx(74.31 - 80.0, abs=0.01)
    assert all(r["task"] != "qqp" for r in rows), "tasks without records are left out"


def test_model_names_match_with_or_without_namespace():
    assert model_name("google-bert/bert-base-uncased") == model_name("bert-base-uncased")


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
        "| magnitude (MaP) | bert-base-uncased | 0.9 | no | 77.8 (capbench Δ -1.8, n=1) | [1] |" in reported
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
