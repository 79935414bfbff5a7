"""`capbench bench`: time a pruned model (saved, or pruned one-shot here), or every done cell of a run
directory, or sweep synthetic layers."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from capbench.errors import CapbenchError
from capbench.jsonio import write_json
from capbench.speed.options import (
    DEFAULT_MODEL_TOKEN_COUNTS,
    DEFAULT_OPTIONS,
    DEFAULT_TOKEN_COUNTS,
    BenchOptions,
    model_token_counts_for,
    parse_token_count,
)
from capbench.speed.sweep import DEFAULT_SPARSITIES, SHAPE_SETS, SWEEP_OPTIONS

D = DEFAULT_OPTIONS


def _add_source(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model",
        metavar="DIR_OR_HUB_ID",
        help="a saved pruned model (save_pretrained dir), or with --one-shot the model to prune",
    )
    source.add_argument("--runs", type=Path, metavar="RUNDIR", help="a run directory with records/*.json")
    source.add_argument(
        "--sweep",
        choices=sorted(SHAPE_SETS),
        help="no model: sweep synthetic layers of these shapes over sparsity and mask kind (break-even table)",
    )
    p.add_argument(
        "--sparsities",
        nargs="+",
        type=float,
        default=list(DEFAULT_SPARSITIES),
        help=f"with --sweep (default: {' '.join(map(str, DEFAULT_SPARSITIES))})",
    )
    p.add_argument(
        "--dense",
        type=Path,
        metavar="DIR",
        help="the dense model to compare with (default: the pruned model itself run densely)",
    )
    p.add_argument(
        "--one-shot",
        metavar="CRITERION",
        help="prune --model here, every encoder linear to --sparsity on its own, by this criterion "
        "(magnitude or random), and time it against the unpruned model",
    )
    p.add_argument(
        "--sparsity", type=float, help="with --one-shot: the fraction of weights removed, in [0, 1)"
    )
    p.add_argument(
        "--seed", type=int, default=D.seed, help="one-shot random scores and sentence draw (default 0)"
    )


def _add_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="time the whole model on evaluation sentences of --task from this GLUE directory "
        "(with --runs: of each record's task; default there: the record's own local data source)",
    )
    p.add_argument("--task", help="the task whose main evaluation split gives the sentences (e.g. sst2)")
    p.add_argument(
        "--texts", type=Path, metavar="FILE", help="time on these sentences instead (one per line)"
    )
    p.add_argument(
        "--sentences",
        type=int,
        default=D.sentences,
        metavar="N",
        help=f"how many sentences (default {D.sentences}); without sentences: random token ids",
    )


def _add_rounds(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--token-counts",
        nargs="+",
        metavar="BxS",
        help=f"per-layer calibration shapes, batch x seq (default: {' '.join(DEFAULT_TOKEN_COUNTS)}; "
        f"--sweep: {' '.join(SWEEP_OPTIONS.token_counts)})",
    )
    p.add_argument(
        "--model-token-counts",
        nargs="+",
        default=list(DEFAULT_MODEL_TOKEN_COUNTS),
        metavar="BxS",
        help="whole-model shapes, batch x seq (with sentences: batch x longest kept) "
        f"(default: {' '.join(DEFAULT_MODEL_TOKEN_COUNTS)})",
    )
    p.add_argument(
        "--max-rounds",
        "--repeats",
        dest="repeats",
        type=int,
        metavar="N",
        default=D.repeats,
        help=f"at most this many interleaved rounds (default {D.repeats})",
    )
    p.add_argument(
        "--min-rounds",
        type=int,
        default=D.min_repeats,
        metavar="N",
        help=f"at least this many per whole-model shape (default {D.min_repeats}; "
        f"calibration: {D.layer_min_repeats})",
    )
    p.add_argument(
        "--target-spread",
        type=float,
        default=D.target_spread,
        help=f"stop once every speedup's IQR/median is at most this (default {D.target_spread})",
    )
    p.add_argument(
        "--layer-seconds",
        type=float,
        default=D.layer_budget,
        help=f"cap on rounds per layer and calibration shape, seconds (default {D.layer_budget})",
    )
    p.add_argument(
        "--model-seconds",
        type=float,
        default=D.model_budget,
        help=f"cap on rounds per whole-model shape, seconds (default {D.model_budget})",
    )
    p.add_argument(
        "--model-min-seconds",
        type=float,
        default=D.model_min_seconds,
        help=f"time each whole-model shape for at least this long, seconds (default {D.model_min_seconds})",
    )
    p.add_argument(
        "--warmup", type=int, default=D.warmup, help=f"warm-up calls per candidate (default {D.warmup})"
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch intra-op threads (default 1: the most repeatable on a shared machine)",
    )


def register(subparsers) -> argparse.ArgumentParser:
    from capbench import device

    p = subparsers.add_parser(
        "bench",
        help="measure what a pruned model's sparsity buys in inference time on this machine",
        description=(
            "Choose each encoder linear's kernel format (dense, CSR, BSR, compact; 2:4 on CUDA) on a calibration "
            "run, then time the whole model in those formats against its dense model and against the same model "
            "with free linears (the ceiling), interleaved, until the spread is small. With --runs, do it for "
            "every done cell of a run directory and write the result into each record's 'speed' field."
        ),
    )
    _add_source(p)
    _add_inputs(p)
    _add_rounds(p)
    p.add_argument("--no-breakdown", action="store_true", help="skip the where-does-the-time-go breakdown")
    p.add_argument(
        "--force", action="store_true", help="with --runs: re-time records that already have speed"
    )
    p.add_argument(
        "--json", type=Path, metavar="FILE", help="with --model/--sweep: also write the result as JSON"
    )
    device.add_arguments(p, "the weights' dtype while timed")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(handler=run_bench)
    return p


def _progress(quiet: bool):
    if quiet:
        return None
    return lambda msg: print(f"  [bench] {msg}", file=sys.stderr, flush=True)


def load_model(name_or_path: Path | str, num_labels: int | None = None):
    """A saved model (compacted structured ones included) through `capbench.models.load_classifier`;
    a hub id maps to its installed offline package, as for `--model` elsewhere."""
    from capbench.models import load_classifier, load_config, resolve_model_path

    path = resolve_model_path(str(name_or_path))
    text = str(name_or_path)
    if not Path(path).is_dir() and (Path(text).is_absolute() or text.startswith((".", "~"))):
        raise CapbenchError(
            f"model directory {name_or_path} does not exist; pass a save_pretrained directory"
        )
    if num_labels is None:
        num_labels = getattr(load_config(path), "num_labels", 2)
    return load_classifier(path, num_labels).eval()


def _num_labels(record: dict) -> int | None:
    try:
        from capbench.tasks import get_task

        return get_task(record["spec"]["task"]).num_labels
    except Exception:  # unknown task here: take the saved config's
        return None


def write_json_atomic(path: Path, data: dict) -> None:
    """The one atomic, strict JSON writer (capbench.jsonio): temp file, fsync, os.replace; NaN refused."""
    write_json(path, data)


# ------------------------------------------------------------------------------------------ the arguments

_AT_LEAST = (
    ("threads", "--threads", 1),
    ("warmup", "--warmup", 0),
    ("min_rounds", "--min-rounds", 1),
    ("repeats", "--max-rounds", 1),
    ("sentences", "--sentences", 1),
    ("model_min_seconds", "--model-min-seconds", 0),
)
_POSITIVE = (
    ("target_spread", "--target-spread"),
    ("layer_seconds", "--layer-seconds"),
    ("model_seconds", "--model-seconds"),
)


def check_args(args) -> None:
    """Every flag in its domain and the flags that need each other together; CapbenchError (one line,
    naming the flag and the fix) otherwise."""
    for dest, flag, low in _AT_LEAST:
        value = getattr(args, dest, None)
        if value is not None and value < low:
            raise CapbenchError(f"{flag} {value}: must be at least {low}")
    for dest, flag in _POSITIVE:
        value = getattr(args, dest, None)
        if value is not None and not value > 0:
            raise CapbenchError(f"{flag} {value}: must be positive")
    for spec in [*(args.token_counts or ()), *args.model_token_counts]:
        try:
            parse_token_count(spec)
        except ValueError as exc:
            raise CapbenchError(f"{exc}") from None
    _check_one_shot(args)
    _check_inputs(args)


def _check_one_shot(args) -> None:
    from capbench.speed.oneshot import check_sparsity, criterion_for

    if args.one_shot is None:
        if args.sparsity is not None:
            raise CapbenchError("--sparsity needs --one-shot CRITERION (magnitude or random)")
        return
    if args.model is None:
        raise CapbenchError("--one-shot needs --model (the model to prune), not --runs or --sweep")
    criterion_for(args.one_shot)
    if args.sparsity is None:
        raise CapbenchError(f"--one-shot {args.one_shot} needs --sparsity S in [0, 1), e.g. --sparsity 0.9")
    check_sparsity(args.sparsity)
    if args.dense is not None:
        raise CapbenchError(
            "--dense with --one-shot: the unpruned --model is the dense baseline; drop --dense"
        )


def _check_inputs(args) -> None:
    if args.texts is not None and (args.task or args.data_dir):
        raise CapbenchError("--texts and --task/--data-dir both give sentences; pass one of them")
    if args.task and args.runs is not None:
        raise CapbenchError("--task with --runs: each record's own task gives the sentences; drop --task")
    if args.data_dir and not args.task and args.runs is None:
        raise CapbenchError("--data-dir needs --task T (whose evaluation split gives the sentences)")
    if args.task:
        from capbench.tasks import get_task

        try:
            get_task(args.task)
        except Exception:
            from capbench.tasks import all_tasks

            raise CapbenchError(
                f"--task {args.task}: unknown task; use one of {', '.join(all_tasks())}"
            ) from None


def placement(args) -> tuple:
    """(device, precision) of ``--device`` and ``--precision``, resolved once (CapbenchError: one line)."""
    from capbench.device import resolve_device, resolve_precision

    if getattr(args, "_placement", None) is None:
        where = resolve_device(getattr(args, "device", "cpu"))
        args._placement = (where, resolve_precision(getattr(args, "precision", "fp32"), where))
    return args._placement


def _placed(model, args):
    from capbench.speed.bench import place

    return place(model, *placement(args))


def bench_options(args, base: BenchOptions = DEFAULT_OPTIONS) -> BenchOptions:
    """`base` with the command line's shapes, rounds, breakdown and threads; CapbenchError on a bad value.
    Whole-model shapes default to the device's (batch 128 too on a GPU: ``model_token_counts_for``)."""
    check_args(args)
    where, _ = placement(args)
    return replace(
        base,
        token_counts=tuple(args.token_counts or base.token_counts),
        model_token_counts=model_token_counts_for(where, args.model_token_counts),
        repeats=args.repeats,
        min_repeats=args.min_rounds,
        target_spread=args.target_spread,
        layer_budget=args.layer_seconds,
        model_budget=args.model_seconds,
        model_min_seconds=args.model_min_seconds,
        warmup=args.warmup,
        breakdown=not args.no_breakdown,
        threads=args.threads,
        sentences=args.sentences,
        seed=args.seed,
    )


