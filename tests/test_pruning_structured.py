"""Structured first-order pruning: compaction gives the same logits and reloads from disk."""

import pytest
import torch
from transformers import AutoModel, BertForSequenceClassification, BertModel

from capbench.pruning import dense_counts, make_pruner, sparsity_report
from capbench.pruning.compact import STRUCTURE_KEY, load_compacted
from capbench.pruning.structured import _largest_remainder
from capbench.testing import random_batch, tiny_bert


def _train(model, pruner, steps):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(steps):
        model(**random_batch(model, seed=step)).loss.backward()
        opt.step()
        opt.zero_grad()
        pruner.after_step(step)


def test_compacted_model_matches_masked_and_reloads(tmp_path):
    model = tiny_bert(num_attention_heads=8)
    dense = dense_counts(model)
    pruner = make_pruner("first_order", 0.6, {"warmup": 1, "cooldown": 2, "prune_steps": 3})
    pruner.attach(model, 10)
    _train(model, pruner, 10)
    assert pruner.importance.head_gates[0].grad is None  # accumulated and cleared every step
    model.eval()
    batch = random_batch(model, seed=123)
    batch.pop("labels")
    with torch.no_grad():
        masked = model(**batch).logits
    masked_report = sparsity_report(model, dense, 0.6)
    n_before = sum(p.numel() for p in model.parameters())

    model = pruner.finalize(model)
    with torch.no_grad():
        compacted = model(**batch).logits
    torch.testing.assert_close(compacted, masked, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in model.parameters()) < n_before
    structure = getattr(model.config, STRUCTURE_KEY)
    heads = structure["num_attention_heads"]
    assert min(heads) >= 1 and sum(heads) < 16
    assert heads == [layer.attention.self.num_attention_heads for layer in model.bert.encoder.layer]
    report = sparsity_report(model, dense, 0.6)
    assert abs(report["linear"] - 0.6) <= 0.01
    assert report["linear"] == pytest.approx(masked_report["linear"])
    assert report["heads_per_layer"] == heads == masked_report["heads_per_layer"]
    assert report["ffn_per_layer"] == masked_report["ffn_per_layer"]
    assert report["flops_ratio"] == pytest.approx(masked_report["flops_ratio"])

    model.save_pretrained(tmp_path)
    reloaded = load_compacted(tmp_path)
    assert type(reloaded) is BertForSequenceClassification
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, compacted, atol=1e-6, rtol=1e-6)
    assert sparsity_report(reloaded, None, 0.6)["linear"] == pytest.approx(report["linear"])
    encoder_only = load_compacted(tmp_path, model_class=AutoModel)  # e.g. for probing
    assert type(encoder_only) is BertModel
    with torch.no_grad():
        hidden = encoder_only(**batch).last_hidden_state
        torch.testing.assert_close(hidden, reloaded.bert(**batch).last_hidden_state)
    with pytest.raises(Exception):  # noqa: B017 - plain from_pretrained cannot express per-layer heads
        BertForSequenceClassification.from_pretrained(tmp_path)


def test_unstructured_finalize_saves_and_loads_with_from_pretrained(tmp_path):
    model = tiny_bert()
    pruner = make_pruner("magnitude", 0.5, {"oneshot": True})
    pruner.attach(model, 3)
    _train(model, pruner, 3)
    model = pruner.finalize(model).eval()
    model.save_pretrained(tmp_path)
    batch = random_batch(model)
    reloaded = BertForSequenceClassification.from_pretrained(tmp_path).eval()
    also = load_compacted(tmp_path).eval()
    with torch.no_grad():
        ref = model(**batch).logits
        torch.testing.assert_close(reloaded(**batch).logits, ref)
        torch.testing.assert_close(also(**batch).logits, ref)
    assert sparsity_report(reloaded, None, 0.5)["linear"] == pytest.approx(0.5, abs=1e-3)


def test_first_order_keeps_a_head_per_layer_and_ffn_multiples():
    model = tiny_bert(num_attention_heads=8, intermediate_size=256)
    pruner = make_pruner(
        "first_order", 0.9, {"warmup": 0, "cooldown": 0, "prune_steps": 2, "ffn_multiple": 16}
    )
    pruner.attach(model, 4)
    calls = []
    pruner.on_prune_step = calls.append
    _train(model, pruner, 4)
    assert calls == [1, 3]  # events after steps 2 and 4 of 4 (0-based step indices 1 and 3)
    model = pruner.finalize(model)
    structure = model.config.capbench_structure
    assert all(h >= 1 for h in structure["num_attention_heads"])
    assert all(w % 16 == 0 and w >= 16 for w in structure["intermediate_size"])
    assert abs(pruner.current_sparsity() - 0.9) <= 0.01
    assert len(pruner.config()["pruning_events"]) == 2


def test_first_order_prunes_least_important_units():
    model = tiny_bert(num_attention_heads=8)
    pruner = make_pruner("first_order", 0.5, {"warmup": 0, "cooldown": 0, "prune_steps": 1})
    pruner.attach(model, 1)
    imp = pruner.importance
    for i, scores in enumerate(imp.head_scores):
        scores.copy_(torch.arange(8, dtype=torch.float) + 10 * i)
    for scores in imp.ffn_scores:
        scores.copy_(torch.arange(64, dtype=torch.float))
    pruner.prune_to(0.5)
    # Per-layer L2 normalisation makes both layers comparable: the 4 lowest heads of each layer go.
    assert [a.tolist() for a in pruner.head_alive] == [[False] * 4 + [True] * 4] * 2
    assert all(not bool(a[:32].any()) and bool(a[32:].all()) for a in pruner.ffn_alive)


def test_largest_remainder_rounding():
    assert _largest_remainder([40.0, 26.0], 64, [64, 64], [16, 16], 16) == [32, 32]
    assert _largest_remainder([50.0, 14.0], 64, [64, 64], [16, 16], 16) == [48, 16]
    assert sum(_largest_remainder([33.0, 33.0, 30.0], 96, [64, 64, 64], [16, 16, 16], 16)) == 96
