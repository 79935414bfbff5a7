"""Execute grid cells: load data and model, train (dense, pruned, CAP), evaluate, measure, record."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from capbench import distributed, jsonio, quiet, records
from capbench.cell_protocol import execute_cell, finished_elsewhere, is_finished  # noqa: F401 (re-exported)
from capbench.checkpoint import DEFAULT_EVERY_SECONDS, Checkpointer, checkpoint_path
from capbench.device import describe as describe_device
from capbench.device import model_device
from capbench.errors import CapbenchError
from capbench.methods import build_loss, build_pruner
from capbench.metrics import compute_metrics, predictions_from_logits, undefined_metrics
from capbench.model_identity import model_identity, weights_sha256
from capbench.models import load_classifier, load_tokenizer, resolve_model_path
from capbench.predictions import write_predictions
from capbench.provenance import git_commit, machine, package_versions
from capbench.pruning.accounting import sparsity_report
from capbench.record import DONE, Record
from capbench.spec import DENSE, CellSpec, teacher_key
from capbench.tasks import TaskSpec, get_task
from capbench.teacher_logits import TeacherLogits
from capbench.training import (
    TrainConfig,
    TrainingDiverged,
    eval_loader,
    make_loader,
    planned_steps,
    predict,
    set_seed,
    train,
)

if TYPE_CHECKING:
    from capbench.data.sources import DataSource


@dataclass
class RunContext:
    out_dir: Path
    cache_dir: Path
    source: DataSource  # capbench.data.sources (or anything with to_dict(): benchmarks/gpu_check)
    save_models: bool = True
    show_progress: bool = True
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # capbench.device
    checkpoint_every: float = DEFAULT_EVERY_SECONDS  # seconds between training checkpoints; 0: none
    _data: dict = field(default_factory=dict)


@dataclass
class TaskData:
    task: TaskSpec
    tokenizer: object
    train: object
    evals: dict
    provenance: dict


def prepare_data(spec: CellSpec, ctx: RunContext) -> TaskData:
    """Load, validate, subsample and tokenize a task's splits once per process."""
    key = (spec.task, spec.model, spec.max_train_examples, spec.max_eval_examples, spec.max_seq_length)
    if key in ctx._data:
        return ctx._data[key]
    with distributed.cache_lock(ctx.cache_dir, "tokenize"):  # one process tokenizes, the others load
        ctx._data[key] = _prepare_data(spec, ctx)
    return ctx._data[key]


def _prepare_data(spec: CellSpec, ctx: RunContext) -> TaskData:
    # Imported here: the rest of the runner runs without `datasets` (benchmarks/gpu_check on a bare GPU box).
    from capbench.data.overlap import eval_train_overlap
    from capbench.data.sources import check_sample_size, load_split, split_provenance
    from capbench.data.tokenize import tokenize_split

    task = get_task(spec.task)
    tokenizer = load_tokenizer(resolve_model_path(spec.model))

    full = {}  # whole splits, for the eval/train overlap in the provenance

    def prepared(split: str, limit: int | None):
        rows = full[split] = load_split(ctx.source, task, split)
        check_sample_size(ctx.source, task, split, limit)
        if limit is not None and limit < len(rows):
            rows = rows.shuffle(seed=spec.data_sample_seed).select(range(limit))
            # idx is the row position in the split actually used: CAP banks are indexed by it.
            rows = rows.remove_columns("idx").add_column("idx", list(range(limit)))
        return tokenize_split(rows, tokenizer, task, spec.max_seq_length, ctx.cache_dir)

    train_rows = prepared(task.train_split, spec.max_train_examples)
    evals = {split: prepared(split, spec.max_eval_examples) for split in task.eval_splits}
    overlap = eval_train_overlap(ctx.source, task, full)
    provenance = {
        split: {
            **split_provenance(ctx.source, task, split),
            "rows": len(rows),
            **({"overlap_with_train": overlap[split][0]} if split in overlap else {}),
        }
        for split, rows in [(task.train_split, train_rows), *evals.items()]
    }
    return TaskData(task, tokenizer, train_rows, evals, provenance)


