import json
from dataclasses import replace

import pytest
import torch

from capbench.pruning.compact import compact_zeroed
from capbench.speed.bench import bench_model
from capbench.speed.kernels import iter_encoder_linears
from capbench.speed.model import FormatLinear, format_counts, realise, time_breakdown, time_models
from capbench.speed.options import BenchOptions
from capbench.speed.report import render_layer_table, render_model_table
from capbench.speed.timing import Rounds
from capbench.testing import random_batch, tiny_bert
from tests.speed_fakes import prune

FAST = BenchOptions(
    repeats=1,
    warmup=0,
    layer_budget=None,
    token_counts=["1x8"],
    model_token_counts=["2x8"],
    threads=1,
    model_min_seconds=0,
)


def _prune_structured(model):
    """Zero whole heads (by value rows or by output columns) and FFN neurons (rows or output columns)."""
    with torch.no_grad():
        layer0, layer1 = model.bert.encoder.layer
        d = layer0.attention.self.attention_head_size
        layer0.attention.self.value.weight[1 * d : 2 * d] = 0  # value-dead head, bias kept: folded
        layer1.attention.output.dense.weight[:, 2 * d : 3 * d] = 0  # output-dead head
        layer0.intermediate.dense.weight[:20] = 0  # dead input rows with non-zero bias: folded
        layer1.output.dense.weight[:, 10:40] = 0  # dead output columns
    return model


def _logits(model, batch):
    with torch.inference_mode():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_compacted_model_gives_same_logits_as_masked():
    model = _prune_structured(tiny_bert())
    batch = random_batch(model)
    compacted, report = compact_zeroed(model)
    assert report["changed"]
    assert report["layers"][0] == {"heads": [4, 3], "ffn": [64, 44]}
    assert report["layers"][1] == {"heads": [4, 3], "ffn": [64, 34]}
    assert compacted.bert.encoder.layer[0].intermediate.dense.out_features == 44
    torch.testing.assert_close(_logits(compacted, batch), _logits(model, batch), atol=1e-5, rtol=1e-4)
    # the original is untouched
    assert model.bert.encoder.layer[0].intermediate.dense.out_features == 64


def test_compaction_rounds_width_and_survives_all_heads_dead():
    model = tiny_bert()
    with torch.no_grad():
        model.bert.encoder.layer[1].attention.self.value.weight.zero_()
        model.bert.encoder.layer[0].intermediate.dense.weight[:21] = 0
    batch = random_batch(model)
    compacted, report = compact_zeroed(model, multiple=16)
    assert report["layers"][0]["ffn"] == [64, 48]  # 43 kept, rounded up to 48
    assert report["layers"][1]["heads"] == [4, 1]
    torch.testing.assert_close(_logits(compacted, batch), _logits(model, batch), atol=1e-5, rtol=1e-4)
    unchanged, report = compact_zeroed(tiny_bert())
    assert not report["changed"]


@pytest.mark.parametrize("fmt", ["csr", "bsr4", "compact"])
def test_realised_model_gives_same_logits(fmt):
    model = prune(tiny_bert(), 0.9)
    if fmt == "compact":
        model = _prune_structured(model)
    batch = random_batch(model)
    choices = {name: fmt for name, _ in iter_encoder_linears(model)}
    if fmt == "compact":  # only layers with whole zero rows/columns can be compacted
        choices = {
            "bert.encoder.layer.0.intermediate.dense": "compact",
            "bert.encoder.layer.1.output.dense": "compact",
        }
    realised = realise(model, choices)
    swapped = [m for _, m in iter_encoder_linears(realised) if isinstance(m, FormatLinear)]
    assert len(swapped) == len(choices)
    assert format_counts(realised)[fmt] == len(choices)
    torch.testing.assert_close(_logits(realised, batch), _logits(model, batch), atol=1e-5, rtol=1e-4)


def test_time_models_and_breakdown():
    model = tiny_bert()
    out = time_models({"dense": model, "same": model}, ["2x8"], Rounds(repeats=2, warmup=0))
    row = out["2x8"]
    assert (row["batch"], row["seq"], row["rounds"]) == (2, 8, 2)
    assert row["models"]["dense"]["speedup"] == 1.0
    assert row["models"]["same"]["tokens_per_s"] > 0
    b = time_breakdown(model, "2x8", repeats=2, warmup=0)
    assert set(b["fractions"]) == {"embeddings", "encoder_linears", "attention_core", "other"}
    assert sum(b["fractions"].values()) == pytest.approx(1.0)
    assert b["seconds"]["encoder_linears"] > 0 and b["seconds"]["attention_core"] > 0
    with pytest.raises(ValueError, match="max_position_embeddings"):
        time_models({"m": model}, ["1x128"], Rounds(repeats=1, warmup=0))


def test_bench_model_unstructured_record_is_json():
    dense = tiny_bert()
    pruned = prune(tiny_bert(), 0.9)
    speed = bench_model(pruned, dense, replace(FAST, min_sparsity=0.0))
    text = json.dumps(speed, allow_nan=False)
    assert json.loads(text) == speed
    assert len(speed["layers"]) == 12
    layer = speed["layers"][0]
    assert layer["theoretical_speedup"] == pytest.approx(1 / (1 - layer["sparsity"]))
    assert layer["formats"]["semi_structured_2to4"]["available"] is torch.cuda.is_available()
    s = speed["summary"]
    assert s["token_count"] == "2x8" and not s["compacted"]
    assert s["sparsity"] == pytest.approx(0.9, abs=0.02)
    assert s["theoretical_speedup"] == pytest.approx(1 / (1 - s["sparsity"]))
    assert s["measured_speedup"] > 0 and isinstance(s["sparse_not_faster"], bool)
    assert set(speed["breakdown"]) == {"token_count", "pruned", "dense"}
    assert "Calibration at 1x8 tokens" in render_layer_table(speed)
    assert "Whole model vs dense" in render_model_table(speed)


def test_bench_model_structured_runs_compacted():
    dense = tiny_bert()
    speed = bench_model(_prune_structured(tiny_bert()), dense, replace(FAST, breakdown=False))
    s = speed["summary"]
    assert s["compacted"] and speed["compaction"]["changed"]
    assert s["format"].startswith("compacted")
    assert s["theoretical_speedup"] > 1
