"""Presets: named bundles of run settings; explicit command-line flags override any value."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from capbench.errors import CapbenchError
from capbench.models import DEFAULT_MODEL
from capbench.training import TrainConfig


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    model: str
    max_train_examples: int | None  # None: the whole train split
    max_eval_examples: int | None
    max_seq_length: int
    train: TrainConfig = field(default_factory=TrainConfig)

    def override(self, **values) -> Preset:
        train_fields = set(TrainConfig.__dataclass_fields__)
        train_values = {k: v for k, v in values.items() if k in train_fields and v is not None}
        own = {k: v for k, v in values.items() if k not in train_fields and v is not None}
        return replace(self, train=replace(self.train, **train_values), **own)

    def validate(self, max_positions: int | None = None) -> None:
        """Raise CapbenchError, naming the flag and the fix, on a setting outside its domain (the resolved
        value: preset plus flags). ``max_positions``: the model's max_position_embeddings, if known."""
        self.train.validate()
        for flag, value in (
            ("--max-train-examples", self.max_train_examples),
            ("--max-eval-examples", self.max_eval_examples),
        ):
            if value is not None and not (_whole(value) and value >= 1):
                raise CapbenchError(
                    f"{flag} {value}: must be a whole number of rows >= 1 (omit the flag for the preset's value)"
                )
        length = self.max_seq_length
        if not (_whole(length) and length >= MIN_SEQ_LENGTH):
            upper = (
                f" and at most {max_positions} (the model's max_position_embeddings)" if max_positions else ""
            )
            raise CapbenchError(
                f"--max-seq-length {length}: must be a whole number of tokens >= {MIN_SEQ_LENGTH}{upper}, e.g. 128"
            )
        if max_positions and length > max_positions:
            raise CapbenchError(
                f"--max-seq-length {length}: must be at most {max_positions}, the model's max_position_embeddings"
                f" (longer inputs have no position embedding); e.g. --max-seq-length {min(128, max_positions)}"
            )


MIN_SEQ_LENGTH = 8  # [CLS], [SEP] and a few tokens


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


PRESETS = {
    "smoke": Preset(
        name="smoke",
        description="a few hundred examples, one short epoch: for CI and demos, minutes on a CPU",
        model=DEFAULT_MODEL,
        max_train_examples=256,
        max_eval_examples=256,
        max_seq_length=128,
        # 3e-4: with tens of steps, MiniLM's fresh classifier head barely moves at 1e-4 (sst2, 256 rows, 32
        # steps: 59.5% at 1e-4 vs 77.0% at 3e-4, measured 2026-11-22).
        train=TrainConfig(epochs=1.0, batch_size=16, learning_rate=3e-4, warmup_ratio=0.1),
    ),
    "default": Preset(
        name="default",
        description="sized for a laptop CPU: 1,000 training examples, 2 epochs, up to 1,000 evaluation rows per split",
        model=DEFAULT_MODEL,
        max_train_examples=1000,
        max_eval_examples=1000,
        max_seq_length=128,
        train=TrainConfig(epochs=2.0, batch_size=32, learning_rate=3e-4, warmup_ratio=0.1),
    ),
    "paper": Preset(
        name="paper",
        description="bert-base-uncased with the CAP paper's hyperparameters (full data, 10 epochs): for GPUs",
        model="bert-base-uncased",
        max_train_examples=None,
        max_eval_examples=None,
        max_seq_length=128,
        # CAP (Xu et al. 2022) and movement pruning (Sanh et al. 2020) GLUE scripts: batch 32, lr 3e-5, 10 epochs.
        train=TrainConfig(epochs=10.0, batch_size=32, learning_rate=3e-5, warmup_ratio=0.1),
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise CapbenchError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]
