"""`capbench run --dry-run --estimate`: time a few training steps of each (task, method) of a grid on the
chosen device and project the time per cell and for the whole grid, before hours of work start.

Each (task, method) is timed on a model built exactly as its cell would build it (the pruner, KD or CAP
loss, precision, device), on the task's own batches (a sample of ``ESTIMATE_ROWS`` train rows, so CAP's
banks are small), with the pre-trained model standing in for the KD teacher (the same shape and cost).  The
first ``WARMUP`` steps are not counted.  A cell's projection is its planned optimizer steps times the timed
step, plus its evaluation (a timed forward over up to ``EVAL_ROWS`` rows, scaled to the split); one-shot
calibration, oBERT's gradient passes and CAP's bank encoding are not in it (the printout says so).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

import torch

from capbench.spec import DENSE, CellSpec

ESTIMATE_ROWS = 512
EVAL_ROWS = 256
WARMUP = 2
STEPS = 5


class StepClock:
    """A progress stand-in for ``train`` that notes the time after every optimizer step (on a GPU once its
    kernels are done, not just launched)."""

    def __init__(self):
        self.times: list[float] = []

    def update(self, _n: int) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()  # the step's kernels are done, not just launched
        self.times.append(time.perf_counter())

    def set_postfix(self, **_kwargs) -> None:
        pass


def _step_seconds(spec: CellSpec, ctx, steps: int = STEPS) -> tuple[float, int, float]:
    """(seconds per optimizer step, planned steps of the real cell, evaluation seconds of the real cell)."""
    from capbench import runner
    from capbench.methods import build_pruner
    from capbench.training import TrainConfig, eval_loader, planned_steps, predict, train

    data = runner.prepare_data(spec, ctx)
    cfg = TrainConfig(**spec.train)
    full_loader = runner._train_loader(spec, data)[1]
    if spec.method == DENSE:
        planned = planned_steps(full_loader, cfg)
    elif runner.uses_oneshot_path(spec):
        chosen = build_pruner(spec).options.get("finetune_steps")
        planned = cfg.run_steps(len(full_loader)) if chosen is None else int(chosen)
    else:
        planned = planned_steps(full_loader, cfg, build_pruner(spec))
    rows = data.train.shuffle(seed=0).select(range(min(ESTIMATE_ROWS, len(data.train))))
    rows = rows.remove_columns("idx").add_column("idx", list(range(len(rows))))
    small = replace(data, train=rows)
    model = runner.load_pretrained(spec, data.task, ctx.device)
    clock = StepClock()
    timed = replace(cfg, max_steps=WARMUP + steps, epochs=1.0)
    loader = runner.make_loader(
        rows, data.tokenizer, cfg.batch_size, shuffle=True, seed=spec.seed, device=ctx.device
    )
    if spec.method == DENSE:
        train(model, loader, timed, progress=clock)
    else:
        teacher = runner.load_pretrained(spec, data.task, ctx.device).eval()
        loss_fn = runner.build_loss(spec, model, teacher, small, ctx)
        pruner = build_pruner(spec)
        if hasattr(pruner, "plan"):  # time the run's ordinary steps, not its pruning steps
            pruner.plan = lambda *_: None
        train(model, loader, timed, loss_fn=loss_fn, pruner=pruner, progress=clock)
        if hasattr(loss_fn, "close"):
            loss_fn.close()
    counted = clock.times[WARMUP - 1 :]
    per_step = (counted[-1] - counted[0]) / max(1, len(counted) - 1)
    eval_seconds = 0.0
    for split_rows in data.evals.values():
        sample = split_rows.select(range(min(EVAL_ROWS, len(split_rows))))
        loader, _ = eval_loader(sample, data.tokenizer, cfg.eval_batch_size, ctx.device)
        started = time.perf_counter()
        predict(model, loader, cfg.precision)
        eval_seconds += (time.perf_counter() - started) * len(split_rows) / max(1, len(sample))
    return per_step, planned, eval_seconds


def estimate(cells: list[CellSpec], ctx, out=print) -> dict:
    """Time each (task, method) of ``cells`` on ``ctx.device`` and print per-cell and grid projections.

    Returns {"per_cell": {(task, method): seconds}, "grid_seconds": total}."""
    timed: dict[tuple, tuple[float, int, float]] = {}

    def key(spec: CellSpec) -> tuple:  # one timing per task and method configuration
        return spec.task, spec.method, json.dumps(spec.method_options, sort_keys=True), spec.cap is not None

    for spec in cells:
        if key(spec) not in timed:
            timed[key(spec)] = _step_seconds(spec, ctx)
    per_cell, total = {}, 0.0
    out(f"capbench: estimate on {ctx.device} ({STEPS} timed steps after {WARMUP} per task and method):")
    for spec in cells:
        per_step, planned, eval_seconds = timed[key(spec)]
        seconds = per_step * planned + eval_seconds
        per_cell[spec.cell_id] = seconds
        total += seconds
        out(
            f"  {spec.cell_id:48s} {planned:6d} steps × {per_step:6.3f} s + eval {eval_seconds:6.1f} s "
            f"≈ {seconds / 60:7.1f} min"
        )
    out(
        f"capbench: {len(cells)} cells ≈ {total / 3600:.2f} h on {ctx.device} one after another (not counted: "
        "one-shot calibration, oBERT's gradient passes, CAP's bank encoding; KD steps include the teacher's "
        "forward, which a run caches after the first cell of each teacher)"
    )
    return {"per_cell": per_cell, "grid_seconds": total}
