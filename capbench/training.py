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
from torch.utils.data import DataLoader, Sampler
from transformers import DataCollatorWithPadding

from capbench import checkpoint as ckpt
from capbench import device, distributed, layout
from capbench.device import loader_options
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
    # Optimizer steps of the run; when set it replaces ``epochs`` (the loader cycles through the train split).
    max_steps: int | None = None
    # Batches of similar length (``LengthGroupedBatches``): the same examples per epoch, far less padding.
    group_by_length: bool = False
    # fp32, or autocast to bf16 / fp16 (with a gradient scaler) around the forward and the loss
    # (capbench.device); part of the spec because it changes results.
    precision: str = "fp32"

    def to_dict(self) -> dict:
        """The spec's ``train`` section; fields added after schema 3 are left out at their default, so
        records written before them keep their digests."""
        data = asdict(self)
        for name, default in OMITTED_AT_DEFAULT.items():
            if data[name] == default:
                del data[name]
        return data

    def run_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of one run over a loader of ``steps_per_epoch`` batches: ``max_steps`` if set,
        else ``ceil(steps_per_epoch * epochs)``."""
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(steps_per_epoch * self.epochs))

    def run_epochs(self, steps_per_epoch: int) -> float:
        """The run's length in epochs (fractional with ``max_steps``)."""
        if self.max_steps is not None:
            return self.max_steps / max(1, steps_per_epoch)
        return self.epochs

    def validate(self) -> None:
        """Raise CapbenchError, naming the command-line flag (or the preset field) and the fix, on a value
        outside its domain; checked on the resolved settings before any cell runs."""
        for name, (where, what, check) in TRAIN_RULES.items():
            value = getattr(self, name)
            if not check(value):
                shown = f"{value:g}" if isinstance(value, float) else value
                raise CapbenchError(f"{where} {shown}: must be {what}")


OMITTED_AT_DEFAULT = {"max_steps": None, "group_by_length": False, "precision": "fp32"}


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
    "max_steps": (
        "--steps",
        "a whole number of optimizer steps >= 1, e.g. 600 (or omit it and give --epochs)",
        lambda v: v is None or (_whole(v) and v >= 1),
    ),
    "group_by_length": ("preset train.group_by_length", "true or false", lambda v: isinstance(v, bool)),
    "precision": ("--precision", "one of fp32, bf16, fp16", lambda v: v in ("fp32", "bf16", "fp16")),
}


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class LengthGroupedBatches(Sampler):
    """Batches of examples of similar length, in a seeded order that changes every epoch.

    Per epoch: a random permutation of the rows; inside chunks of ``chunk_batches`` batches, the rows sorted
    by length (ties keep the permutation's order); the chunk cut into batches; the batches shuffled.  Every
    row is seen once per epoch, as with a plain shuffle, with far less padding (MNLI, MiniLM: about 1,300
    padded tokens per batch of 32 instead of 2,200, ../shared/notes/cpu-training-facts.md).  The scheme is
    the one of Hugging Face's ``LengthGroupedSampler`` (``trainer_pt_utils.get_length_grouped_indices``,
    mega-batches of 50 batches), without its longest-batch-first rule.  ``lengths``: tokens per row; the
    order depends only on (lengths, batch_size, chunk_batches, seed) and how many epochs were drawn.
    """

    def __init__(self, lengths, batch_size: int, seed: int, chunk_batches: int = 50):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.chunk = batch_size * chunk_batches
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).numpy()
        batches = []
        for start in range(0, len(order), self.chunk):
            chunk = order[start : start + self.chunk]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [
                chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)
            ]
        for i in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[i]


def row_lengths(dataset) -> np.ndarray:
    """Tokens per row of a tokenized split (its ``input_ids``)."""
    return np.fromiter((len(ids) for ids in dataset["input_ids"]), dtype=np.int64, count=len(dataset))


def make_loader(
    dataset,
    tokenizer,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    group_by_length: bool = False,
    device: torch.device | None = None,
) -> DataLoader:
    """Batches padded to their longest row.  ``shuffle``: a seeded order per epoch, by length groups with
    ``group_by_length`` (``LengthGroupedBatches``); without ``shuffle``, the rows in order.  ``device``: where
    the batches go (``capbench.device.loader_options``: pinned memory and loader workers on a GPU); the
    batches and their order are the same on every device."""
    collator = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    extra = loader_options(device)
    if shuffle and group_by_length:
        batches = LengthGroupedBatches(row_lengths(dataset), batch_size, seed)
        return DataLoader(dataset, batch_sampler=batches, collate_fn=collator, **extra)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collator, generator=generator, **extra
    )


