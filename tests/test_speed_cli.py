import argparse
import json

import pytest
import torch

from capbench.speed.cli import register, write_json_atomic
from capbench.speed.kernels import iter_encoder_linears
from capbench.testing import tiny_bert

FAST = ["--token-counts", "1x8", "--model-token-counts", "1x8", "--repeats", "1", "--warmup", "0", "--quiet"]


def _parse(argv):
    parser = argparse.ArgumentParser(prog="capbench")
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("models")
    dense_dir, pruned_dir = tmp_path / "dense", tmp_path / "pruned"
    tiny_bert().save_pretrained(dense_dir)
    pruned = tiny_bert()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, m in iter_encoder_linears(pruned):
            m.weight[torch.rand(m.weight.shape, generator=g) < 0.9] = 0
    pruned.save_pretrained(pruned_dir)
    return dense_dir, pruned_dir


def test_bench_model_dir_prints_tables(tmp_path, capsys, saved_models):
    dense_dir, pruned_dir = saved_models
    args = _parse(
        [
            "bench",
            "--model",
            str(pruned_dir),
            "--dense",
            str(dense_dir),
            "--no-breakdown",
            "--json",
            str(tmp_path / "speed.json"),
            *FAST,
        ]
    )
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "Per-layer speedup vs dense at 1x8" in out
    assert "Whole model vs dense" in out
    assert json.loads((tmp_path / "speed.json").read_text())["summary"]["token_count"] == "1x8"


def test_bench_run_dir_writes_records_atomically(tmp_path, capsys, saved_models):
    dense_dir, pruned_dir = saved_models
    records = tmp_path / "run" / "records"
    records.mkdir(parents=True)
    done = {
        "spec": {"method": "magnitude", "sparsity": 0.9, "task": "sst2"},
        "status": "done",
        "metrics": {"validation": {"accuracy": 0.5}},
        "model_dir": str(pruned_dir),
        "dense_model_dir": str(dense_dir),
    }
    failed = {"spec": {"method": "cap", "sparsity": 0.9, "task": "sst2"}, "status": "failed"}
    (records / "a.json").write_text(json.dumps(done))
    (records / "b.json").write_text(json.dumps(failed))
    args = _parse(["bench", "--runs", str(tmp_path / "run"), "--no-breakdown", *FAST])
    assert args.handler(args) == 0
    a = json.loads((records / "a.json").read_text())
    assert a["metrics"] == done["metrics"] and a["speed"]["summary"]["token_count"] == "1x8"
    assert json.loads((records / "b.json").read_text()) == failed
    assert sorted(p.name for p in records.iterdir()) == ["a.json", "b.json"]  # no temp files left
    assert "| sst2 | magnitude | 0.90 |" in capsys.readouterr().out


def test_write_json_atomic_replaces(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("{}")
    path.chmod(0o640)
    write_json_atomic(path, {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_bad_token_count_is_a_user_error(saved_models):
    from capbench.errors import CapbenchError

    args = _parse(["bench", "--model", str(saved_models[1]), "--token-counts", "lots", "--quiet"])
    with pytest.raises(CapbenchError, match="BATCHxSEQ"):
        args.handler(args)
    args = _parse(["bench", "--model", "/nonexistent/dir", "--quiet"])
    with pytest.raises(CapbenchError, match="does not exist"):
        args.handler(args)


def test_runner_hook_speed_record(saved_models, monkeypatch):
    from types import SimpleNamespace

    from capbench.speed import runner_hook
    from capbench.speed.options import BenchOptions

    fast = BenchOptions(
        token_counts=["1x8"], model_token_counts=["1x8"], repeats=1, warmup=0, layer_budget=None
    )
    monkeypatch.setattr(runner_hook, "RUN_OPTIONS", fast)
    dense_dir, pruned_dir = saved_models
    record = {"cell_id": "c1", "model_dir": str(pruned_dir), "dense_model_dir": str(dense_dir)}
    speed = runner_hook.speed_record(
        record, SimpleNamespace(task="sst2"), SimpleNamespace(show_progress=False)
    )
    assert speed["summary"]["token_count"] == "1x8"
    assert speed["summary"]["sparsity"] > 0.8
    json.dumps(speed, allow_nan=False)