# ------------------------------------------------------------------------------------------ the sentences


def _sentences(args, tokenizer_dir, task: str | None = None, source=None):
    """The sentences to time on (`capbench.speed.inputs.Sentences`): --texts, else `task`'s (default
    --task) evaluation split from `source` (default --data-dir, CAPBENCH_DATA_DIR or the hub); None (random
    token ids) without a task, and under --runs without a local source."""
    from capbench.data.sources import detect_source
    from capbench.models import load_tokenizer, resolve_model_path
    from capbench.speed.inputs import file_sentences, task_sentences

    task = task or args.task
    if args.texts is None and task is None:
        return None
    if args.texts is None and source is None and args.data_dir is None and args.runs is not None:
        return None
    tokenizer = load_tokenizer(resolve_model_path(str(tokenizer_dir)))
    if args.texts is not None:
        return file_sentences(args.texts, tokenizer, args.sentences)
    return task_sentences(source or detect_source(args.data_dir), task, tokenizer, args.sentences, args.seed)


def _record_source(record: dict):
    """The record's own data source when it is a local directory that still exists, else None."""
    from capbench.data.sources import DataSource

    source = ((record.get("data") or {}).get("source")) or {}
    root = source.get("root")
    if source.get("kind") in ("local", "tsv") and root and Path(root).is_dir():
        return DataSource(source["kind"], root)
    return None


