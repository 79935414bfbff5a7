"""The flat training loop: AdamW, linear warmup/decay, dynamic padding, a fixed seed.

Per step: forward, loss terms from the loss composer and the pruner, backward, clip, optimizer step,
schedule step, then the pruner updates its masks. See docs/ARCHITECTURE.md for the contract.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from capbench import distributed, layout
from capbench.errors import CapbenchError

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 3.0
    batch_size: int = 32
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    eval_batch_size: int = 64

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """Raise CapbenchError, naming the command-line flag (or the preset field) and the fix, on a value
        outside its domain; checked on the resolved settings before any cell runs."""
        for name, (where, what, check) in TRAIN_RULES.items():
            value = getattr(self, name)
            if not check(value):
                shown = f"{value:g}" if isinstance(value, float) else value
                raise CapbenchError(f"{where} {shown}: must be {what}")


def _finite(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# TrainConfig field -> (its command-line flag, or the preset field it comes from; what it must be; check).
TRAIN_RULES = {
    "epochs": (
        "--epochs",
        "a finite number > 0, e.g. 2 (or 0.5 for half an epoch)",
        lambda v: _finite(v) and v > 0,
    ),
    "batch_size": ("--batch-size", "a whole number >= 1, e.g. 32", lambda v: _whole(v) and v >= 1),
    "learning_rate": ("--learning-rate", "a finite number > 0, e.g. 3e-4", lambda v: _finite(v) and v > 0),
    "weight_decay": ("preset train.weight_decay", "a finite number >= 0", lambda v: _finite(v) and v >= 0),
    "warmup_ratio": (
        "preset train.warmup_ratio",
        "a fraction in [0, 1]",
        lambda v: _finite(v) and 0 <= v <= 1,
    ),
    "max_grad_norm": ("preset train.max_grad_norm", "a finite number > 0", lambda v: _finite(v) and v > 0),
    "eval_batch_size": (
        "preset train.eval_batch_size",
        "a whole number >= 1",
        lambda v: _whole(v) and v >= 1,
    ),
}


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_loader(dataset, tokenizer, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    collator = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collator, generator=generator
    )


def model_inputs(batch: dict, model=None) -> dict:
    """The model inputs of a batch; given the ``model``, only those it takes (``capbench.layout.input_names``:
    RoBERTa and DistilBERT get no token_type_ids)."""
    keys = MODEL_INPUTS if model is None else layout.input_names(model)
    return {k: v for k, v in batch.items() if k in keys}


def total_steps(loader: DataLoader, epochs: float) -> int:
    return max(1, math.ceil(len(loader) * epochs))


class CrossEntropyLoss:
    """The default loss composer: the model's own task loss (CE, or MSE for regression)."""

    needs_hidden_states = False

    def __call__(self, outputs, batch, step) -> dict:
        return {"ce": outputs.loss}


class TrainingDiverged(RuntimeError):
    """Training produced a non-finite loss, gradient or weight; the cell fails at that step."""

    def __init__(self, step: int, what: str):
        self.step, self.what = step, what
        super().__init__(f"training diverged at step {step}: {what}; lower --learning-rate")


def _non_finite(value: torch.Tensor) -> str | None:
    value = float(value)
    return None if math.isfinite(value) else str(value)


def first_non_finite_parameter(model) -> str | None:
    """The name of the first parameter holding a nan or inf, or None (one device sync for all of them)."""
    named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    if not named:
        return None
    finite = torch.stack([p.detach().isfinite().all() for _, p in named])
    if bool(finite.all()):
        return None
    return named[int((~finite).nonzero()[0])][0]


def check_finite_step(step: int, model, loss: torch.Tensor | None, grad_norm: torch.Tensor | None) -> None:
    """Raise TrainingDiverged (1-based `step`) on a non-finite loss; or, given the step's gradient norm,
    on a non-finite gradient norm or weight (checked after the optimizer step)."""
    if loss is not None:
        if bad := _non_finite(loss.detach()):
            raise TrainingDiverged(step, f"loss is {bad}")
        return
    if grad_norm is not None and (bad := _non_finite(grad_norm)):
        raise TrainingDiverged(step, f"gradient norm is {bad}")
    if name := first_non_finite_parameter(model):
        raise TrainingDiverged(step, f"weight {name} is not finite")


def _optimizer(model, cfg: TrainConfig, pruner) -> torch.optim.Optimizer:
    score_ids = {id(p) for p in (pruner.score_parameters() if pruner else [])}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in score_ids:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
        *(pruner.param_groups() if pruner else []),
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate)


def _linear_schedule(optimizer, warmup: int, steps: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train(model, loader: DataLoader, cfg: TrainConfig, *, loss_fn=None, pruner=None, progress=None) -> dict:
    """Train in place; returns step count, final loss terms and wall time.

    Raises TrainingDiverged at the first step whose loss, gradient norm or weights are not finite.
    """
    loss_fn = loss_fn or CrossEntropyLoss()
    steps = total_steps(loader, cfg.epochs)
    if pruner is not None:
        pruner.attach(model, steps)
    optimizer = _optimizer(model, cfg, pruner)
    scheduler = _linear_schedule(optimizer, int(cfg.warmup_ratio * steps), steps)
    dp = distributed.DataParallel.create()  # None unless launched with WORLD_SIZE > 1
    if dp is not None:
        dp.broadcast_state(model, optimizer)
    model.train()
    step, started, terms, weight = 0, time.perf_counter(), {}, 1.0
    while step < steps:
        for batch in loader:
            if dp is not None:  # this rank's slice of the global batch, weighted n_rank / n
                batch, weight = dp.local_batch(batch)
            outputs = model(
                **model_inputs(batch, model),
                labels=batch["labels"],
                output_hidden_states=loss_fn.needs_hidden_states,
            )
            terms = loss_fn(outputs, batch, step)
            if pruner is not None:
                terms.update(pruner.loss_terms(step))
            loss = sum(terms.values())
            if dp is None:  # under data parallel each rank sees its own loss: check the all-reduced grads
                check_finite_step(step + 1, model, loss, None)
            optimizer.zero_grad(set_to_none=True)
            (loss * weight if dp is not None else loss).backward()
            if dp is not None:
                dp.all_reduce_grads(optimizer, pruner)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            if pruner is not None:
                pruner.after_step(step)
            check_finite_step(step + 1, model, None, grad_norm)
            step += 1
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.3f}")
            if step >= steps:
                break
        if hasattr(loss_fn, "on_epoch_end"):
            loss_fn.on_epoch_end()
    model.eval()
    extra = {}
    if dp is not None:
        terms = dp.reduce_terms(terms, weight)
        extra["data_parallel"] = {**distributed.describe(), "replica_digest": dp.replica_digest(model)}
    return {
        "steps": step,
        "final_loss_terms": {k: float(v.detach()) for k, v in terms.items()},
        "seconds": time.perf_counter() - started,
        **extra,
    }


@torch.no_grad()
def predict(model, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels over a loader, in order."""
    model.eval()
    logits, labels = [], []
    for batch in loader:
        logits.append(model(**model_inputs(batch, model)).logits.float().cpu())
        labels.append(batch["labels"].cpu())
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()
