import json

import datasets
import pytest

from capbench.data.glue_tsv import read_glue_tsv
from capbench.data.sources import DataSource, detect_source, load_split, split_provenance
from capbench.data.tokenize import tokenize_split
from capbench.errors import CapbenchError
from capbench.tasks import get_task
from capbench.testing import tiny_tokenizer


def test_local_hub_schema_directory(tiny_glue):
    source = detect_source(tiny_glue)
    assert source.kind == "local"
    rows = load_split(source, get_task("rte"), "train")
    assert rows.column_names == ["sentence1", "sentence2", "label", "idx"]
    assert len(rows) == 96


def test_local_parquet_is_read(tmp_path):
    (tmp_path / "sst2").mkdir()
    datasets.Dataset.from_dict(
        {"sentence": ["a good film", "bad"], "label": [1, 0], "idx": [0, 1]}
    ).to_parquet(str(tmp_path / "sst2" / "validation.parquet"))
    rows = load_split(detect_source(tmp_path), get_task("sst2"), "validation")
    assert rows["label"] == [1, 0]


def test_glue_data_tsv_directory(tmp_path):
    root = tmp_path / "glue_data" / "RTE"
    root.mkdir(parents=True)
    (root / "train.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n0\tA man sat.\tA person sat.\tentailment\n"
        "1\tIt rained.\tIt was dry.\tnot_entailment\n"
    )
    source = detect_source(tmp_path)
    assert source.kind == "tsv" and source.root.endswith("glue_data")
    rows = load_split(source, get_task("rte"), "train")
    assert rows["label"] == [0, 1] and rows["idx"] == [0, 1]
    assert rows["sentence1"][1] == "It rained."


def test_hub_source_goes_through_datasets(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"sentence": ["ok"], "label": [1], "idx": [0]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows = load_split(DataSource("hub"), get_task("sst2"), "validation")
    assert calls == [("nyu-mll/glue", "sst2", "validation")]
    assert len(rows) == 1


def test_hub_failure_is_one_line_with_the_fix(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(CapbenchError, match="pass --data-dir"):
        load_split(DataSource("hub"), get_task("rte"), "train")


def test_missing_split_names_the_expected_file(tiny_glue):
    with pytest.raises(CapbenchError, match=r"missing split 'validation_matched' of mnli"):
        load_split(detect_source(tiny_glue), get_task("mnli"), "validation_matched")


def test_missing_column_is_named(tmp_path):
    (tmp_path / "rte").mkdir()
    (tmp_path / "rte" / "train.jsonl").write_text(json.dumps({"sentence1": "a", "label": 0}) + "\n")
    with pytest.raises(CapbenchError, match=r"train.jsonl: missing column\(s\) \['sentence2'\]"):
        load_split(detect_source(tmp_path), get_task("rte"), "train")


def test_label_outside_task_labels_names_the_row(tmp_path):
    (tmp_path / "rte").mkdir()
    rows = [{"sentence1": "a", "sentence2": "b", "label": label} for label in (0, 1, 5)]
    (tmp_path / "rte" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(CapbenchError, match=r"train.jsonl line 3: label 5 is outside the labels of rte"):
        load_split(detect_source(tmp_path), get_task("rte"), "train")


def test_malformed_tsv_row_is_reported(tmp_path):
    root = tmp_path / "RTE"
    root.mkdir()
    (root / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\tonly two fields\tentailment\n")
    with pytest.raises(CapbenchError, match=r"train.tsv row 2: malformed TSV row, expected 4 .* found 3"):
        read_glue_tsv(root / "train.tsv", get_task("rte"))


def test_real_malformed_qqp_row(shared_glue_raw):
    with pytest.raises(CapbenchError, match=r"nonofficial_sample.tsv row 1: malformed TSV row"):
        read_glue_tsv(shared_glue_raw / "QQP" / "nonofficial_sample.tsv", get_task("qqp"))


def test_shared_sources_agree(shared_glue, shared_glue_raw):
    """The hub-schema pack and the raw TSV give the same RTE rows and label ids."""
    task = get_task("rte")
    packed = load_split(detect_source(shared_glue), task, "validation")
    raw = load_split(detect_source(shared_glue_raw), task, "validation")
    assert packed["label"] == raw["label"]
    assert packed["sentence1"] == raw["sentence1"]


def test_manifest_marks_carved_splits(shared_glue):
    source = detect_source(shared_glue)
    assert split_provenance(source, get_task("mnli"), "train")["official"] is False
    assert split_provenance(source, get_task("rte"), "train")["official"] is True


def test_unrecognised_data_dir(tmp_path):
    with pytest.raises(CapbenchError, match="found neither"):
        detect_source(tmp_path)
    with pytest.raises(CapbenchError, match="no such directory"):
        detect_source(tmp_path / "missing")


def test_tokenized_split_is_cached(tiny_glue, tmp_path, monkeypatch):
    task = get_task("sst2")
    rows = load_split(detect_source(tiny_glue), task, "train")
    tokenizer = tiny_tokenizer(tmp_path / "tok")
    first = tokenize_split(rows, tokenizer, task, 32, tmp_path / "cache")
    assert {"input_ids", "attention_mask", "labels", "idx"} <= set(first.column_names)

    def no_retokenizing(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(datasets.Dataset, "map", no_retokenizing)
    second = tokenize_split(rows, tokenizer, task, 32, tmp_path / "cache")
    assert second["input_ids"] == first["input_ids"]
    with pytest.raises(AssertionError, match="tokenized again"):
        tokenize_split(rows, tokenizer, task, 16, tmp_path / "cache")  # another max length is another key