def eval_loader(
    dataset, tokenizer, batch_size: int, device: torch.device | None = None
) -> tuple[DataLoader, np.ndarray]:
    """An evaluation loader over the rows sorted by length (the least padding), and the permutation that
    put them there: ``outputs[np.argsort(order)]`` restores the split's order.  ``device``: as in
    ``make_loader``."""
    order = np.argsort(row_lengths(dataset), kind="stable")
    collator = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collator, **loader_options(device)), order


def model_inputs(batch: dict, model=None) -> dict:
    """The model inputs of a batch; given the ``model``, only those it takes (``capbench.layout.input_names``:
    RoBERTa and DistilBERT get no token_type_ids), on the model's device."""
    keys = MODEL_INPUTS if model is None else layout.input_names(model)
    inputs = {k: v for k, v in batch.items() if k in keys}
    return inputs if model is None else device.to_device(inputs, device.model_device(model))


def labels_of(batch: dict, model) -> torch.Tensor:
    """The batch's labels on the model's device."""
    return batch["labels"].to(device.model_device(model), non_blocking=True)


class CrossEntropyLoss:
    """The default loss composer: the model's own task loss (CE, or MSE for regression)."""

    needs_hidden_states = False
    stateless = True  # calling it changes nothing: the iterative pruner's importance pass may call it

    def __call__(self, outputs, batch, step) -> dict:
        return {"ce": outputs.loss}


class TermMagnitudes:
    """Mean |value| of every (weighted) loss term over the last ``fraction`` of the training steps: how the
    terms balance once training has settled (CE, KD, each CAP module's unsupervised and supervised parts)."""

    def __init__(self, steps: int, fraction: float = 0.1):
        self.first = steps - max(1, math.ceil(fraction * steps))  # 0-based first step counted
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, step: int, terms: dict) -> None:
        if step < self.first:
            return
        for name, value in terms.items():
            value = value.detach().abs().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
            self.counts[name] = self.counts.get(name, 0) + 1

    def means(self) -> dict[str, float]:
        return {name: float(total) / self.counts[name] for name, total in self.sums.items()}


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


WEIGHT_CHECK_EVERY = 50


def check_finite_step(
    step: int, model, loss: torch.Tensor | None, grad_norm: torch.Tensor | None, weights: bool = True
) -> None:
    """Raise TrainingDiverged (1-based `step`) on a non-finite loss; or, given the step's gradient norm,
    on a non-finite gradient norm or (with ``weights``) weight, checked after the optimizer step.

    The training loop checks the loss and the gradient norm at every step and the weights every
    ``WEIGHT_CHECK_EVERY`` steps and at the last: with finite gradients (their norm covers every trained
    parameter, pruning scores included) an AdamW step cannot make a finite weight non-finite, and a pass
    over all 22.7M MiniLM weights cost 7% of a step."""
    if loss is not None:
        if bad := _non_finite(loss.detach()):
            raise TrainingDiverged(step, f"loss is {bad}")
        return
    if grad_norm is not None and (bad := _non_finite(grad_norm)):
        raise TrainingDiverged(step, f"gradient norm is {bad}")
    if weights and (name := first_non_finite_parameter(model)):
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


