"""Frozen sentence features from every layer of an encoder, pooled, cached on disk.

`extract_features` returns, per pooling, a float32 array of shape (n_layers + 1, n_texts, hidden): index 0 is
the embedding output, index i the output of encoder layer i. Poolings: ``cls`` (the first token) and ``mean``
(mean over the tokens the attention mask keeps, [CLS] and [SEP] included). Models with a task head
(``*ForSequenceClassification``) are reduced to their base model, so the head never matters.

Features are rounded to float16 (stored that way on disk, returned as float32) whether they come from the
cache or not, so a cached run gives the same probe results as a fresh one. A cache file is keyed by the base
model's weights digest (`capbench.models.weights_digest`, as the core names weights) and architecture config,
the tokenizer's vocabulary, the texts, the pooling and the max length, and is written atomically (temp file +
os.replace).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from capbench import layout
from capbench.errors import CapbenchError

POOLINGS = ("mean", "cls")
DEFAULT_MAX_LENGTH = 128
DEFAULT_BATCH_SIZE = 32
CACHE_FORMAT = 2  # 2: weights named by capbench.models.weights_digest
CONFIG_KEYS = ("model_type", "hidden_act", "layer_norm_eps", "position_embedding_type", "num_attention_heads")


def encoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The base encoder of a model with a task head (e.g. BertForSequenceClassification.bert), else the model."""
    return layout.base_model(model)


def weights_hash(model: torch.nn.Module) -> str:
    """The base encoder's weights digest, as the core names a model's weights (capbench.models.weights_digest)."""
    from capbench.models import weights_digest

    return weights_digest(encoder_of(model))


def architecture_hash(model: torch.nn.Module) -> str:
    """The config facts that change features but not weights (activation, layer-norm eps, ...)."""
    config = getattr(encoder_of(model), "config", None)
    facts = {k: getattr(config, k, None) for k in CONFIG_KEYS} if config is not None else {}
    return hashlib.sha256(json.dumps(facts, default=str, sort_keys=True).encode()).hexdigest()[:20]


def texts_hash(texts: Sequence) -> str:
    digest = hashlib.sha256()
    for text in texts:
        parts = text if isinstance(text, (tuple, list)) else (text,)
        digest.update("\x1f".join(parts).encode("utf-8"))
        digest.update(b"\x1e")
    return digest.hexdigest()


def features_key(weights: str, tokenizer: str, texts: str, pooling: str, max_length: int) -> str:
    facts = f"{CACHE_FORMAT}|{weights}|{tokenizer}|{texts}|{pooling}|{max_length}"
    return hashlib.sha256(facts.encode()).hexdigest()[:40]


def _round(array: np.ndarray) -> np.ndarray:
    half = array.astype(np.float16)
    return half if np.isfinite(half).all() else array.astype(np.float32)


def _load(path: Path) -> np.ndarray | None:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None


def _save_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name + ".", suffix=".tmp", delete=False)
    try:
        with handle:
            np.save(handle, array, allow_pickle=False)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def _encode(tokenizer, texts: Sequence, max_length: int, **kwargs):
    if texts and isinstance(texts[0], (tuple, list)):
        return tokenizer(
            [t[0] for t in texts], [t[1] for t in texts], truncation=True, max_length=max_length, **kwargs
        )
    return tokenizer(list(texts), truncation=True, max_length=max_length, **kwargs)


def compute_features(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence,
    poolings: Sequence[str] = POOLINGS,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, np.ndarray]:
    """Forward passes only (no cache): {pooling: float32 (n_layers + 1, n, hidden)}, batches sorted by length."""
    encoder = encoder_of(model)
    accepted = layout.input_names(encoder)  # e.g. no token_type_ids for RoBERTa or DistilBERT
    device = next(encoder.parameters()).device
    lengths = np.array([len(ids) for ids in _encode(tokenizer, texts, max_length)["input_ids"]])
    order = np.argsort(-lengths, kind="stable")
    out: dict[str, np.ndarray] = {}
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                inputs = _encode(
                    tokenizer, [texts[i] for i in rows], max_length, padding=True, return_tensors="pt"
                )
                inputs = {k: v.to(device) for k, v in inputs.items() if k in accepted}
                hidden = encoder(**inputs, output_hidden_states=True, return_dict=True).hidden_states
                if hidden is None:
                    raise CapbenchError(
                        f"{type(encoder).__name__} returns no hidden states; probing needs them"
                    )
                mask = inputs["attention_mask"].unsqueeze(-1).to(hidden[0].dtype)
                for pooling in poolings:
                    if pooling not in out:
                        out[pooling] = np.zeros(
                            (len(hidden), len(texts), hidden[0].shape[-1]), dtype=np.float32
                        )
                    for layer, states in enumerate(hidden):
                        if pooling == "cls":
                            pooled = states[:, 0]
                        else:
                            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
                        out[pooling][layer, rows] = pooled.float().cpu().numpy()
    finally:
        encoder.train(was_training)
    return out


def extract_features(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence,
    poolings: Sequence[str] = POOLINGS,
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = DEFAULT_BATCH_SIZE,
    cache_dir: str | Path | None = None,
    weights: str | None = None,
    info: dict | None = None,
) -> dict[str, np.ndarray]:
    """{pooling: float32 (n_layers + 1, n_texts, hidden)}, from `cache_dir` when present there.

    `weights` is `weights_hash(model)` when the caller already has it (hashing the weights costs a pass over
    them). `info`, when given, receives {"cached": {pooling: bool}, "keys": {pooling: key}}.
    """
    unknown = [p for p in poolings if p not in POOLINGS]
    if unknown:
        raise CapbenchError(f"unknown pooling {', '.join(unknown)}; known poolings: {', '.join(POOLINGS)}")
    if not len(texts):
        raise CapbenchError("no texts to extract features from")
    result: dict[str, np.ndarray] = {}
    paths: dict[str, Path] = {}
    keys: dict[str, str] = {}
    if cache_dir is not None:
        weights = weights or weights_hash(model)
        from capbench.data.tokenize import tokenizer_digest  # here: features run without `datasets`

        base = (f"{weights}|{architecture_hash(model)}", tokenizer_digest(tokenizer), texts_hash(texts))
        for pooling in poolings:
            keys[pooling] = features_key(*base, pooling, max_length)
            paths[pooling] = Path(cache_dir).expanduser() / f"features-{keys[pooling]}.npy"
            cached = _load(paths[pooling]) if paths[pooling].is_file() else None
            if cached is not None and cached.ndim == 3 and cached.shape[1] == len(texts):
                result[pooling] = cached.astype(np.float32)
    missing = [p for p in poolings if p not in result]
    if info is not None:
        info["cached"] = {p: p in result for p in poolings}
        info["keys"] = keys
    if missing:
        fresh = compute_features(model, tokenizer, texts, missing, max_length, batch_size)
        for pooling, array in fresh.items():
            stored = _round(array)
            if pooling in paths:
                _save_atomic(paths[pooling], stored)
            result[pooling] = stored.astype(np.float32)
    return {p: result[p] for p in poolings}