# ------------------------------------------------------------------------------------------ the commands


def _resolve(path_str: str | None, run_dir: Path) -> Path | None:
    if not path_str:
        return None
    p = Path(path_str)
    if p.is_absolute() or p.exists() or not (run_dir / p).exists():
        return p  # absolute, relative to here, or a hub id
    return run_dir / p


def _bench(model, dense, options: BenchOptions, progress, where: str = "", sentences=None) -> dict:
    from capbench.speed.bench import bench_model

    try:
        return bench_model(model, dense, options, progress=progress, sentences=sentences)
    except ValueError as exc:
        raise CapbenchError(f"{where}{exc}") from exc


def _run_sweep(args) -> int:
    from capbench.provenance import machine, machine_line
    from capbench.speed.bench import jsonable, pinned_threads
    from capbench.speed.sweep import break_even, render_sweep, sweep

    options = bench_options(args, SWEEP_OPTIONS)
    with pinned_threads(options.threads):
        rows = sweep(SHAPE_SETS[args.sweep], args.sparsities, options, progress=_progress(args.quiet))
        described = machine()
    print(f"Kernel sweep on {machine_line(described)}; speedup vs dense, median of per-round ratios\n")
    print(render_sweep(rows))
    if args.json:
        write_json_atomic(
            args.json, jsonable({"machine": described, "rows": rows, "break_even": break_even(rows)})
        )
    return 0


