"""The Record type: what the runner writes round-trips through Record.from_disk / to_disk unchanged."""

from __future__ import annotations

import json

import pytest

from capbench.cli import main
from capbench.record import FAILED, Record, RecordError
from capbench.records import RECORDS_DIR, dumps_json
from capbench.spec import CellSpec
from tests.test_runner import run_args


def _spec() -> CellSpec:
    return CellSpec(
        task="rte", method="magnitude", sparsity=0.5, seed=0, model="m", preset="smoke", data={},
        max_train_examples=8, max_eval_examples=8, max_seq_length=32, data_sample_seed=1, train={},
    )  # fmt: skip


def test_runner_records_round_trip_byte_for_byte(tiny_model_dir, tiny_glue, tmp_path):
    out = tmp_path / "run"
    args = run_args(tiny_model_dir, tiny_glue, out, tmp_path / "cache", "--methods", "magnitude")
    assert main([*args, "--sparsity", "0.5", "--no-save-models"]) == 0
    paths = sorted((out / RECORDS_DIR).glob("*.json"))
    assert len(paths) == 2
    for path in paths:
        record = Record.from_disk(path)
        assert record.is_done and record.task == "rte" and record.main_value is not None
        assert record.extra == {}  # every field the runner writes is a declared field
        assert dumps_json(record.to_dict()) == path.read_text()


def test_unknown_fields_survive_a_rewrite(tmp_path):
    data = Record.for_spec(_spec(), FAILED, error="E: x", traceback="tb").to_dict()
    data["written_by_a_newer_capbench"] = {"k": 1}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    record = Record.from_disk(path)
    assert record.extra == {"written_by_a_newer_capbench": {"k": 1}}
    record.to_disk(path)
    assert json.loads(path.read_text()) == data


def test_failure_is_one_line_with_a_traceback():
    try:
        raise RuntimeError("boom")
    except RuntimeError as error:
        record = Record.failure(_spec(), error)
    assert record.status == FAILED and record.error == "RuntimeError: boom"
    assert "Traceback" in record.traceback and record.main_value is None


@pytest.mark.parametrize(
    "text, problem",
    [
        ('{"schema_version": 3, "cell_id"', "not valid JSON"),
        (b'{"schema_version": \xff\xfe}', "not valid JSON"),  # bytes that are not UTF-8
        ("[1, 2]", "not a JSON object"),
        ('{"schema_version": 3, "cell_id": "x", "status": "done"}', "missing field spec"),
        (
            '{"schema_version": 3, "cell_id": "x", "status": "done", "spec": {"task": "rte", "method": "m", '
            '"sparsity": 0, "seed": 0, "model": "m", "preset": "p"}}',
            "missing fields main_metric, metrics",
        ),
    ],
)
def test_from_disk_names_the_problem(tmp_path, text, problem):
    path = tmp_path / "r.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(RecordError, match=problem):
        Record.from_disk(path)


def test_main_value_is_finite_or_none():
    spec = _spec()
    for value, expected in ((0.5, 0.5), (None, None), (float("nan"), None), (float("inf"), None)):
        record = Record.for_spec(
            spec, "done", metrics={}, main_metric={"name": "a", "split": "v", "value": value}
        )
        assert record.main_value == expected
