"""Per-layer pooled features: shapes, head-independence, masked mean, disk cache reuse and invalidation."""

import numpy as np
import pytest
import torch

import capbench.probing.features as features_module
from capbench.errors import CapbenchError
from capbench.probing.features import extract_features, weights_hash
from capbench.testing import tiny_bert, tiny_tokenizer

TEXTS = ["the cat sat on the mat", "a dog runs", "this movie is good and the book is great", "no"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def test_every_layer_both_poolings_and_head_is_ignored(tokenizer):
    classifier = tiny_bert()
    feats = extract_features(classifier, tokenizer, TEXTS, batch_size=3)
    layers = classifier.config.num_hidden_layers + 1
    assert set(feats) == {"mean", "cls"}
    assert feats["mean"].shape == feats["cls"].shape == (layers, len(TEXTS), classifier.config.hidden_size)
    assert feats["mean"].dtype == np.float32
    base = extract_features(classifier.bert, tokenizer, TEXTS)
    for pooling in ("mean", "cls"):
        assert np.array_equal(feats[pooling], base[pooling])
    alone = extract_features(classifier, tokenizer, TEXTS[1:2], ("mean",))["mean"]
    assert np.allclose(alone[:, 0], feats["mean"][:, 1], atol=2e-3)  # padding never enters the mean
    pairs = extract_features(classifier, tokenizer, [("a dog", "runs"), ("the cat", "sat")], ("cls",))
    assert pairs["cls"].shape[1] == 2
    with pytest.raises(CapbenchError, match="unknown pooling"):
        extract_features(classifier, tokenizer, TEXTS, ("max",))


def test_cache_is_reused_and_invalidated_when_weights_change(tokenizer, tmp_path, monkeypatch):
    model = tiny_bert().bert
    calls = []
    real = features_module.compute_features
    monkeypatch.setattr(
        features_module, "compute_features", lambda *a, **k: calls.append(a[3]) or real(*a, **k)
    )
    info: dict = {}
    first = extract_features(model, tokenizer, TEXTS, cache_dir=tmp_path, info=info)
    assert calls == [["mean", "cls"]] and info["cached"] == {"mean": False, "cls": False}
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".npy", ".npy"]  # no temp files left behind
    again = extract_features(model, tokenizer, TEXTS, cache_dir=tmp_path, info=info)
    assert len(calls) == 1 and info["cached"] == {"mean": True, "cls": True}
    assert all(np.array_equal(first[p], again[p]) for p in first)
    extract_features(model, tokenizer, TEXTS, ("cls",), cache_dir=tmp_path, max_length=4)
    assert len(calls) == 2  # max length is part of the key
    extract_features(model, tokenizer, TEXTS[:3], ("cls",), cache_dir=tmp_path)
    assert len(calls) == 3  # and so are the texts
    before = weights_hash(model)
    with torch.no_grad():
        model.encoder.layer[0].output.dense.weight[0, 0] += 1.0
    assert weights_hash(model) != before
    changed = extract_features(model, tokenizer, TEXTS, ("mean",), cache_dir=tmp_path, info=info)
    assert len(calls) == 4 and info["cached"] == {"mean": False}
    assert not np.array_equal(changed["mean"][-1], first["mean"][-1])
    assert np.array_equal(changed["mean"][0], first["mean"][0])  # embeddings are untouched


def test_cached_and_fresh_features_are_identical(tokenizer, tmp_path):
    model = tiny_bert().bert
    fresh = extract_features(model, tokenizer, TEXTS)
    extract_features(model, tokenizer, TEXTS, cache_dir=tmp_path)
    cached = extract_features(model, tokenizer, TEXTS, cache_dir=tmp_path)
    assert all(np.array_equal(fresh[p], cached[p]) for p in fresh)
