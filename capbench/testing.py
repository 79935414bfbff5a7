"""Tiny random models built in code, for fast tests (no download): BERT, and RoBERTa, ELECTRA and DistilBERT
(every family of `capbench.layout`) of the same size, all with the tiny WordPiece tokenizer."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    DistilBertConfig,
    ElectraConfig,
    PretrainedConfig,
    RobertaConfig,
)

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


def tiny_config(model_type: str = "bert", num_labels: int = 2, **overrides) -> PretrainedConfig:
    """A tiny config of one family: 2 layers, 4 heads of size 8, FFN width 64, no dropout, pad id 0 (the tiny
    tokenizer's [PAD]). RoBERTa: one token type, and 130 position embeddings (its positions start at
    pad_token_id + 1, so that covers the smoke preset's 128 tokens). ELECTRA: a 16-wide embedding projected to
    the 32-wide encoder, as in ELECTRA-small."""
    if model_type == "bert":
        return tiny_bert_config(num_labels, **overrides)
    vocab = 5 + len(TINY_WORDS)
    bert_like = dict(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
        num_labels=num_labels,
    )
    if model_type == "roberta":
        values = dict(
            bert_like, max_position_embeddings=130, type_vocab_size=1, bos_token_id=2, eos_token_id=3
        )
        cls = RobertaConfig
    elif model_type == "electra":
        values = dict(bert_like, max_position_embeddings=64, embedding_size=16)
        cls = ElectraConfig
    elif model_type == "distilbert":
        values = dict(
            vocab_size=vocab,
            dim=32,
            n_layers=2,
            n_heads=4,
            hidden_dim=64,
            max_position_embeddings=64,
            dropout=0.0,
            attention_dropout=0.0,
            seq_classif_dropout=0.0,
            pad_token_id=0,
            num_labels=num_labels,
        )
        cls = DistilBertConfig
    else:
        raise ValueError(f"no tiny config for model type {model_type!r}")
    values.update(overrides)
    return cls(**values)


def tiny_classifier(model_type: str = "bert", num_labels: int = 2, seed: int = 0, **overrides):
    """A tiny random ``*ForSequenceClassification`` of one family (eval mode)."""
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(tiny_config(model_type, num_labels, **overrides))
    model.eval()
    return model


def save_tiny_model_dir(
    directory: Path, num_labels: int = 2, seed: int = 0, model_type: str = "bert"
) -> Path:
    """A saved tiny encoder (the bare base model, with tokenizer) that `--model DIR` can load."""
    directory = Path(directory)
    if model_type == "bert":
        model = tiny_bert(num_labels=num_labels, seed=seed)
    else:
        model = tiny_classifier(model_type, num_labels=num_labels, seed=seed)
    model.base_model.save_pretrained(directory)
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


class SyntheticSplit:
    """A tokenized split held in memory: the part of ``datasets.Dataset``'s API that the runner, the
    loaders, CAP's banks and calibration use (``len``, a row by position, a column by name, ``select``,
    ``_fingerprint``), so cells run where ``datasets`` is not installed (``benchmarks/gpu_check``).

    ``columns``: equal-length lists by name (``input_ids``, ``attention_mask``, ``token_type_ids``,
    ``labels``, ``idx``)."""

    def __init__(self, columns: dict[str, list]):
        lengths = {len(values) for values in columns.values()}
        if len(lengths) != 1:
            raise ValueError(f"columns of different lengths: { {k: len(v) for k, v in columns.items()} }")
        self.columns = columns
        self.column_names = list(columns)
        text = repr(sorted(columns.items()))
        self._fingerprint = hashlib.sha256(text.encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.columns[key]
        return {name: values[int(key)] for name, values in self.columns.items()}

    def select(self, indices) -> SyntheticSplit:
        chosen = [int(i) for i in indices]
        return SyntheticSplit({name: [values[i] for i in chosen] for name, values in self.columns.items()})


def synthetic_split(
    rows: int, vocab_size: int, num_labels: int = 2, lengths: tuple[int, int] = (8, 32), seed: int = 0
) -> SyntheticSplit:
    """``rows`` random sentences of ``lengths`` (min, max) tokens, [CLS] ... [SEP] with ids 2 and 3 of the
    tiny vocabulary, and a label a model can learn (the first word's id modulo ``num_labels``); ``idx`` is
    the row position."""
    g = torch.Generator().manual_seed(seed)
    low, high = lengths
    columns: dict[str, list] = {
        k: [] for k in ("input_ids", "attention_mask", "token_type_ids", "labels", "idx")
    }
    for i in range(rows):
        n = int(torch.randint(low, high + 1, (1,), generator=g))
        words = torch.randint(5, vocab_size, (n - 2,), generator=g).tolist()
        columns["input_ids"].append([2, *words, 3])
        columns["attention_mask"].append([1] * n)
        columns["token_type_ids"].append([0] * n)
        columns["labels"].append(words[0] % num_labels)
        columns["idx"].append(i)
    return SyntheticSplit(columns)
