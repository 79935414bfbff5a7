"""`capbench run`: turn command-line arguments into frozen cell specs and run them."""

from __future__ import annotations

import sys
from argparse import Namespace
from dataclasses import replace
from pathlib import Path

from capbench import distributed, records
from capbench.cap.runtime import check_snapshot_budgets
from capbench.data.identity import data_identity
from capbench.data.preflight import check_task_data, report_overlap
from capbench.data.sources import detect_source
from capbench.device import resolve_device, resolve_precision, slow_precision_warning
from capbench.errors import CapbenchError
from capbench.grid import check_probe_sizes, expand_grid, parse_seeds, parse_shard, parse_sparsities, shard
from capbench.gridfile import GRID_KEYS, fill_defaults, load_grid
from capbench.layout import max_positions
from capbench.methods import grid_method_specs, grid_methods, regime_controls
from capbench.model_identity import model_identity
from capbench.models import load_config, resolve_model_path
from capbench.options import parse_key_values
from capbench.presets import get_preset
from capbench.runner import RunContext, is_finished, resume_first, run_grid
from capbench.tasks import parse_task_list

DATA_SAMPLE_SEED = 1234  # fixed, so every seed and method of a preset sees the same training rows


def cells_from_args(args):
    """The frozen cell specs of a `capbench run` and its data source: the --tasks x --methods x --sparsity x
    --seeds product, or with --grid the union of the grid file's blocks in their order (a cell several
    blocks name once, with the probes and speed of each), then --shard's slice.  Raises CapbenchError before any work for bad input."""
    if getattr(args, "quiet", False) or getattr(args, "dry_run", False):
        _quiet_libraries()  # once per run, before any block checks its splits
    given = {key: getattr(args, key, None) for key in GRID_KEYS}
    grid = getattr(args, "grid", None)
    if grid is None:
        if given["tasks"] is None:
            raise CapbenchError("capbench run needs --tasks (e.g. --tasks sst2) or --grid FILE")
        return _product_cells(Namespace(**{**vars(args), **fill_defaults(given)}))
    clash = [GRID_KEYS[key][0] for key, value in given.items() if value is not None]
    if clash:
        raise CapbenchError(
            f"--grid {grid} sets {', '.join(clash)} in each block; drop {'it' if len(clash) == 1 else 'them'} "
            "from the command line or edit the file"
        )
    shard_slice = parse_shard(args.shard)
    merged: dict = {}  # cell id -> spec; a cell of several blocks gets every block's measurements
    source = None
    for block in load_grid(grid):
        part, source = _product_cells(Namespace(**{**vars(args), **block, "shard": None}))
        for cell in part:
            seen = merged.get(cell.cell_id)
            merged[cell.cell_id] = cell if seen is None else _with_measurements(seen, cell)
    cells = list(merged.values())
    if shard_slice is not None:
        cells = shard(cells, *shard_slice)
    return cells, source


def _with_measurements(cell, other):
    """``cell`` (the same cell as ``other``: measurements are outside the digest) with the probes and speed
    either asks for."""
    return replace(
        cell, probes=tuple(dict.fromkeys(cell.probes + other.probes)), speed=cell.speed or other.speed
    )


