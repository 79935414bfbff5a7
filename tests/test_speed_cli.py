import argparse
import json

import pytest
import torch

from capbench.speed.cli import register, write_json_atomic
from capbench.speed.kernels import iter_encoder_linears
from capbench.testing import tiny_bert, tiny_tokenizer

ROUNDS = [
    "--max-rounds",
    "1",
    "--min-rounds",
    "1",
    "--model-min-seconds",
    "0",
    "--warmup",
    "0",
    "--threads",
    "1",
]
ROUNDS += ["--quiet"]
FAST = ["--token-counts", "1x8", "--model-token-counts", "1x8", *ROUNDS]


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
    tiny_tokenizer(pruned_dir).save_pretrained(pruned_dir)  # as a run saves it beside the weights
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
    assert "Calibration at 1x8 tokens" in out
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


def test_runner_hook_times_the_cells_evaluation_sentences(saved_models, monkeypatch, tiny_glue):
    from types import SimpleNamespace

    from capbench.data.sources import detect_source
    from capbench.speed import runner_hook
    from capbench.speed.options import BenchOptions

    fast = BenchOptions(
        token_counts=["1x8"],
        model_token_counts=["1x8", "4x8"],
        repeats=1,
        warmup=0,
        layer_budget=None,
        threads=1,
        sentences=6,
        model_min_seconds=0,
    )
    monkeypatch.setattr(runner_hook, "RUN_OPTIONS", fast)
    dense_dir, pruned_dir = saved_models
    record = {"cell_id": "c1", "model_dir": str(pruned_dir), "dense_model_dir": str(dense_dir)}
    spec = SimpleNamespace(task="sst2", max_seq_length=16)
    ctx = SimpleNamespace(show_progress=False, source=detect_source(tiny_glue))
    speed = runner_hook.speed_record(record, spec, ctx)
    assert speed["settings"]["model_token_counts"] == ["1x16", "4x16"]  # cut where the cell cut them
    assert speed["summary"]["token_count"] == "4x16"
    assert speed["summary"]["sparsity"] > 0.8
    inputs = speed["inputs"]
    assert inputs["kind"] == "sentences" and inputs["sequences"] == 6
    assert inputs["source"].startswith("sst2 validation, 6 of 24 rows")
    assert speed["model"]["1x16"]["forwards"] == 6 and speed["model"]["4x16"]["forwards"] == 2
    json.dumps(speed, allow_nan=False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--one-shot", "random"], "--one-shot random needs --sparsity S in [0, 1)"),
        (["--one-shot", "random", "--sparsity", "1.0"], "--sparsity 1.0: must be in [0, 1)"),
        (["--one-shot", "random", "--sparsity", "-0.1"], "--sparsity -0.1: must be in [0, 1)"),
        (
            ["--one-shot", "movement", "--sparsity", "0.9"],
            "--one-shot movement: unknown criterion; use one of",
        ),
        (["--sparsity", "0.9"], "--sparsity needs --one-shot CRITERION"),
        (["--threads", "0"], "--threads 0: must be at least 1"),
        (["--min-rounds", "0"], "--min-rounds 0: must be at least 1"),
        (["--target-spread", "0"], "--target-spread 0.0: must be positive"),
        (["--data-dir", "x"], "--data-dir needs --task T"),
        (["--task", "nope"], "--task nope: unknown task"),
        (["--precision", "int4"], "--precision 'int4': expected one of auto, fp32, bf16, fp16"),
        *(
            []
            if torch.cuda.is_available()
            else [(["--device", "cuda"], "--device cuda: no CUDA GPU here; use --device cpu")]
        ),
    ],
)
def test_bad_bench_input_exits_2_with_one_line(argv, message, capsys, tiny_model_dir):
    from capbench.cli import main

    capsys.readouterr()  # the fixture's own output
    assert main(["bench", "--model", str(tiny_model_dir), "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_one_shot_pruning_uses_capbench_criteria_seeded():
    from capbench.speed.oneshot import prune_one_shot

    a, b, m = tiny_bert(), tiny_bert(), tiny_bert()
    done = prune_one_shot(a, "random", 0.9, seed=3)
    prune_one_shot(b, "random", 0.9, seed=3)
    assert done["criterion"] == "random" and done["achieved"] == pytest.approx(0.9, abs=0.01)
    for (_, la), (_, lb) in zip(iter_encoder_linears(a), iter_encoder_linears(b), strict=True):
        assert torch.equal(la.weight, lb.weight)  # the same seed, the same masks
        assert (la.weight == 0).float().mean() == pytest.approx(0.9, abs=0.01)  # every matrix on its own
    original = {name: mod.weight.detach().clone() for name, mod in iter_encoder_linears(m)}
    prune_one_shot(m, "magnitude", 0.5)
    for name, module in iter_encoder_linears(m):
        kept = original[name].abs()[module.weight != 0]
        dropped = original[name].abs()[module.weight == 0]
        assert kept.min() >= dropped.max()  # the largest weights survive


def test_bench_one_shot_on_evaluation_sentences(tmp_path, capsys, tiny_model_dir, tiny_glue):
    args = _parse(
        [
            *("bench", "--model", str(tiny_model_dir), "--one-shot", "random", "--sparsity", "0.9"),
            *("--data-dir", str(tiny_glue), "--task", "sst2", "--sentences", "4"),
            *("--model-token-counts", "1x16", "2x16", "--no-breakdown", "--json", str(tmp_path / "s.json")),
            *("--token-counts", "1x8", *ROUNDS),
        ]
    )
    assert args.handler(args) == 0
    speed = json.loads((tmp_path / "s.json").read_text())
    assert speed["one_shot"]["criterion"] == "random" and speed["summary"]["sparsity"] == pytest.approx(
        0.9, abs=0.01
    )
    assert speed["inputs"]["kind"] == "sentences" and speed["inputs"]["sequences"] == 4
    assert speed["settings"]["threads"] == 1
    out = capsys.readouterr().out
    assert "timed on 4 sentences of sst2 validation" in out and "| 2x16 |" in out


def test_bench_without_sentences_says_random_ids(tmp_path, capsys, tiny_model_dir):
    texts = tmp_path / "texts.txt"
    texts.write_text("the cat sat on the mat\n\na good movie\n")
    argv = [
        "bench",
        "--model",
        str(tiny_model_dir),
        "--one-shot",
        "magnitude",
        "--sparsity",
        "0.5",
        "--no-breakdown",
    ]
    args = _parse([*argv, *FAST])
    assert args.handler(args) == 0
    assert "timed on random token ids (no padding)" in capsys.readouterr().out
    args = _parse([*argv, "--texts", str(texts), *FAST])
    assert args.handler(args) == 0
    assert "timed on 2 sentences of texts.txt, first 2 lines" in capsys.readouterr().out


def test_bench_runs_times_each_record_on_its_own_tasks_sentences(tmp_path, saved_models, tiny_glue):
    dense_dir, pruned_dir = saved_models
    records = tmp_path / "run" / "records"
    records.mkdir(parents=True)
    record = {
        "spec": {"method": "random", "sparsity": 0.9, "task": "sst2"},
        "status": "done",
        "model_dir": str(pruned_dir),
        "dense_model_dir": str(dense_dir),
        "data": {"source": {"kind": "local", "root": str(tiny_glue)}},
    }
    (records / "a.json").write_text(json.dumps(record))
    args = _parse(["bench", "--runs", str(tmp_path / "run"), "--no-breakdown", "--sentences", "3", *FAST])
    assert args.handler(args) == 0
    speed = json.loads((records / "a.json").read_text())["speed"]
    assert speed["inputs"]["kind"] == "sentences" and speed["inputs"]["source"].startswith(
        "sst2 validation, 3 of"
    )


def test_gpu_shapes_add_batch_128_unless_the_user_chose_shapes():
    from capbench.speed.options import (
        DEFAULT_MODEL_TOKEN_COUNTS,
        GPU_MODEL_TOKEN_COUNTS,
        model_token_counts_for,
    )

    assert model_token_counts_for(torch.device("cpu")) == DEFAULT_MODEL_TOKEN_COUNTS
    assert (
        model_token_counts_for(torch.device("cuda", 0))
        == GPU_MODEL_TOKEN_COUNTS
        == ("1x128", "32x128", "128x128")
    )
    assert (
        model_token_counts_for(torch.device("cuda", 0), DEFAULT_MODEL_TOKEN_COUNTS) == GPU_MODEL_TOKEN_COUNTS
    )
    assert model_token_counts_for(torch.device("cuda", 0), ["8x64"]) == ("8x64",)


def test_place_puts_weights_in_the_timed_dtype():
    from capbench.speed.bench import place
    from capbench.testing import tiny_bert

    model = place(tiny_bert(2), torch.device("cpu"), "bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and not model.training
    assert {p.dtype for p in place(model, torch.device("cpu"), "fp32").parameters()} == {torch.float32}
    assert place(None, torch.device("cpu")) is None
