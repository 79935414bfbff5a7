"""What a whole-model timing feeds the model: real evaluation sentences with their padding, or random ids.

`Sentences` are texts with their tokenizer and where they come from (a task's evaluation split, a text
file). At batch B they run as ceil(n / B) forwards of B sentences, each batch padded to its longest
sentence and cut at the shape's sequence length, so batch 1 times every sentence alone (no padding) and
batch 32 times them together (padded), on the same sentences. Without sentences, random token ids of exactly
batch x seq tokens (no padding) stand in, and the record says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from capbench.errors import CapbenchError
from capbench.layout import input_names

RANDOM_IDS = "random token ids"
SENTENCES = "sentences"


@dataclass(frozen=True)
class Sentences:
    """Texts to time a model on (a str each, or a tuple of str for sentence-pair tasks), the tokenizer that
    encodes them, and a description of where they come from (e.g. "sst2 validation, 32 of 872 rows")."""

    texts: tuple
    tokenizer: object
    source: str


@dataclass
class ModelInputs:
    """The batches one timed call runs back to back (per-forward latency = call time / `forwards`)."""

    batches: list[dict]
    batch: int
    seq: int
    description: dict

    @property
    def forwards(self) -> int:
        return len(self.batches)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def random_inputs(model: nn.Module, batch: int, seq: int, seed: int = 0) -> ModelInputs:
    """One batch x seq batch of random token ids (no padding), with the inputs the model's family takes."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    input_ids = torch.randint(min(5, vocab - 1), vocab, (batch, seq), generator=g)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if "token_type_ids" in input_names(model):
        inputs["token_type_ids"] = torch.zeros_like(input_ids)
    device = _device(model)
    description = {"kind": RANDOM_IDS, "padding": "none", "sequences": batch, "tokens": batch * seq}
    description["label"] = describe_inputs(description)
    return ModelInputs([{k: v.to(device) for k, v in inputs.items()}], batch, seq, description)


def sentence_inputs(model: nn.Module, sentences: Sentences, batch: int, seq: int) -> ModelInputs:
    """The sentences in batches of `batch`, each padded to its longest sentence, cut at `seq` tokens."""
    texts = list(sentences.texts)
    if not texts:
        raise ValueError("no sentences to time the model on")
    names = input_names(model)
    device = _device(model)
    batches, real, padded = [], 0, 0
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        columns = list(zip(*chunk, strict=True)) if isinstance(chunk[0], tuple) else [chunk]
        encoded = sentences.tokenizer(
            *columns, padding="longest", truncation=True, max_length=seq, return_tensors="pt"
        )
        real += int(encoded["attention_mask"].sum())
        padded += int(encoded["attention_mask"].numel())
        batches.append({k: v.to(device) for k, v in encoded.items() if k in names})
    description = {
        "kind": SENTENCES,
        "source": sentences.source,
        "padding": "longest in batch",
        "sequences": len(texts),
        "forwards": len(batches),
        "tokens": real,
        "padded_tokens": padded,
        "mean_length": real / len(texts),
    }
    description["label"] = describe_inputs(description)
    return ModelInputs(batches, batch, seq, description)


def model_inputs(model: nn.Module, batch: int, seq: int, sentences: Sentences | None, seed: int = 0):
    """`sentence_inputs` when there are sentences, else `random_inputs`."""
    if sentences is None:
        return random_inputs(model, batch, seq, seed)
    return sentence_inputs(model, sentences, batch, seq)


def sample_rows(total: int, n: int, seed: int) -> list[int]:
    """`n` distinct row numbers of `total`, drawn with `seed`, in file order (all rows when n >= total)."""
    if n >= total:
        return list(range(total))
    return sorted(int(i) for i in np.random.default_rng(seed).choice(total, size=n, replace=False))


def task_sentences(source, task_name: str, tokenizer, n: int, seed: int = 0) -> Sentences:
    """`n` rows of a task's main evaluation split (drawn with `seed`) from a capbench data source."""
    from capbench.data.sources import load_split
    from capbench.tasks import get_task

    task = get_task(task_name)
    split = task.main_eval_split
    rows = load_split(source, task, split)
    picked = rows.select(sample_rows(len(rows), n, seed))
    fields = task.text_fields
    texts = tuple(row[fields[0]] if len(fields) == 1 else tuple(row[f] for f in fields) for row in picked)
    where = f"{task.name} {split}, {len(texts)} of {len(rows)} rows (seed {seed}), {source.describe()}"
    return Sentences(texts, tokenizer, where)


def file_sentences(path: Path, tokenizer, n: int) -> Sentences:
    """The first `n` non-empty lines of a UTF-8 text file, one sentence each."""
    path = Path(path)
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise CapbenchError(
            f"--texts {path}: cannot be read ({type(exc).__name__}); give a UTF-8 text file"
        ) from None
    texts = tuple(line for line in lines if line)[:n]
    if not texts:
        raise CapbenchError(f"--texts {path}: no non-empty line; give one sentence per line")
    return Sentences(texts, tokenizer, f"{path.name}, first {len(texts)} lines")


def describe_inputs(description: dict | None) -> str:
    """What a whole model was timed on, in one phrase (kept in the record as the description's "label"; None:
    a record from before descriptions were kept, timed on random ids)."""
    if not description or description.get("kind") != SENTENCES:
        return "random token ids (no padding)"
    mean = description.get("mean_length")
    length = f", mean {mean:.0f} tokens" if isinstance(mean, int | float) else ""
    return (
        f"{description.get('sequences')} sentences of {description.get('source')}{length}, each batch padded "
        "to its longest"
    )
