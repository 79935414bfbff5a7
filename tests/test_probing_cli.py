"""`capbench probe` end to end on the tiny model, through the handler `register` installs."""

import argparse
import json
import random

import pytest

from capbench.errors import CapbenchError
from capbench.probing.cli import register
from capbench.testing import TINY_WORDS, save_tiny_model_dir


def parse(argv):
    parser = argparse.ArgumentParser(prog="capbench")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.fixture
def corpus_file(tmp_path):
    rng = random.Random(0)
    lines = [" ".join(rng.choice(TINY_WORDS) for _ in range(rng.randint(5, 28))) for _ in range(700)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_probe_command_runs_on_the_tiny_model(tmp_path, corpus_file, tiny_glue, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ../shared/glue to fall back on
    model = save_tiny_model_dir(tmp_path / "model", seed=0)
    reference = save_tiny_model_dir(tmp_path / "reference", seed=1)
    out, plot = tmp_path / "probe.json", tmp_path / "probe.png"
    args = parse(
        [
            "probe",
            "--model",
            str(model),
            "--reference",
            str(reference),
            "--probe-corpus",
            str(corpus_file),
            "--probes",
            "sentlen,word_content,bigram_shift",
            "--transfer",
            "sst2",
            "--words",
            "3",
            "--sizes",
            "60,30,30",
            "--transfer-sizes",
            "20,10,16",
            "--seeds",
            "0,1",
            "--pooling",
            "mean",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(out),
            "--plot",
            str(plot),
            "--floors",
            "--quiet",
        ]
    )
    with pytest.raises(CapbenchError, match="transfer probes need a GLUE data dir"):
        args.handler(args)
    args.data_dir, args.probe_corpus = str(tiny_glue), str(corpus_file)
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    assert "sentlen [mean]" in printed and "<- best (dev)" in printed and "retention vs" in printed
    result = json.loads(out.read_text())
    assert set(result["tasks"]) == {"sentlen", "word_content", "bigram_shift", "sst2"}
    assert result["tasks"]["sst2"]["kind"] == "transfer"
    assert set(result["retention"]["summary"]) == set(result["tasks"])
    assert set(result["floors"]) == {"random weights", "zeroed encoder"}
    assert "validity (pre-trained reference and floor models)" in printed
    assert "| zeroed encoder |" in printed and "| random weights |" in printed
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_probe_command_errors_are_one_line(tmp_path, corpus_file):
    args = parse(["probe", "--model", "x", "--probes", "sentlen,depth", "--probe-corpus", str(corpus_file)])
    with pytest.raises(CapbenchError, match="unknown probe 'depth'; known probes: sentlen"):
        args.handler(args)
    args = parse(["probe", "--model", "x", "--probe-corpus", str(tmp_path / "missing.txt")])
    with pytest.raises(CapbenchError, match="no such file"):
        args.handler(args)
    args = parse(
        ["probe", "--model", "x", "--reference", "none", "--floors", "--probe-corpus", str(corpus_file)]
    )
    with pytest.raises(CapbenchError, match="--floors needs a reference model"):
        args.handler(args)


def test_reference_auto_comes_from_the_run_record_or_is_none(tmp_path):
    import torch

    from capbench.probing.cli import choose_reference, looks_pruned
    from capbench.testing import tiny_bert

    model_dir = save_tiny_model_dir(tmp_path / "run" / "models" / "rte-magnitude-0.9-s0")
    (tmp_path / "run" / "records").mkdir()
    record = {"spec": {"model": "some/pretrained"}, "status": "done"}
    (tmp_path / "run" / "records" / "rte-magnitude-0.9-s0.json").write_text(json.dumps(record))
    model = tiny_bert()
    assert choose_reference(parse(["probe", "--model", str(model_dir)]), model) == "some/pretrained"
    assert choose_reference(parse(["probe", "--model", str(model_dir), "--reference", "none"]), model) is None
    assert choose_reference(parse(["probe", "--model", str(model_dir), "--reference", "x/y"]), model) == "x/y"
    assert choose_reference(parse(["probe", "--model", str(tmp_path / "elsewhere")]), model) is None
    assert not looks_pruned(model)
    with torch.no_grad():
        for module in model.bert.encoder.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight[module.weight.abs() < module.weight.abs().median()] = 0
    assert looks_pruned(model)


def test_a_run_model_is_probed_without_its_own_task(tmp_path, tiny_glue):
    from capbench.probing.corpus import source_sentences

    model_dir = save_tiny_model_dir(tmp_path / "run" / "models" / "rte-magnitude-0.9-s0", seed=0)
    (tmp_path / "run" / "records").mkdir()
    record = {"spec": {"model": str(model_dir), "task": "rte"}, "status": "done"}
    (tmp_path / "run" / "records" / "rte-magnitude-0.9-s0.json").write_text(json.dumps(record))
    out = tmp_path / "probe.json"
    argv = ["probe", "--model", str(model_dir), "--reference", "none", "--data-dir", str(tiny_glue)]
    argv += ["--probes", "bigram_shift", "--transfer", "rte,sst2", "--sizes", "30,15,15"]
    argv += [
        "--transfer-sizes",
        "20,10,16",
        "--seeds",
        "0",
        "--pooling",
        "mean",
        "--quiet",
        "--out",
        str(out),
    ]
    argv += ["--cache-dir", str(tmp_path / "cache")]
    args = parse(argv)
    assert args.handler(args) == 0
    result = json.loads(out.read_text())
    assert set(result["tasks"]) == {"bigram_shift", "sst2"}  # no transfer probe on the fine-tuned task
    assert result["protocol"]["corpus"]["n_sentences"] == len(source_sentences(tiny_glue, ["sst2"]))