def train(
    model, loader: DataLoader, cfg: TrainConfig, *, loss_fn=None, pruner=None, progress=None, checkpoint=None
) -> dict:
    """Train in place; returns step count, final loss terms and wall time (``seconds``, summed over the
    resumed parts; ``resumed``: per resume, its step, the seconds before it and the commit that wrote the
    checkpoint).

    ``checkpoint``: a ``capbench.checkpoint.Checkpointer``; its saved state, if any, is resumed (the run
    continues bit for bit as if never stopped), and a new one is written every ``every`` seconds at a step
    boundary.  Not under data parallel (WORLD_SIZE > 1), which always starts from the first step.

    Raises TrainingDiverged at the first step whose loss, gradient norm or weights are not finite.
    """
    loss_fn = loss_fn or CrossEntropyLoss()
    # An iterative pruner (first_order procedure=iterative) plans [(sparsity, retraining steps)]: before each
    # retraining, an importance pass and a pruning step, then a fresh optimizer and schedule.
    plan, steps = _plan(loader, cfg, pruner)
    boundaries = _phase_starts(plan)
    if pruner is not None and getattr(pruner, "model", None) is not model:  # a one-shot pruner: attached
        pruner.attach(model, steps)
    if hasattr(loss_fn, "attach"):
        loss_fn.attach(steps, len(loader))

    def fresh_optimizer(length: int):  # AdamW and its warm-up/decay schedule over ``length`` steps
        optimizer = _optimizer(model, cfg, pruner)
        return optimizer, _linear_schedule(optimizer, int(cfg.warmup_ratio * length), length)

    optimizer, scheduler = fresh_optimizer(steps)
    dp = distributed.DataParallel.create()  # None unless launched with WORLD_SIZE > 1
    if dp is not None and plan is not None:
        raise CapbenchError("procedure=iterative does not run under data parallel yet; run it on one process")
    if dp is not None:
        dp.broadcast_state(model, optimizer)
    model.train()
    where = device.model_device(model)
    scaler = device.grad_scaler(where, cfg.precision)
    step, started, terms, weight = 0, time.perf_counter(), {}, 1.0
    magnitudes = TermMagnitudes(steps)
    checkpoint = checkpoint if dp is None else None
    pending, epoch_start, taken, before, resumes = None, None, 0, 0.0, []
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        step, before, resumes = int(saved["step"]), float(saved["seconds"]), list(saved["resumes"])
        resumes.append({"at_step": step, "seconds_before": before, "saved_by_commit": saved.get("commit")})
        if plan is not None and step not in boundaries:  # mid-retraining: that phase's optimizer and schedule
            optimizer, scheduler = fresh_optimizer(boundaries[max(b for b in boundaries if b <= step)][1])
        ckpt.load_model_state(model, saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if scaler is not None:
            scaler.load_state_dict(saved["scaler"])
        ckpt.load_object_state(pruner, saved["pruner"])
        ckpt.load_object_state(loss_fn, saved["loss"])
        ckpt.load_object_state(magnitudes, saved["magnitudes"])
        terms = {k: torch.tensor(v) for k, v in saved["terms"].items()}
        if saved["epoch_over"]:
            if hasattr(loss_fn, "on_epoch_end"):
                loss_fn.on_epoch_end()
        else:
            epoch_start, taken = saved["epoch_start"], int(saved["taken"])
            pending = ckpt.resume_epoch(loader, epoch_start, taken)
        ckpt.set_rng_state(saved["rng"])
        if progress is not None:
            progress.update(step)

    def start_phase(at: int) -> None:  # iterative: importance pass, prune, fresh optimizer and schedule
        nonlocal optimizer, scheduler
        sparsity, length = boundaries[at]
        if sparsity > 0:  # a phase at sparsity 0 is dense fine-tuning before the first step (obert)
            if hasattr(pruner, "collect"):  # the pruner gathers its own statistics (obert's gradients)
                pruner.collect(model, loader, loss_fn)
            else:
                importance_pass(model, loader, loss_fn, pruner)
            pruner.prune_step(at, sparsity)
        optimizer, scheduler = fresh_optimizer(length)
        model.train()

    def save(epoch_over: bool) -> None:
        checkpoint.save(
            {
                "step": step,
                "epoch_over": epoch_over,
                "epoch_start": epoch_start,
                "taken": taken,
                "model": ckpt.model_state(model),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": ckpt.rng_state(),
                "pruner": ckpt.object_state(pruner),
                "loss": ckpt.object_state(loss_fn),
                "magnitudes": ckpt.object_state(magnitudes),
                "terms": {k: float(v.detach()) for k, v in terms.items()},
                "seconds": before + time.perf_counter() - started,
                "resumes": resumes,
            }
        )

    while step < steps:
        if pending is not None:  # the rest of the epoch a checkpoint stopped in
            batches, pending = pending, None
        else:
            if step in boundaries:
                start_phase(step)
            epoch_start, taken = ckpt.epoch_start_state(loader), 0
            batches = iter(loader)
        for batch in batches:
            if dp is not None:  # this rank's slice of the global batch, weighted n_rank / n
                batch, weight = dp.local_batch(batch)
            with device.autocast(where, cfg.precision):
                outputs = model(
                    **model_inputs(batch, model),
                    labels=labels_of(batch, model),
                    output_hidden_states=loss_fn.needs_hidden_states,
                )
                terms = loss_fn(outputs, batch, step)
                if pruner is not None:
                    terms.update(pruner.loss_terms(step))
                loss = sum(terms.values())
            magnitudes.add(step, terms)
            if dp is None:  # under data parallel each rank sees its own loss: check the all-reduced grads
                check_finite_step(step + 1, model, loss, None)
            optimizer.zero_grad(set_to_none=True)
            scaled = loss * weight if dp is not None else loss
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
            if dp is not None:
                dp.all_reduce_grads(optimizer, pruner)
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            if scaler is not None:  # skips the step on an overflow, then lowers the scale
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            if pruner is not None:
                pruner.after_step(step)
            weights = (step + 1) % WEIGHT_CHECK_EVERY == 0 or step + 1 == steps
            # with fp16's scaler an overflowing step is skipped and the scale lowered: not a divergence
            check_finite_step(step + 1, model, None, grad_norm if scaler is None else None, weights=weights)
            step += 1
            taken += 1
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.3f}")
            epoch_over = step >= steps or step in boundaries  # a retraining starts at a fresh epoch
            if checkpoint is not None and checkpoint.due():
                save(epoch_over)
            if epoch_over:
                break
        if hasattr(loss_fn, "on_epoch_end"):
            loss_fn.on_epoch_end()
    model.eval()
    extra = {}
    if dp is not None:
        terms = dp.reduce_terms(terms, weight)
        extra["data_parallel"] = {**distributed.describe(), "replica_digest": dp.replica_digest(model)}
    if resumes:
        extra["resumed"] = resumes
    return {
        "steps": step,
        "final_loss_terms": {k: float(v.detach()) for k, v in terms.items()},
        "loss_term_magnitudes": magnitudes.means(),
        "seconds": before + time.perf_counter() - started,
        **extra,
    }


