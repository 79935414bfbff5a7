"""Issue 13, items 9 and 11: empty and broken data fail fast with one line naming the file and line;
evaluation rows that also occur in the train split are counted, warned about, refused under
--strict-data, and recorded in each split's provenance."""

import json
from pathlib import Path

import datasets
import pytest

from capbench import runner
from capbench.cli import main
from capbench.data.overlap import eval_train_overlap
from capbench.data.sources import detect_source, load_split
from capbench.errors import CapbenchError
from capbench.records import load_records
from capbench.tasks import get_task
from tests import test_runner


def run_args(model_dir, data_dir, tmp_path, *extra):
    """A one-cell smoke run (magnitude at 0.5) of tests/test_runner.py's grid, into tmp_path."""
    grid = test_runner.run_args(model_dir, data_dir, tmp_path / "run", tmp_path / "cache")
    return [*grid, "--methods", "magnitude", "--sparsity", "0.5", *extra]


def refused(capsys, argv) -> str:
    """Exit 2 with exactly one line on stderr, no traceback; returns that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("capbench: error: ")
    return err.removeprefix("capbench: error: ")


@pytest.fixture
def no_cells(monkeypatch):
    """Any cell that starts fails the test: the checks must come before all work."""
    monkeypatch.setattr(runner, "run_cell", lambda spec, ctx: pytest.fail(f"cell {spec.cell_id} started"))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# Item 9: empty and broken data ----------------------------------------------------------------


def test_header_only_tsv_train_is_empty(tmp_path, tiny_model_dir, capsys, no_cells):
    sst2 = tmp_path / "data" / "glue_data" / "SST-2"
    sst2.mkdir(parents=True)
    (sst2 / "train.tsv").write_text("sentence\tlabel\n")
    (sst2 / "dev.tsv").write_text("sentence\tlabel\na good film\t1\n")
    root = (tmp_path / "data" / "glue_data").resolve()
    argv = run_args(tiny_model_dir, tmp_path / "data", tmp_path, "--tasks", "sst2")
    for extra in ([], ["--dry-run"]):
        assert refused(capsys, [*argv, *extra]) == f"train split of sst2 in {root} is empty"
    assert not (tmp_path / "run" / "records").exists()


def test_empty_jsonl_train_split_is_empty(tiny_glue, tmp_path, tiny_model_dir, capsys, no_cells):
    (tiny_glue / "sst2" / "train.jsonl").write_text("")
    argv = run_args(tiny_model_dir, tiny_glue, tmp_path, "--tasks", "sst2")
    for extra in ([], ["--dry-run"]):
        assert refused(capsys, [*argv, *extra]) == f"train split of sst2 in {tiny_glue.resolve()} is empty"
    (tiny_glue / "sst2" / "train.jsonl").write_text("\n\n")  # blank lines are no rows either
    assert refused(capsys, argv) == f"train split of sst2 in {tiny_glue.resolve()} is empty"
    assert not (tmp_path / "run" / "records").exists()


def test_empty_parquet_split_is_empty(tmp_path):
    (tmp_path / "sst2").mkdir()
    empty = datasets.Dataset.from_dict({"sentence": [], "label": [], "idx": []})
    empty.to_parquet(str(tmp_path / "sst2" / "validation.parquet"))
    source = detect_source(tmp_path)
    with pytest.raises(CapbenchError, match=r"^validation split of sst2 in .* is empty$"):
        load_split(source, get_task("sst2"), "validation")


def test_cut_jsonl_line_names_file_and_line(tiny_glue, tmp_path, tiny_model_dir, capsys, no_cells):
    path = tiny_glue / "rte" / "train.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[10] = lines[10][: len(lines[10]) // 2] + "\n"  # line 11 cut off mid-string
    path.write_text("".join(lines))
    expected = f"{tiny_glue.resolve()}/rte/train.jsonl line 11: invalid JSON"
    for extra in ([], ["--dry-run"]):
        assert refused(capsys, [*run_args(tiny_model_dir, tiny_glue, tmp_path), *extra]).startswith(expected)
    assert not (tmp_path / "run" / "records").exists()


def test_cut_last_jsonl_line(tiny_glue):
    path = tiny_glue / "rte" / "train.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - 20])  # a download cut off in the last row (line 96)
    with pytest.raises(CapbenchError, match=r"rte/train.jsonl line 96: invalid JSON"):
        load_split(detect_source(tiny_glue), get_task("rte"), "train")


def test_jsonl_row_messages_give_file_lines(tmp_path):
    """Bad labels are named by file line even with blank lines before them (the reader skips those)."""
    (tmp_path / "rte").mkdir()
    rows = [{"sentence1": "a", "sentence2": "b", "label": label} for label in (0, 1, 5)]
    lines = [json.dumps(r) + "\n" for r in rows]
    (tmp_path / "rte" / "train.jsonl").write_text(lines[0] + "\n" + lines[1] + lines[2])
    with pytest.raises(CapbenchError, match=r"train.jsonl line 4: label 5 is outside the labels of rte"):
        load_split(detect_source(tmp_path), get_task("rte"), "train")


def test_parquet_row_messages_are_one_based(tmp_path):
    (tmp_path / "sst2").mkdir()
    rows = {"sentence": ["fine", "also fine", "bad label"], "label": [1, 0, 7], "idx": [0, 1, 2]}
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "sst2" / "validation.parquet"))
    with pytest.raises(CapbenchError, match=r"validation.parquet row 3: label 7 is outside"):
        load_split(detect_source(tmp_path), get_task("sst2"), "validation")


@pytest.mark.parametrize("flag,value", [("--max-train-examples", "0"), ("--max-eval-examples", "-1")])
def test_sample_of_no_rows_is_refused_up_front(
    tiny_glue, tmp_path, tiny_model_dir, capsys, no_cells, flag, value
):
    argv = run_args(tiny_model_dir, tiny_glue, tmp_path, flag, value)
    for extra in ([], ["--dry-run"]):
        err = refused(capsys, [*argv, *extra])
        # the data layer's "empty after sampling" line, or the general numeric-flag check if it runs first
        assert f"{flag} {value}" in err and ("positive integer" in err or "whole number of rows >= 1" in err)
    assert not (tmp_path / "run" / "records").exists()


def test_data_layer_refuses_a_sample_of_no_rows(tiny_glue):
    with pytest.raises(CapbenchError) as caught:
        load_split(
            detect_source(tiny_glue), get_task("sst2"), "train", limit=0, limit_flag="--max-train-examples"
        )
    assert str(caught.value) == (
        f"train split of sst2 in {tiny_glue.resolve()} is empty after sampling: --max-train-examples 0 "
        "keeps no rows; it must be a positive integer (omit it to use the whole split)"
    )


# Item 11: evaluation rows that are also training rows ---------------------------------------------


def leak_validation_rows(tiny_glue: Path, n: int = 3) -> None:
    """Copy n rte validation rows into train; one with changed case and spacing (still the same text)."""
    leaked = read_jsonl(tiny_glue / "rte" / "validation.jsonl")[:n]
    leaked[0] = {**leaked[0], "sentence1": "  " + leaked[0]["sentence1"].upper().replace(" ", "\t ")}
    train = read_jsonl(tiny_glue / "rte" / "train.jsonl")
    write_jsonl(tiny_glue / "rte" / "train.jsonl", train + leaked)


WARNING = (
    "capbench: warning: 3 of 24 rows of rte/validation also occur in its train split (by text fields); "
    "--strict-data refuses this"
)


def test_clean_data_has_no_overlap(tiny_glue, tmp_path, tiny_model_dir, capsys):
    assert eval_train_overlap(detect_source(tiny_glue), get_task("rte")) == {"validation": (0, 24)}
    assert main([*run_args(tiny_model_dir, tiny_glue, tmp_path), "--dry-run", "--strict-data"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_overlap_is_counted_by_normalised_text_fields(tiny_glue):
    leak_validation_rows(tiny_glue)
    assert eval_train_overlap(detect_source(tiny_glue), get_task("rte")) == {"validation": (3, 24)}
    # sentence1 alone matching is not a duplicate row: rte compares sentence1 and sentence2 together
    train = read_jsonl(tiny_glue / "rte" / "train.jsonl")
    validation = read_jsonl(tiny_glue / "rte" / "validation.jsonl")
    train.append({**validation[5], "sentence2": "a different hypothesis"})
    write_jsonl(tiny_glue / "rte" / "train.jsonl", train)
    assert eval_train_overlap(detect_source(tiny_glue), get_task("rte")) == {"validation": (3, 24)}


def test_overlap_warns_once_per_split(tiny_glue, tmp_path, tiny_model_dir, capsys):
    leak_validation_rows(tiny_glue)
    assert main([*run_args(tiny_model_dir, tiny_glue, tmp_path), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert err.count("capbench: warning:") == 1
    assert WARNING in err.splitlines()


def test_strict_data_refuses_overlap_before_any_work(tiny_glue, tmp_path, tiny_model_dir, capsys, no_cells):
    leak_validation_rows(tiny_glue)
    argv = [*run_args(tiny_model_dir, tiny_glue, tmp_path), "--strict-data"]
    for extra in ([], ["--dry-run"]):
        assert refused(capsys, [*argv, *extra]).startswith(
            "--strict-data: 3 of 24 rows of rte/validation also occur in its train split (by text fields)"
        )
    assert not (tmp_path / "run" / "records").exists()


def test_records_carry_the_overlap(tiny_glue, tmp_path, tiny_model_dir, capsys):
    leak_validation_rows(tiny_glue)
    assert main([*run_args(tiny_model_dir, tiny_glue, tmp_path), "--epochs", "0.1"]) == 0
    records = load_records(tmp_path / "run")
    assert records and {r["status"] for r in records} == {"done"}
    for record in records:
        splits = record["data"]["splits"]
        assert splits["validation"]["overlap_with_train"] == 3
        assert "overlap_with_train" not in splits["train"]


def test_shared_glue_overlap(shared_glue, shared_glue_raw):
    """The offline GLUE copy: CoLA and STS-B have a few genuine dev/train duplicates, RTE none."""
    packed, raw = detect_source(shared_glue), detect_source(shared_glue_raw)
    expected = {
        "cola": {"validation": (16, 1043)},
        "stsb": {"validation": (6, 1500)},
        "rte": {"validation": (0, 277)},
    }
    for name, overlap in expected.items():
        assert eval_train_overlap(packed, get_task(name)) == overlap
        assert eval_train_overlap(raw, get_task(name)) == overlap