def load_pretrained(spec: CellSpec, task: TaskSpec, where: torch.device | None = None):
    """The pre-trained model with a fresh classifier head (initialised from the cell's seed), on ``where``."""
    set_seed(spec.seed)  # the classifier head's initialisation follows the seed
    model = load_classifier(resolve_model_path(spec.model), task.num_labels, task=task.name)
    return model.to(where) if where is not None else model


@dataclass
class Evaluation:
    metrics: dict  # {split: {metric: value or None}}
    undefined: dict  # {split: {metric: why it has no value}}, only splits with undefined metrics
    examples: dict  # {split: {"idx", "label", "prediction", "logits"}}: per-example arrays


def evaluate(model, data: TaskData, spec: CellSpec) -> Evaluation:
    """Metrics on every evaluation split, with the per-example predictions they were computed from."""
    metrics, undefined, examples = {}, {}, {}
    cfg = TrainConfig(**spec.train)
    for split, rows in data.evals.items():
        loader, order = eval_loader(rows, data.tokenizer, cfg.eval_batch_size, model_device(model))
        logits, labels = predict(model, loader, cfg.precision)
        restore = np.argsort(order)  # back to the split's row order
        logits, labels = logits[restore], labels[restore]
        predictions = predictions_from_logits(logits, data.task.regression)
        metrics[split] = compute_metrics(data.task.metrics, predictions, labels)
        reasons = undefined_metrics(data.task.metrics, predictions, labels)
        if reasons:
            undefined[split] = reasons
        examples[split] = {
            "idx": np.asarray(rows["idx"]),
            "label": labels,
            "prediction": predictions,
            "logits": logits,
        }
    return Evaluation(metrics, undefined, examples)


def _train_loader(spec: CellSpec, data: TaskData, device: torch.device | None = None):
    cfg = TrainConfig(**spec.train)
    loader = make_loader(
        data.train,
        data.tokenizer,
        cfg.batch_size,
        shuffle=True,
        seed=spec.seed,
        group_by_length=cfg.group_by_length,
        device=device,
    )
    return cfg, loader


def _progress(ctx: RunContext, total: int, desc: str) -> quiet.PausingBar:
    """A training loop's progress bar; each update is also where the loop pauses while another worker on this
    machine times a model (capbench.quiet)."""
    bar = tqdm(total=total, desc=desc, leave=False, disable=not ctx.show_progress, position=1)
    return quiet.PausingBar(bar, ctx.cache_dir)


def _with_pauses(stats: dict, bar: quiet.PausingBar) -> dict:
    if bar.pauses:
        stats["paused_seconds"] = round(bar.paused_seconds, 1)
    return stats


def teacher_lock_name(key: str) -> str:
    return f"dense-{key}"


def teacher_dir(cache_dir: Path, key: str) -> Path:
    """Where the dense teacher of ``teacher_key`` ``key`` is cached; it is there once ``teacher_cached``."""
    return Path(cache_dir) / "dense" / key


def teacher_cached(target: Path) -> bool:
    return (target / "config.json").is_file()


def teacher_in_training_elsewhere(spec: CellSpec, ctx: RunContext) -> bool:
    """Whether another process is training this cell's dense teacher now (its cache lock is held and the
    teacher is not cached yet): the cell would only wait for it."""
    if ctx.cache_dir is None:
        return False
    key = teacher_key(spec)
    if teacher_cached(teacher_dir(ctx.cache_dir, key)):
        return False
    return distributed.cache_lock_busy(ctx.cache_dir, teacher_lock_name(key))