def _phase_starts(plan) -> dict[int, tuple[float, int]]:
    """{first step of a retraining: (its sparsity, its steps)} of an iterative pruner's plan."""
    starts, at = {}, 0
    for sparsity, length in plan or ():
        starts[at] = (sparsity, length)
        at += length
    return starts


def _plan(loader: DataLoader, cfg: TrainConfig, pruner=None) -> tuple[list | None, int]:
    """(an iterative pruner's plan or None, the optimizer steps of the run)."""
    plan = pruner.plan(len(loader), cfg.run_epochs(len(loader))) if hasattr(pruner, "plan") else None
    return plan, cfg.run_steps(len(loader)) if plan is None else sum(n for _, n in plan)


def planned_steps(loader: DataLoader, cfg: TrainConfig, pruner=None) -> int:
    """The optimizer steps ``train`` will take (an iterative pruner's plan, else ``cfg.run_steps``)."""
    return _plan(loader, cfg, pruner)[1]


def importance_pass(model, loader: DataLoader, loss_fn, pruner) -> str:
    """The iterative pruner's importance pass (the CAP authors' ``calculate_head_and_intermediate_importance``,
    StructuredPruning/prune/prune_utils.py L58-126): the model in eval mode (L71), one pass over the train
    set in order (L86-95), the loss backpropagated to the pruner's gates batch by batch and no optimizer step
    (L108-114).  The loss is the training objective (L108 ``trainer.compute_loss``: CE, KD and the
    contrastive terms): the composer's ``importance_terms(outputs, batch)`` if it has one, its call if it is
    ``stateless``, else the task loss alone.  Weights get no gradient (they do not require it during the
    pass).  Returns which loss it used ("training" or "task"), also in the pruner's ``info``."""
    ordered = DataLoader(
        loader.dataset, batch_size=loader.batch_size, shuffle=False, collate_fn=loader.collate_fn
    )
    terms_of = getattr(loss_fn, "importance_terms", None)
    used = "training" if terms_of is not None or getattr(loss_fn, "stateless", False) else "task"
    frozen = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    pruner.start_importance_pass()
    try:
        for p in frozen:
            p.requires_grad_(False)
        for batch in ordered:
            outputs = model(
                **model_inputs(batch, model),
                labels=labels_of(batch, model),
                output_hidden_states=getattr(loss_fn, "needs_hidden_states", False),
            )
            if terms_of is not None:
                terms = terms_of(outputs, batch)
            elif used == "training":
                terms = loss_fn(outputs, batch, None)
            else:
                terms = {"ce": outputs.loss}
            sum(terms.values()).backward()
            pruner.after_importance_batch()
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    pruner.info["importance_loss"] = used
    return used


@torch.no_grad()
def predict(model, loader: DataLoader, precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """Logits (float32) and labels over a loader, in order; the forward under ``precision``'s autocast."""
    model.eval()
    where = device.model_device(model)
    logits, labels = [], []
    for batch in loader:
        with device.autocast(where, precision):
            logits.append(model(**model_inputs(batch, model)).logits.float().cpu())
        labels.append(batch["labels"].cpu())
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()
