"""`capbench bench`: time a saved pruned model, or every done cell of a run directory."""

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
    parse_token_count,
)
from capbench.speed.sweep import DEFAULT_SPARSITIES, SHAPE_SETS, SWEEP_OPTIONS


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench",
        help="measure what a pruned model's sparsity buys in inference time on this machine",
        description=(
            "Time every encoder linear of a pruned model in every kernel format (dense, CSR, BSR, compact; "
            "2:4 on CUDA) and the whole model in its best formats against its dense model. With --runs, do it "
            "for every done cell of a run directory and write the result into each record's 'speed' field."
        ),
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model", type=Path, metavar="DIR", help="a saved pruned model (save_pretrained dir)"
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
        "--token-counts",
        nargs="+",
        default=list(DEFAULT_TOKEN_COUNTS),
        metavar="BxS",
        help=f"per-layer token counts, batch x seq (default: {' '.join(DEFAULT_TOKEN_COUNTS)})",
    )
    p.add_argument(
        "--model-token-counts",
        nargs="+",
        default=list(DEFAULT_MODEL_TOKEN_COUNTS),
        metavar="BxS",
        help=f"whole-model shapes, batch x seq (default: {' '.join(DEFAULT_MODEL_TOKEN_COUNTS)})",
    )
    p.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up calls per candidate (default 1)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--no-breakdown", action="store_true", help="skip the where-does-the-time-go breakdown")
    p.add_argument(
        "--force", action="store_true", help="with --runs: re-time records that already have speed"
    )
    p.add_argument(
        "--json", type=Path, metavar="FILE", help="with --model/--sweep: also write the result as JSON"
    )
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


def bench_options(args, base: BenchOptions = DEFAULT_OPTIONS) -> BenchOptions:
    """`base` with the command line's shapes, rounds, breakdown and threads; CapbenchError on a bad value."""
    for spec in [*args.token_counts, *args.model_token_counts]:
        try:
            parse_token_count(spec)
        except ValueError as exc:
            raise CapbenchError(f"{exc}") from None
    if args.repeats < 1:
        raise CapbenchError("--repeats must be at least 1")
    return replace(
        base,
        token_counts=tuple(args.token_counts),
        model_token_counts=tuple(args.model_token_counts),
        repeats=args.repeats,
        warmup=args.warmup,
        breakdown=not args.no_breakdown,
        threads=args.threads,
    )


def _resolve(path_str: str | None, run_dir: Path) -> Path | None:
    if not path_str:
        return None
    p = Path(path_str)
    if p.is_absolute() or p.exists() or not (run_dir / p).exists():
        return p  # absolute, relative to here, or a hub id
    return run_dir / p


def _bench(model, dense, options: BenchOptions, progress, where: str = "") -> dict:
    from capbench.speed.bench import bench_model

    try:
        return bench_model(model, dense, options, progress=progress)
    except ValueError as exc:
        raise CapbenchError(f"{where}{exc}") from exc


def _run_sweep(args) -> int:
    from capbench.provenance import machine, machine_line
    from capbench.speed.bench import jsonable
    from capbench.speed.sweep import break_even, render_sweep, sweep

    options = bench_options(args, SWEEP_OPTIONS)
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
    model = load_model(args.model)
    dense = load_model(args.dense) if args.dense else None
    speed = _bench(model, dense, options, _progress(args.quiet))
    print(render_layer_table(speed))
    print()
    print(render_model_table(speed))
    if args.json:
        write_json_atomic(args.json, speed)
    return 0


class _DenseModels:
    """Dense models by directory, each loaded once per run directory."""

    def __init__(self):
        self.loaded: dict[Path, object] = {}

    def get(self, dense_dir: Path | None, num_labels: int | None):
        if dense_dir is not None and dense_dir not in self.loaded:
            self.loaded[dense_dir] = load_model(dense_dir, num_labels)
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
    print(f"{path.name}: timing {model_dir}", file=sys.stderr)
    speed = _bench(
        load_model(model_dir, num_labels), baseline, options, _progress(args.quiet), f"{path.name}: "
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
    dense = _DenseModels()
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
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.sweep is not None:
        return _run_sweep(args)
    if args.model is not None:
        return _run_model(args)
    return _run_dir(args)
