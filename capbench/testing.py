"""Tiny random models built in code, for fast tests (no download)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

TINY_WORDS = (
    "the a an is was are not no yes good bad great terrible movie film book man woman dog cat "
    "runs sat on mat red blue green big small happy sad it this that and or but with of to in"
).split()


def tiny_bert_config(num_labels: int = 2, **overrides) -> BertConfig:
    values = dict(
        vocab_size=5 + len(TINY_WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    values.update(overrides)
    return BertConfig(**values)


def tiny_bert(num_labels: int = 2, seed: int = 0, **overrides) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_bert_config(num_labels, **overrides))
    model.eval()
    return model


def tiny_tokenizer(directory: Path) -> BertTokenizerFast:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS]
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)}, do_lower_case=True)


def save_tiny_model_dir(directory: Path, num_labels: int = 2, seed: int = 0) -> Path:
    """A saved tiny BERT encoder (with tokenizer) that `--model DIR` can load."""
    directory = Path(directory)
    model = tiny_bert(num_labels=num_labels, seed=seed)
    model.bert.save_pretrained(directory)
    tiny_tokenizer(directory).save_pretrained(directory)
    return directory


def random_batch(model, batch_size: int = 4, seq_len: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    input_ids = torch.randint(5, vocab, (batch_size, seq_len), generator=g)
    input_ids[:, 0] = 2
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, seq_len // 2 :] = 0
    labels = torch.randint(0, max(model.config.num_labels, 2), (batch_size,), generator=g)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