def dense_teacher(spec: CellSpec, ctx: RunContext, data: TaskData) -> tuple[torch.nn.Module, dict]:
    """The dense fine-tuned model of (model, task, data, seed, training), trained once and cached on disk.

    Returns (model in eval mode, info): ``cached``, ``path``, ``key``, ``train_seconds`` (this process's
    training, every resumed part included; 0.0 when the model came from the cache) and ``training``: the
    stats of the run that produced the weights, and ``weights_sha256`` of the saved weights (which teacher the
    cell learned from: the key names the recipe, and a retrained teacher on another machine differs) (``steps``, ``seconds``, ``final_loss_terms``, ``resumed``
    when it was interrupted), kept in ``TRAINING_FILE`` beside them; absent for a model cached before it."""
    check_model_identity(spec)
    key = teacher_key(spec)
    target = teacher_dir(ctx.cache_dir, key)
    # Trained once even when several processes (Ray workers, shards) reach it at the same time.
    with distributed.group_cache_lock(ctx.cache_dir, teacher_lock_name(key)):
        if distributed.agree(teacher_cached(target)):
            model = load_classifier(str(target), data.task.num_labels).to(ctx.device)
            info = {"cached": True, "path": str(target), "key": key, "train_seconds": 0.0}
            info["weights_sha256"] = weights_sha256(target)
            training = jsonio.read_json(target / TRAINING_FILE)  # None: cached before the file was kept
            return model.eval(), {**info, **({"training": training} if isinstance(training, dict) else {})}
        model = load_pretrained(spec, data.task, ctx.device)
        cfg, loader = _train_loader(spec, data, ctx.device)
        records.remove_stale_temp_files(ctx.cache_dir)  # a killed teacher's half-written checkpoint
        saver = Checkpointer(checkpoint_path(ctx.cache_dir, f"dense-{key}"), ctx.checkpoint_every, key)
        with _progress(ctx, cfg.run_steps(len(loader)), f"dense {spec.task} seed {spec.seed}") as bar:
            stats = _with_pauses(train(model, loader, cfg, progress=bar, checkpoint=saver), bar)
        keep = ("steps", "seconds", "final_loss_terms", "resumed", "paused_seconds")
        training = {k: stats[k] for k in keep if k in stats}
        if distributed.is_main():
            save_model(model, data.tokenizer, target, extra={TRAINING_FILE: training})
            saver.remove()
        distributed.barrier()
    info = {"cached": False, "path": str(target), "key": key, "train_seconds": stats["seconds"]}
    # The same key can hold other weights on another machine (caches do not travel; CPU kernels differ).
    info["weights_sha256"] = distributed.agree(weights_sha256(target) if distributed.is_main() else None)
    return model, {**info, "training": training}


TRAINING_FILE = "capbench_training.json"  # beside a cached teacher's weights: how they were trained
# A pruned cell's checkpoint identity: its digest, this mark, its teacher's weights hash.
TEACHER_MARK = " teacher "


def checkpoint_teacher_note(spec: CellSpec, identity: str, step: int, cache_dir: Path | None) -> str | None:
    """For the dry run: why a cell's checkpoint (``identity``, at ``step``) will not be resumed, because it
    learned from a teacher whose weights this machine's cache does not hold (so the cell starts over), or
    None when it will resume (or cannot tell without a cache)."""
    if TEACHER_MARK not in identity or cache_dir is None:
        return None
    wanted = identity.split(TEACHER_MARK, 1)[1]
    target = teacher_dir(cache_dir, teacher_key(spec))
    held = weights_sha256(target) if teacher_cached(target) else None
    if held == wanted:
        return None
    now = f"the cache holds {held}" if held else "no cached teacher here yet"
    return f"its checkpoint at step {step} learned from teacher {wanted}; {now}: starts over"


def check_model_identity(spec: CellSpec) -> None:
    """The model on disk must still be the one the cell's digest names (files can change mid-grid)."""
    now = model_identity(spec.model)
    if now != spec.model_identity:
        raise CapbenchError(
            f"--model {spec.model}: its files changed since this grid was planned "
            f"({', '.join(k for k in now if now.get(k) != spec.model_identity.get(k))} differ); "
            "rerun the command so the cells name the new weights"
        )


