"""Tokenize a split once and cache it on disk, keyed by the rows, the tokenizer and the max length."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import datasets

from capbench.tasks import TaskSpec


def rows_digest(dataset: datasets.Dataset) -> str:
    digest = hashlib.sha256()
    for name in sorted(dataset.column_names):
        digest.update(name.encode())
        digest.update("\x1f".join(map(str, dataset[name])).encode())
    return digest.hexdigest()


def tokenizer_digest(tokenizer) -> str:
    """Vocabulary and text pipeline; not the truncation/padding state, which encoding calls change."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        text = repr(sorted(tokenizer.get_vocab().items()))
    else:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        text = json.dumps(state, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _encode(batch: dict, tokenizer, task: TaskSpec, max_length: int) -> dict:
    texts = [batch[field] for field in task.text_fields]
    encoded = tokenizer(*texts, truncation=True, max_length=max_length)
    encoded["labels"] = batch["label"]
    return encoded


def tokenize_split(
    dataset: datasets.Dataset, tokenizer, task: TaskSpec, max_length: int, cache_dir: Path | None
) -> datasets.Dataset:
    """Token ids, attention mask, labels and idx; loaded from `cache_dir` when this exact input was seen."""
    key = hashlib.sha256(
        f"{rows_digest(dataset)}|{tokenizer_digest(tokenizer)}|{max_length}|{task.text_fields}".encode()
    ).hexdigest()[:20]
    target = Path(cache_dir) / "tokenized" / key if cache_dir else None
    if target is not None and (target / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(target))
    tokenized = dataset.map(
        _encode,
        batched=True,
        fn_kwargs={"tokenizer": tokenizer, "task": task, "max_length": max_length},
        remove_columns=[c for c in dataset.column_names if c != "idx"],
        desc=f"tokenize {task.name}",
        load_from_cache_file=False,
    )
    if target is None:
        return tokenized
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    tokenized.save_to_disk(str(partial))
    partial.replace(target)
    return datasets.load_from_disk(str(target))