def _quiet_libraries() -> None:
    """Turn off the progress bars the libraries draw (process-wide): datasets' "Generating train split" while
    splits are checked, transformers' "Loading weights" for every teacher and student a cell loads."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()


def _product_cells(args):
    tasks = parse_task_list(args.tasks)
    named = [m.strip() for m in args.methods.split(",") if m.strip()]
    methods = grid_methods(named)  # canonical (cap_soft_movement is cap_soft), each once, without `dense`
    sparsities = parse_sparsities(args.sparsity)
    seeds = parse_seeds(args.seeds)
    shard_slice = parse_shard(args.shard)
    check_probe_sizes(args.probe_sizes)
    steps = getattr(args, "steps", None)
    if steps is not None and args.epochs is not None:
        raise CapbenchError(f"--steps {steps} and --epochs {args.epochs:g}: give one of them, not both")
    preset = get_preset(args.preset)
    where = resolve_device(getattr(args, "device", "cpu"))
    precision = resolve_precision(getattr(args, "precision", "fp32"), where)
    if (slow := slow_precision_warning(where, precision)) and not getattr(args, "quiet", False):
        print(f"capbench: warning: {slow}", file=sys.stderr)
    if args.epochs is not None:  # a length in epochs replaces the preset's length in steps
        preset = replace(preset, train=replace(preset.train, max_steps=None))
    preset = preset.override(
        model=args.model,
        max_train_examples=args.max_train_examples,
        max_eval_examples=args.max_eval_examples,
        max_seq_length=args.max_seq_length,
        epochs=args.epochs,
        max_steps=steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        precision=precision,
    )
    preset.validate()  # --epochs, --batch-size, ...: every setting in its domain before anything loads
    if not getattr(args, "quiet", False):
        for why in dict.fromkeys(filter(None, (preset.lacks_signal(t.name) for t in tasks))):
            print(f"capbench: warning: {why}; its results do not measure pruning", file=sys.stderr)
    method_options = parse_key_values(args.method_option, "--method-option")
    cap_options = parse_key_values(args.cap_option, "--cap-option")
    specs = grid_method_specs(methods, method_options, args.kd == "on", cap_options, sparsities)
    model_config = load_config(resolve_model_path(preset.model))  # fail fast on an unsupported model type
    if args.max_seq_length is not None:  # an explicit length must fit the model's position embeddings
        preset.validate(max_positions=max_positions(model_config))  # RoBERTa's start after pad_token_id
    identity = model_identity(preset.model)  # the weights, config and tokenizer the cells' digests name
    source = detect_source(args.data_dir)
    overlaps = []
    for task in tasks:  # fail fast, before hours of training, on a missing, empty or broken split
        overlaps += check_task_data(source, task, preset.max_train_examples, preset.max_eval_examples)
    report_overlap(overlaps, strict=getattr(args, "strict_data", False))  # eval rows seen in training
    check_snapshot_budgets(specs, tasks, source, preset)  # CAP with SnC must take a snapshot on this budget
    from capbench.probing.options import expand_probe_names, split_probe_names

    probes = tuple(expand_probe_names(args.probes.split(",")))  # `default`: the spec names each probe
    split_probe_names(probes)  # unknown probe names fail here, before any training
    base = dict(
        model=preset.model,
        preset=preset.name,
        max_train_examples=preset.max_train_examples,
        max_eval_examples=preset.max_eval_examples,
        max_seq_length=preset.max_seq_length,
        data_sample_seed=DATA_SAMPLE_SEED,
        train=preset.train.to_dict(),
        probes=probes,
        probe_sizes=args.probe_sizes,
        speed=bool(args.speed),
        model_identity=identity,
    )
    data = {task.name: data_identity(source, task) for task in tasks}
    cells = expand_grid(  # the preset's per-task method options beneath --method-option
        base,
        data,
        methods,
        sparsities,
        seeds,
        specs,
        cell_options=lambda task, method, sparsity, options: preset.cell_options(
            task, method, sparsity, options, method_options
        ),
        controls=regime_controls(specs, args.kd == "on"),
    )
    if shard_slice is not None:
        cells = shard(cells, *shard_slice)
    return cells, source


def print_plan(cells: list, out_dir: Path, cache_dir: Path | None = None, overwrite: bool = False) -> int:
    """What a run would do, without loading a model: each cell id, and whether it trains ("to run"; with
    ``overwrite`` every finished cell too, as run_grid does), is finished but lacks a requested --probes/--speed
    result or another registered measurement, which a run adds without retraining ("measure", as
    measure_after_cell does), or is finished."""
    from capbench.cell_protocol import lost_model_note
    from capbench.checkpoint import Checkpointer, checkpoint_path
    from capbench.measure import missing_measurements
    from capbench.runner import checkpoint_teacher_note

    records.require_current_schema(out_dir)
    finished = measure = 0
    for spec in cells:
        if not is_finished(spec, out_dir):
            saved = Checkpointer.saved_info(checkpoint_path(out_dir, spec.cell_id))
            step = saved["step"] if saved else None
            other = step and checkpoint_teacher_note(spec, saved["identity"], step, cache_dir)
            why = [other] if other else [f"resumes at step {step}"] if step else []
            why += [note] if (note := lost_model_note(spec, out_dir)) else []
            print(f"{'to run':8s}  {spec.cell_id}" + (f"  ({'; '.join(why)})" if why else ""))
            continue
        if overwrite:
            print(f"{'to run':8s}  {spec.cell_id}  (finished; --overwrite trains it again)")
            continue
        missing = missing_measurements(spec, records.read_record(records.record_path(out_dir, spec.cell_id)))
        if missing:
            measure += 1
            print(f"{'measure':8s}  {spec.cell_id}  (finished; missing: {', '.join(missing)})")
        else:
            finished += 1
            print(f"{'finished':8s}  {spec.cell_id}")
    to_measure = f"{measure} to measure (finished; missing --probes/--speed results), " if measure else ""
    print(
        f"capbench: {len(cells)} cells: {len(cells) - finished - measure} to run, {to_measure}"
        f"{finished} already finished (dry run)"
    )
    return 0


def _checkpoint_every(args) -> float:
    from capbench.checkpoint import DEFAULT_EVERY_SECONDS

    chosen = getattr(args, "checkpoint_every", None)
    if chosen is None:
        return DEFAULT_EVERY_SECONDS
    if not 0 <= chosen < float("inf"):
        raise CapbenchError(
            f"--checkpoint-every {chosen:g}: give the seconds between training checkpoints, a number >= 0 "
            "(0 turns them off)"
        )
    return chosen


def run_from_args(args, default_cache: Path) -> int:
    checkpoint_every = _checkpoint_every(args)  # checked before anything loads
    executor = getattr(args, "executor", "local") or "local"
    if getattr(args, "ray_address", None) and executor != "ray":
        raise CapbenchError("--ray-address needs --executor ray")
    gpus = getattr(args, "gpus_per_cell", None)
    if gpus is not None and executor != "ray":
        raise CapbenchError(f"--gpus-per-cell {gpus:g} needs --executor ray (a local run uses --device)")
    if gpus is not None and gpus < 0:
        raise CapbenchError(f"--gpus-per-cell {gpus:g}: expected 0 or more GPUs per cell, e.g. 1 or 0.5")
    if getattr(args, "estimate", False) and not getattr(args, "dry_run", False):
        raise CapbenchError("--estimate times a few steps instead of running: give it with --dry-run")
    cells, source = cells_from_args(args)
    out_dir = Path(args.out)
    if getattr(args, "dry_run", False):
        cache = Path(args.cache_dir) if args.cache_dir else default_cache
        code = print_plan(cells, out_dir, cache, overwrite=args.overwrite)
        if getattr(args, "estimate", False):
            from capbench.estimate import estimate

            pending = [spec for spec in cells if args.overwrite or not is_finished(spec, out_dir)]
            ctx = RunContext(
                out_dir=out_dir,
                cache_dir=Path(args.cache_dir) if args.cache_dir else default_cache,
                source=source,
                save_models=False,
                show_progress=False,
                device=resolve_device(getattr(args, "device", "cpu")),
            )
            estimate(pending, ctx)
        return code
    distributed.init()  # joins the process group under accelerate launch / torchrun; else a no-op
    ctx = RunContext(
        out_dir=out_dir,
        cache_dir=Path(args.cache_dir) if args.cache_dir else default_cache,
        source=source,
        save_models=not args.no_save_models,
        show_progress=not args.quiet and distributed.is_main(),
        device=resolve_device(getattr(args, "device", "cpu")),
        checkpoint_every=checkpoint_every,
    )
    from capbench.measure import measure_after_cell

    cells = resume_first(cells, out_dir)
    if executor == "ray":
        from capbench.executors.ray_executor import run_grid_ray

        counts = run_grid_ray(
            cells,
            ctx,
            overwrite=args.overwrite,
            after_cell=measure_after_cell,
            address=args.ray_address,
            device=getattr(args, "device", None),
            gpus_per_cell=getattr(args, "gpus_per_cell", None),
        )
    else:
        counts = run_grid(cells, ctx, overwrite=args.overwrite, after_cell=measure_after_cell)
    if distributed.is_main():
        print(
            f"capbench: {len(cells)} cells: {counts['done']} run, {counts['skipped']} already finished, "
            + (f"{counts['held']} held by another worker, " if counts.get("held") else "")
            + f"{counts['failed']} failed; records in {out_dir / 'records'}"
        )
        print(f"capbench: render with: capbench leaderboard --runs {out_dir}")
    distributed.shutdown()
    return 1 if counts["failed"] else 0