def save_model(model, tokenizer, target: Path, extra: dict | None = None) -> None:
    """save_pretrained into a sibling temp directory, then rename: no half-written model directory.
    ``extra``: {file name: JSON value} written beside the weights, in the same rename."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    for name, value in (extra or {}).items():
        jsonio.write_json(partial / name, value)
    shutil.rmtree(target, ignore_errors=True)
    partial.replace(target)


def prune_and_train(
    spec: CellSpec, ctx: RunContext, data: TaskData, teacher, teacher_dir=None, teacher_weights=None
) -> tuple:
    """The pruned cell's training: (finalized model, train stats, pruner, record sections).
    ``teacher_dir``: the teacher's saved directory, where its logits are cached for KD; ``teacher_weights``:
    its weights digest when already known (``dense_teacher``'s ``weights_sha256``), else hashed here."""
    model = load_pretrained(spec, data.task, ctx.device)
    logits = TeacherLogits(teacher, teacher_dir, teacher_weights)
    loss_fn = build_loss_locked(spec, model, teacher, data, ctx, logits)
    pruner = build_pruner(spec)
    if hasattr(loss_fn, "on_pruning_step"):
        pruner.on_prune_step = loss_fn.on_pruning_step  # CAP snapshots at structured pruning events
    cfg, loader = _train_loader(spec, data, ctx.device)
    steps = planned_steps(loader, cfg, pruner)
    stats = _train_pruned(ctx, model, loader, cfg, loss_fn, pruner, logits, steps, spec)
    model = pruner.finalize(model)
    return model, stats, pruner, _pruned_sections(spec, pruner, loss_fn)


def _train_pruned(ctx, model, loader, cfg, loss_fn, pruner, logits, steps, spec, what="") -> dict:
    """``train`` with a progress bar, then the teacher's logits cached for the next cell that needs them."""
    # A checkpoint resumes only with the teacher it learned from: a teacher retrained since (a cleared cache,
    # another machine) has other weights, and half a cell distilled from each is neither.
    identity = spec.digest if logits.weights is None else f"{spec.digest}{TEACHER_MARK}{logits.weights}"
    saver = Checkpointer(checkpoint_path(ctx.out_dir, spec.cell_id), ctx.checkpoint_every, identity)
    with _progress(ctx, steps, f"{spec.method} {spec.sparsity:g} {spec.task}{what}") as bar:
        stats = train(model, loader, cfg, loss_fn=loss_fn, pruner=pruner, progress=bar, checkpoint=saver)
    _with_pauses(stats, bar)
    if distributed.is_main() and (logits.computed or logits.reused):
        with distributed.cache_lock(ctx.cache_dir, "teacher-logits"):
            logits.save()
        stats["teacher_logits"] = logits.report()
    return stats


def _pruned_sections(spec: CellSpec, pruner, loss_fn, **more) -> dict:
    """The record sections of a pruned cell: what the pruner used, and CAP's costs (its banks then closed)."""
    sections = {"method_config": pruner.config(), **more}
    if hasattr(loss_fn, "cost_report"):
        sections["cap"] = {"config": spec.cap, **loss_fn.cost_report()}
        loss_fn.close()
    return sections


def uses_oneshot_path(spec: CellSpec) -> bool:
    """A calibrated one-shot method (Wanda, SparseGPT), or any one-shot method started from the fine-tuned
    model: pruned once, evaluated, then fine-tuned (``prune_oneshot_and_finetune``)."""
    from capbench.methods import criterion_of
    from capbench.pruning.pruners import FINETUNED, get_method, start_of

    pruner = get_method(criterion_of(spec.method)).pruner
    return bool(getattr(pruner, "post_training", False)) or start_of(spec.method_options) == FINETUNED


def prune_oneshot_and_finetune(
    spec: CellSpec, ctx: RunContext, data: TaskData, teacher, teacher_dir, teacher_weights=None
) -> tuple:
    """A one-shot cell: the starting model (the dense fine-tuned teacher with ``start=finetuned``, else the
    pre-trained model) pruned once, from calibration rows where the method needs them (a seeded sample of
    the train split: ``calibration_size`` rows, the cell's seed), evaluated right after pruning, then
    fine-tuned with the cell's loss (KD, or CAP) for ``finetune_steps`` (None: the preset's steps; 0: none)
    with the masks fixed.  Returns what ``prune_and_train`` does, with a ``oneshot`` record section."""
    from capbench.pruning.calibration import calibration_batches
    from capbench.pruning.pruners import FINETUNED, regime, start_of

    start = start_of(spec.method_options)
    if start == FINETUNED:
        model = load_classifier(str(teacher_dir), data.task.num_labels).to(ctx.device)  # the teacher stays
        # as load_pretrained does: the fine-tuning's dropout draws from the cell's seed, not from whatever
        # the cells this process ran before left in the global generator
        set_seed(spec.seed)
    else:
        model = load_pretrained(spec, data.task, ctx.device)
    logits = TeacherLogits(teacher, teacher_dir, teacher_weights)
    loss_fn = build_loss_locked(spec, model, teacher, data, ctx, logits)
    pruner = build_pruner(spec)
    cfg, loader = _train_loader(spec, data, ctx.device)
    chosen = pruner.options.get("finetune_steps")
    steps = cfg.run_steps(len(loader)) if chosen is None else int(chosen)
    pruner.attach(model, max(1, steps))
    pruned_at = time.perf_counter()
    if getattr(pruner, "post_training", False):
        size = int(pruner.options["calibration_size"])
        batches = calibration_batches(data.train, data.tokenizer, size, spec.seed, cfg.eval_batch_size)
        pruner.calibrate(batches)
        pruner.info["calibration"]["seed"] = spec.seed
    prune_seconds = time.perf_counter() - pruned_at
    after = evaluate(model, data, spec)
    stats = {"steps": 0, "seconds": 0.0}
    if steps > 0:
        cfg = replace(cfg, max_steps=steps)
        stats = _train_pruned(ctx, model, loader, cfg, loss_fn, pruner, logits, steps, spec, " fine-tune")
    model = pruner.finalize(model)
    split, name = data.task.main_eval_split, data.task.main_metric
    sections = _pruned_sections(
        spec,
        pruner,
        loss_fn,
        oneshot={
            "start": start,
            "regime": regime(pruner.name, pruner.options),
            "prune_seconds": prune_seconds,
            "calibration": pruner.info.get("calibration"),
            "after_pruning": {
                "metrics": after.metrics,
                "main_metric": {"name": name, "split": split, "value": after.metrics[split][name]},
            },
            "finetune_steps": steps,
        },
    )
    return model, stats, pruner, sections


def main_metric_of(task: TaskSpec, evaluation: Evaluation) -> dict:
    """{name, split, value} of the task's main metric, with `undefined` (the reason) when it has no value."""
    split, name = task.main_eval_split, task.main_metric
    main = {"name": name, "split": split, "value": evaluation.metrics[split][name]}
    if main["value"] is None:
        main["undefined"] = evaluation.undefined[split][name]
    return main


def run_cell(spec: CellSpec, ctx: RunContext) -> Record:
    """Train (or take the cached dense teacher), evaluate and account for one cell; its done Record.

    Raises TrainingDiverged (and any other error) for the cell protocol to record as failed.
    """
    started = time.perf_counter()
    data = prepare_data(spec, ctx)
    loaded = time.perf_counter()
    teacher, teacher_info = dense_teacher(spec, ctx, data)
    sections: dict = {"teacher": teacher_info}
    pruner = None
    # the teacher's training when this process did it (its resumed parts belong to this cell's time)
    trained_here = None if teacher_info["cached"] else teacher_info["training"]
    if spec.method == DENSE:
        # the dense cell's training is its teacher's: its steps and loss (from the cache's file when another
        # cell trained it), its resumes and this process's training time (0 when cached)
        training = teacher_info.get("training") or {}
        stats = {
            "steps": training.get("steps", 0),
            "final_loss_terms": training.get("final_loss_terms", {}),
            **({"resumed": trained_here["resumed"]} if trained_here and "resumed" in trained_here else {}),
            "seconds": teacher_info["train_seconds"],
        }
        model = teacher
    else:
        run = prune_oneshot_and_finetune if uses_oneshot_path(spec) else prune_and_train
        model, stats, pruner, more = run(
            spec, ctx, data, teacher, teacher_info["path"], teacher_info.get("weights_sha256")
        )
        sections.update(more)
    trained = time.perf_counter()
    evaluation = evaluate(model, data, spec)
    evaluated = time.perf_counter()
    structured = bool(getattr(pruner, "structured", False))
    sections["sparsity"] = sparsity_report(model, None, spec.sparsity, structured=structured)
    model_dir = ctx.out_dir / "models" / spec.cell_id
    if distributed.is_main():
        if ctx.save_models and spec.method != DENSE:
            save_model(model, data.tokenizer, model_dir)
        records_dir = ctx.out_dir / records.RECORDS_DIR
        sections["predictions"] = write_predictions(records_dir, spec.cell_id, evaluation.examples)
    if evaluation.undefined:
        sections["undefined_metrics"] = evaluation.undefined
    sections["device"] = describe_device(ctx.device)
    return Record.for_spec(
        spec,
        DONE,
        metrics=evaluation.metrics,
        main_metric=main_metric_of(data.task, evaluation),
        data={"source": ctx.source.to_dict(), "splits": data.provenance},
        model_dir=str(model_dir) if spec.method != DENSE else teacher_info["path"],
        dense_model_dir=teacher_info["path"],
        train={
            "steps": stats["steps"],
            "final_loss_terms": stats.get("final_loss_terms", {}),
            # CAP and KD cells: how the loss terms balance (mean |term| over the last 10% of steps)
            **(
                {"loss_term_magnitudes": stats["loss_term_magnitudes"]}
                if (spec.cap is not None or spec.kd is not None) and "loss_term_magnitudes" in stats
                else {}
            ),
            **({"data_parallel": stats["data_parallel"]} if "data_parallel" in stats else {}),
            **({"teacher_logits": stats["teacher_logits"]} if "teacher_logits" in stats else {}),
            **({"resumed": stats["resumed"]} if "resumed" in stats else {}),
            # wall seconds the training waited while another worker timed a model (capbench.quiet)
            **({"paused_seconds": stats["paused_seconds"]} if "paused_seconds" in stats else {}),
        },
        timings=cell_timings(
            started,
            loaded,
            trained,
            evaluated,
            time.perf_counter(),
            stats,
            teacher=trained_here if spec.method != DENSE else None,  # a dense cell's stats already hold it
        ),
        **sections,
    )


def cell_timings(
    started: float,
    loaded: float,
    trained: float,
    evaluated: float,
    now: float,
    stats: dict,
    teacher: dict | None = None,
) -> dict:
    """A record's wall times in seconds from ``time.perf_counter`` marks of this process and the training
    stats: ``train_seconds`` sums every part of a resumed cell (``stats["seconds"]``), so ``total_seconds``
    adds the training seconds of the parts before the last resume (``stats["resumed"][-1]["seconds_before"]``)
    to this process's own time: a resumed cell's total is the cell's, never less than its training.
    ``teacher``: the training stats of a dense teacher this process trained for a pruned cell (its resumed
    parts count in the total too; its time is not in ``train_seconds``, which is the pruned model's)."""
    before = sum(_seconds_before(part) for part in (stats, teacher) if part)
    return {
        "load_seconds": loaded - started,
        "train_seconds": stats["seconds"],
        "eval_seconds": evaluated - trained,
        "total_seconds": now - started + before,
    }


def _seconds_before(stats: dict) -> float:
    """Training seconds of a run's parts before its last resume (0.0 if it never resumed)."""
    resumed = stats.get("resumed") or []
    return float(resumed[-1]["seconds_before"]) if resumed else 0.0


def build_loss_locked(spec: CellSpec, model, teacher, data: TaskData, ctx: RunContext, teacher_logits=None):
    """`build_loss`, with CAP's cached banks built by one process while the others wait, then load."""
    if spec.cap is None:
        return build_loss(spec, model, teacher, data, ctx, teacher_logits)
    with distributed.cache_lock(ctx.cache_dir, "cap-banks"):
        return build_loss(spec, model, teacher, data, ctx, teacher_logits)


def provenance_fields() -> dict:
    return {"versions": package_versions(), "git_commit": git_commit(), "machine": machine()}


def failed_cell(spec: CellSpec, error: BaseException) -> Record:
    """The failed Record of a cell that raised `error`; a diverged run explains itself in one line."""
    return Record.failure(spec, error, one_line=str(error) if isinstance(error, TrainingDiverged) else None)


def failed_record(spec: CellSpec, error: BaseException) -> dict:
    return failed_cell(spec, error).to_dict()


def _run_cell(spec: CellSpec, ctx: RunContext) -> Record:
    return run_cell(spec, ctx)  # looked up at call time, so a test can replace runner.run_cell


def resume_first(cells: list[CellSpec], out_dir: Path) -> list[CellSpec]:
    """``cells`` with the ones that have a saved training checkpoint under ``out_dir`` moved to the front,
    both parts in grid order: a restarted grid finishes its interrupted cells before it starts new ones, so
    partial work is not left waiting behind the whole grid (and its checkpoint files, 300 MB each for
    MiniLM, do not pile up). Under a multi-process launch every rank takes rank 0's view, since a checkpoint
    written meanwhile by another worker could otherwise give the ranks different orders."""
    started = distributed.agree({s.cell_id for s in cells if checkpoint_path(out_dir, s.cell_id).exists()})
    return [s for s in cells if s.cell_id in started] + [s for s in cells if s.cell_id not in started]


def run_grid(cells: list[CellSpec], ctx: RunContext, overwrite: bool = False, after_cell=None) -> dict:
    """Run every unfinished cell through the cell protocol (capbench.cell_protocol); returns counts.

    A finished cell is skipped unless `overwrite`; a cell another worker holds is left to it and counted
    as "held". `after_cell(spec, path, ctx, fresh)` runs under the cell's lease.

    A cell whose dense teacher another worker is training (`teacher_in_training_elsewhere`) is put off until
    the cells after it have had their turn, rather than leaving this worker idle while it waits; it then
    runs (waiting for the teacher if it must).
    """
    if distributed.is_main():  # with WORLD_SIZE > 1 every rank runs each cell; rank 0 writes
        records.prepare_run_dir(ctx.out_dir)
    counts = {"done": 0, "skipped": 0, "held": 0, "failed": 0}
    provenance = provenance_fields()
    with tqdm(total=len(cells), desc="cells", disable=not ctx.show_progress, position=0) as bar:
        put_off: list[CellSpec] = []
        for spec in cells:
            if distributed.agree(teacher_in_training_elsewhere(spec, ctx)):
                put_off.append(spec)
                continue
            counts[_run_one(spec, ctx, bar, provenance, overwrite, after_cell)] += 1
        for spec in put_off:
            counts[_run_one(spec, ctx, bar, provenance, overwrite, after_cell)] += 1
    return counts


def _run_one(spec: CellSpec, ctx: RunContext, bar, provenance: dict, overwrite: bool, after_cell) -> str:
    bar.set_postfix_str(spec.cell_id)
    result = execute_cell(
        spec,
        ctx,
        run=_run_cell,
        fail=failed_cell,
        provenance=provenance,
        overwrite=overwrite,
        after_cell=after_cell,
    )
    bar.update(1)
    return result.outcome
