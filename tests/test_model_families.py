"""Every supported model family (capbench.layout) through the whole pipeline, on tiny random checkpoints.

BERT is the control; RoBERTa (one token type, positions after the padding id), ELECTRA (a projected
embedding) and DistilBERT (its own module names, no token_type_ids) run every method from the command line,
and their CAP representation, compaction, probing features and speed walks go through the one layout.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, T5Config

from capbench import layout
from capbench.cap.representation import represent, resolve_kind
from capbench.cli import main
from capbench.errors import CapbenchError
from capbench.models import load_classifier, load_config
from capbench.probing.features import compute_features
from capbench.pruning.compact import compact_zeroed
from capbench.pruning.structured import FirstOrderPruner
from capbench.records import load_records
from capbench.speed.model import encoder_flops_per_token, time_breakdown
from capbench.testing import random_batch, save_tiny_model_dir, tiny_classifier, tiny_tokenizer

FAMILIES = ("bert", "roberta", "electra", "distilbert")
METHODS = (
    "magnitude",
    "movement",
    "soft_movement",
    "first_order",
    "random",
    "cap_magnitude",
    "cap_movement",
    "cap_soft",
    "cap_first_order",
    "wanda",
    "sparsegpt",
    "obert",
)


def _logits(model, batch) -> torch.Tensor:
    inputs = {k: batch[k] for k in layout.input_names(model) if k in batch}
    with torch.no_grad():
        return model.eval()(**inputs).logits


@pytest.mark.parametrize("model_type", FAMILIES)
def test_every_method_runs_on_target_and_first_order_reloads_exactly(
    model_type, tiny_glue, tmp_path, monkeypatch
):
    model_dir = save_tiny_model_dir(tmp_path / model_type, model_type=model_type)
    probe = random_batch(tiny_classifier(model_type), batch_size=3, seq_len=10, seed=1)
    masked = []  # logits of each structured model just before compaction
    finalize = FirstOrderPruner.finalize

    def spy(self, model):
        if not self.finalized:
            masked.append(_logits(model, probe))
        return finalize(self, model)

    monkeypatch.setattr(FirstOrderPruner, "finalize", spy)
    args = ["run", "--tasks", "rte", "--preset", "smoke", "--model", str(model_dir)]
    args += ["--data-dir", str(tiny_glue), "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "c")]
    args += ["--max-train-examples", "32", "--max-eval-examples", "16", "--batch-size", "8", "--quiet"]
    assert main([*args, "--sparsity", "0.5", "--methods", ",".join(METHODS)]) == 0

    records = {r["spec"]["method"]: r for r in load_records(tmp_path / "run")}
    assert set(records) == {"dense", *METHODS}
    for method in METHODS:
        record = records[method]
        assert record["status"] == "done", (method, record.get("error"))
        sparsity = record["sparsity"]
        assert 0.5 - sparsity["granularity"] <= sparsity["linear"] <= 0.5 + sparsity["granularity"], method

    assert len(masked) == 2  # first_order and cap_first_order
    for method in ("first_order", "cap_first_order"):
        reloaded = load_classifier(records[method]["model_dir"], 2)
        assert getattr(reloaded.config, "capbench_structure", None), method
        assert type(reloaded).__name__.lower().startswith(model_type)
        logits = _logits(reloaded, probe)
        assert any(torch.allclose(logits, before, atol=1e-5) for before in masked), method


@pytest.mark.parametrize("model_type", FAMILIES)
def test_cap_representation_is_the_input_of_the_final_projection(model_type):
    model = tiny_classifier(model_type, seed=2)
    batch = random_batch(model)
    lay = layout.Layout(model)
    seen = {}
    handle = lay.projection().register_forward_pre_hook(lambda module, args: seen.update(x=args[0]))
    try:
        with torch.no_grad():
            outputs = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                output_hidden_states=True,
            )
    finally:
        handle.remove()
    assert resolve_kind(model, "pooler") == "pooler"
    rep = represent(model, outputs, batch["attention_mask"], "pooler")
    torch.testing.assert_close(rep, F.normalize(seen["x"].float(), dim=-1), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_prunable_weights_are_the_same_six_linears_in_every_family(model_type):
    model = tiny_classifier(model_type)
    named = layout.prunable_linears(model)
    assert len(named) == 12 and sum(m.weight.numel() for _, m in named) == 2 * (4 * 32 * 32 + 2 * 32 * 64)
    pruned = {id(m) for _, m in named}
    never = [layout.Layout(model).embeddings, *(getattr(model, name) for name in layout.family(model).head)]
    assert not any(id(m) in pruned for module in never for m in module.modules())


@pytest.mark.parametrize("model_type", FAMILIES)
def test_zeroed_heads_and_neurons_compact_to_the_same_logits(model_type):
    model = tiny_classifier(model_type, seed=3)
    lay = layout.Layout(model)
    first, second = lay.layers
    with torch.no_grad():
        lay.get(first, "value").weight[8:16] = 0  # head 1: dead value rows, bias folded into the output
        lay.get(second, "attn_out").weight[:, :8] = 0  # head 0: dead output columns
        lay.get(first, "ffn_in").weight[:20] = 0  # constant activations, folded into the output bias
    batch = random_batch(model, seed=4)
    compacted, report = compact_zeroed(model)
    assert report["layers"] == [{"heads": [4, 3], "ffn": [64, 44]}, {"heads": [4, 3], "ffn": [64, 64]}]
    torch.testing.assert_close(_logits(compacted, batch), _logits(model, batch), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_probing_features_and_speed_walk_every_family(model_type, tmp_path):
    model = tiny_classifier(model_type)
    tokenizer = tiny_tokenizer(tmp_path / "tok")  # a BERT tokenizer: pairs carry token_type_ids 1
    feats = compute_features(model, tokenizer, [("the cat", "sat on the mat"), ("a dog", "runs")], ("cls",))
    assert feats["cls"].shape == (3, 2, 32) and np.isfinite(feats["cls"]).all()
    flops = encoder_flops_per_token(model, 16)
    assert flops["linear_dense"] == 2 * 2 * (4 * 32 * 32 + 2 * 32 * 64)
    assert flops["attention_core"] == 2 * 2 * 2 * 16 * 32
    breakdown = time_breakdown(model, "1x8", repeats=1, warmup=0)
    assert breakdown["seconds"]["embeddings"] > 0 and breakdown["seconds"]["encoder_linears"] > 0


def test_an_unsupported_model_type_is_refused_in_one_line(capsys, tmp_path, tiny_glue):
    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path / "gpt")
    argv = ["run", "--tasks", "rte", "--model", str(tmp_path / "gpt"), "--data-dir", str(tiny_glue)]
    assert main([*argv, "--quiet", "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "'gpt2' is not a supported encoder" in err and "bert, roberta, electra, distilbert" in err
    with pytest.raises(CapbenchError, match="bert, roberta, electra, distilbert") as caught:
        load_config(str(tmp_path / "gpt"))
    assert "\n" not in str(caught.value)
    with pytest.raises(CapbenchError, match="'t5' is not a supported encoder"):
        layout.family(T5Config(num_layers=1, d_model=8, num_heads=2))
