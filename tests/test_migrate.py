"""Cells are named by their data's content, not its path; old records migrate to that naming."""

import json
import shutil

import pytest

from capbench import runner
from capbench.cli import main
from capbench.data.identity import data_identity
from capbench.data.sources import detect_source
from capbench.errors import CapbenchError
from capbench.records import RECORDS_DIR, SCHEMA_VERSION, load_records
from capbench.tasks import get_task
from tests.test_runner import run_args


def test_data_identity_follows_content_not_path(tiny_glue, tmp_path):
    rte = get_task("rte")
    copy = shutil.copytree(tiny_glue, tmp_path / "elsewhere")
    same = data_identity(detect_source(copy), rte)
    assert same == data_identity(detect_source(tiny_glue), rte)
    assert "root" not in same and same["kind"] == "local"
    with open(copy / "rte" / "validation.jsonl", "a") as handle:
        handle.write(json.dumps({"sentence1": "a b", "sentence2": "c", "label": 0, "idx": 999}) + "\n")
    assert data_identity(detect_source(copy), rte) != same


def _run_then_make_legacy(tiny_model_dir, tiny_glue, tmp_path):
    """A real finished grid, rewritten the way capbench 0.1's schema-1 records looked."""
    out = tmp_path / "run"
    args = run_args(tiny_model_dir, tiny_glue, out, tmp_path / "cache", "--methods", "magnitude")
    args += ["--sparsity", "0.5"]
    assert main(args) == 0
    for path in (out / RECORDS_DIR).glob("*.json"):
        record = json.loads(path.read_text())
        record["schema_version"] = 1
        record["spec"]["data"] = {"kind": "local", "root": str(tiny_glue)}
        del record["spec"]["model_identity"]
        record["cell_id"] = record["cell_id"].rsplit("-", 1)[0] + "-legacy0000"
        path.unlink()
        (path.parent / f"{record['cell_id']}.json").write_text(json.dumps(record))
    return args, out


def test_run_refuses_old_records_then_resumes_after_migration(
    tiny_model_dir, tiny_glue, tmp_path, monkeypatch, capsys
):
    args, out = _run_then_make_legacy(tiny_model_dir, tiny_glue, tmp_path)
    assert main(args) == 2
    assert "capbench migrate-records" in capsys.readouterr().err

    assert main(["migrate-records", str(out)]) == 0
    assert "2 records migrated, 0 already current" in capsys.readouterr().out
    migrated = load_records(out)
    assert {r["schema_version"] for r in migrated} == {SCHEMA_VERSION}
    assert all("root" not in r["spec"]["data"] and r["data"]["source"]["root"] for r in migrated)

    monkeypatch.setattr(runner, "run_cell", lambda spec, ctx: pytest.fail(f"reran {spec.cell_id}"))
    assert main(args) == 0
    assert "0 run, 2 already finished" in capsys.readouterr().out
    assert main(["migrate-records", str(out)]) == 0
    assert "0 records migrated, 2 already current" in capsys.readouterr().out


def test_migration_needs_the_data_it_hashes(tiny_model_dir, tiny_glue, tmp_path, capsys):
    _, out = _run_then_make_legacy(tiny_model_dir, tiny_glue, tmp_path)
    moved = shutil.move(str(tiny_glue), str(tmp_path / "moved"))
    assert main(["migrate-records", str(out)]) == 2
    assert "is gone; pass --data-dir" in capsys.readouterr().err
    assert main(["migrate-records", str(out), "--data-dir", str(moved)]) == 0


def test_migrate_names_a_directory_without_records(tmp_path):
    from capbench.migrate import migrate_run_dir

    with pytest.raises(CapbenchError, match="no records/ folder"):
        migrate_run_dir(tmp_path)