def _run_model(args) -> int:
    from capbench.speed.report import render_layer_table, render_model_table

    options = bench_options(args)
    model = _placed(load_model(args.model), args)
    dense = _placed(load_model(args.dense), args) if args.dense else None
    pruning = None
    if args.one_shot:
        import copy

        from capbench.speed.oneshot import prune_one_shot

        dense = copy.deepcopy(model)
        pruning = prune_one_shot(model, args.one_shot, args.sparsity, args.seed)
    sentences = _sentences(args, args.model)
    speed = _bench(model, dense, options, _progress(args.quiet), sentences=sentences)
    if pruning is not None:
        speed["one_shot"] = pruning
    print(render_layer_table(speed))
    print()
    print(render_model_table(speed))
    if args.json:
        write_json_atomic(args.json, speed)
    return 0


class _DenseModels:
    """Dense models by directory, each loaded once per run directory."""

    def __init__(self, args):
        self.args = args
        self.loaded: dict[Path, object] = {}

    def get(self, dense_dir: Path | None, num_labels: int | None):
        if dense_dir is not None and dense_dir not in self.loaded:
            self.loaded[dense_dir] = _placed(load_model(dense_dir, num_labels), self.args)
        return self.loaded.get(dense_dir)


def _time_record(path: Path, record: dict, args, options: BenchOptions, dense: _DenseModels) -> dict | None:
    """Time one done record's model and write its 'speed' field atomically; the fresh record, or None when
    the record names no model."""
    from capbench.speed.report import render_model_table

    model_dir = _resolve(record.get("model_dir"), args.runs)
    if model_dir is None:
        print(f"{path.name}: no model_dir in the record, skipped", file=sys.stderr)
        return None
    dense_dir = _resolve(record.get("dense_model_dir"), args.runs) or args.dense
    num_labels = _num_labels(record)
    baseline = dense.get(dense_dir, num_labels)
    task = (record.get("spec") or {}).get("task")
    sentences = _sentences(args, model_dir, task, None if args.data_dir else _record_source(record))
    print(f"{path.name}: timing {model_dir}", file=sys.stderr)
    speed = _bench(
        _placed(load_model(model_dir, num_labels), args),
        baseline,
        options,
        _progress(args.quiet),
        f"{path.name}: ",
        sentences,
    )
    print(f"\n## {path.stem}\n")
    print(render_model_table(speed))
    fresh = json.loads(path.read_text())  # re-read: only the speed field is ours
    fresh["speed"] = speed
    write_json_atomic(path, fresh)
    return fresh


def _run_dir(args) -> int:
    from capbench.speed.report import render_speed_table

    options = bench_options(args)
    record_dir = args.runs / "records"
    if not record_dir.is_dir():
        raise CapbenchError(f"{record_dir} does not exist; pass a run directory made by `capbench run`")
    dense = _DenseModels(args)
    timed, skipped, records = 0, 0, []
    for path in sorted(record_dir.glob("*.json")):
        record = json.loads(path.read_text())
        if record.get("status") != "done" or (record.get("speed") and not args.force):
            skipped += record.get("status") != "done"
            records.append(record)
            continue
        fresh = _time_record(path, record, args, options, dense)
        records.append(record if fresh is None else fresh)
        timed += fresh is not None
    print()
    print(render_speed_table(records))
    print(f"\ntimed {timed} cell(s); {skipped} not done; records in {record_dir}", file=sys.stderr)
    return 0


def run_bench(args) -> int:
    placement(args)  # a device this machine lacks fails here, before any loading
    if args.sweep is not None:
        return _run_sweep(args)
    if args.model is not None:
        return _run_model(args)
    return _run_dir(args)
