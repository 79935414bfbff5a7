"""The `capbench` command: run a grid, render leaderboards, list tasks, probe, bench, compare."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from capbench import __version__
from capbench.errors import CapbenchError


def default_cache_dir() -> Path:
    return Path(os.environ.get("CAPBENCH_CACHE", Path.home() / ".cache" / "capbench"))


def add_run_parser(subparsers) -> None:
    from capbench import device

    p = subparsers.add_parser(
        "run", help="run a grid of (task, method, sparsity, seed) cells and record results"
    )
    # The grid flags (tasks ... kd) default to None here: capbench.gridfile.GRID_KEYS holds their defaults, so
    # that a flag given beside --grid can be told from one left out.
    p.add_argument("--tasks", help="comma-separated task names (capbench ls tasks); or give --grid")
    p.add_argument(
        "--methods",
        help="comma-separated methods (capbench ls methods; default magnitude); every (task, seed) also gets "
        "its dense reference, and `dense` alone runs only those",
    )
    p.add_argument("--sparsity", help="fractions of prunable weights removed, in [0, 1) (default 0.5,0.9)")
    p.add_argument("--seeds", help="comma-separated seeds (default 0)")
    p.add_argument(
        "--grid",
        metavar="FILE",
        help="run the union of a grid file's blocks (each sets tasks, methods, sparsity, seeds, options, "
        "probes, speed; capbench/gridfile.py) instead of one --tasks x --methods product",
    )
    p.add_argument("--preset", default="default", help="smoke | default | paper (capbench ls presets)")
    p.add_argument("--model", help="hub id or local directory (default: the preset's model)")
    p.add_argument(
        "--data-dir", help="local GLUE data (hub-schema jsonl/parquet or glue_data TSV); default: hub"
    )
    p.add_argument("--out", default="runs/latest", help="run directory: records/ and models/ go here")
    p.add_argument("--cache-dir", type=Path, default=None, help="tokenized data, dense teachers, CAP banks")
    p.add_argument("--epochs", type=float, help="passes over the train split (replaces the preset's --steps)")
    p.add_argument("--steps", type=int, help="optimizer steps per cell (replaces the preset's --epochs)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--max-train-examples", type=int)
    p.add_argument("--max-eval-examples", type=int)
    p.add_argument("--max-seq-length", type=int)
    p.add_argument(
        "--kd", choices=["on", "off"], help="logit distillation from the dense teacher (default on)"
    )
    p.add_argument("--method-option", action="append", metavar="KEY=VALUE", help="override a method default")
    p.add_argument("--cap-option", action="append", metavar="KEY=VALUE", help="override a CAP default")
    p.add_argument(
        "--probes",
        help="linear probes on every finished model: 'default' (bigram_shift and transfer qnli, qqp; "
        "docs/probes.md) or names such as bigram_shift,transfer:qnli",
    )
    p.add_argument(
        "--probe-sizes", default="1200,300,600", help="train,dev,test examples per generated probe"
    )
    p.add_argument(
        "--speed", action="store_true", default=None, help="measure kernel and model speed for every cell"
    )
    device.add_arguments(p, "part of the spec")
    p.add_argument("--shard", default=None, metavar="I/N", help="run only slice I of N of the grid")
    p.add_argument(
        "--executor", choices=["local", "ray"], default="local", help="run cells here, or as Ray tasks"
    )
    p.add_argument("--ray-address", default=None, help="Ray cluster to join (default: start a local one)")
    p.add_argument(
        "--gpus-per-cell",
        type=float,
        default=None,
        metavar="G",
        help="with --executor ray: GPUs per cell, fractions share a GPU (default: 1 on a GPU cluster, else 0)",
    )
    p.add_argument("--overwrite", action="store_true", help="rerun cells that already have a finished record")
    p.add_argument("--no-save-models", action="store_true", help="do not keep the pruned models on disk")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--checkpoint-every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="save a training checkpoint this often, so an interrupted cell resumes at its last save instead "
        "of its first step (default: capbench.checkpoint.DEFAULT_EVERY_SECONDS, 600; 0: never)",
    )
    p.add_argument(
        "--strict-data",
        action="store_true",
        help="refuse a task whose evaluation rows also occur in its train split (default: warn)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="list the cells and which are already finished; run nothing"
    )
    p.add_argument(
        "--estimate",
        action="store_true",
        help="with --dry-run: time a few training steps per task and method on --device and project the "
        "time per cell and for the grid",
    )
    p.set_defaults(handler=cmd_run)


def cmd_run(args) -> int:
    from capbench.provenance import git_commit
    from capbench.runflow import run_from_args

    git_commit()  # the commit of the code this process runs, before the checkout can change under it
    return run_from_args(args, default_cache_dir())


def add_leaderboard_parser(subparsers) -> None:
    p = subparsers.add_parser("leaderboard", help="render markdown and JSON from run records")
    p.add_argument("--runs", required=True, nargs="+", help="run directories")
    p.add_argument("--out", help="write markdown here (and the JSON beside it); default: print")
    p.add_argument(
        "--command", dest="regenerate", help="the command that regenerates these runs, for the header"
    )
    p.add_argument("--plots", action="store_true", help="also write metric-vs-sparsity and Pareto plots")
    p.add_argument(
        "--reported",
        default="builtin",
        help="YAML of numbers reported in papers (default: capbench's own reported.yaml; 'none' leaves them out)",
    )
    p.add_argument(
        "--skip-bad-records",
        action="store_true",
        help="leave out unreadable or malformed record files (the header counts them) instead of failing",
    )
    p.set_defaults(handler=cmd_leaderboard)


def cmd_leaderboard(args) -> int:
    from capbench.publish import publish

    text = publish(
        [Path(r) for r in args.runs],
        Path(args.out) if args.out else None,
        args.regenerate,
        args.plots,
        reported=args.reported,
        skip_bad_records=args.skip_bad_records,
    )
    if not args.out:
        sys.stdout.write(text)
    return 0


def add_ls_parser(subparsers) -> None:
    p = subparsers.add_parser("ls", help="list tasks, methods or presets")
    p.add_argument("what", choices=["tasks", "methods", "presets"])
    p.add_argument(
        "--preset", help="with `ls tasks`: what the preset's dense reference reaches on each task (measured)"
    )
    p.set_defaults(handler=cmd_ls)


def cmd_ls(args) -> int:
    if args.what == "tasks":
        from capbench.presets import get_preset
        from capbench.tasks import all_tasks

        preset = get_preset(args.preset) if getattr(args, "preset", None) else None
        for name, task in all_tasks().items():
            kind = "regression" if task.regression else f"{task.num_labels} labels"
            line = f"{name:6s} {kind:10s} main={task.main_metric:22s} eval={','.join(task.eval_splits)}"
            if preset is not None:
                if preset.no_signal:
                    line += f"  [{preset.name}: NO SIGNAL on any task]"
                else:
                    found = preset.signal_of(name)
                    line += f"  [{preset.name}: {found.describe() if found else 'not measured'}]"
            print(line)
    elif args.what == "methods":
        from capbench.methods import all_methods, criterion_of
        from capbench.pruning.pruners import get_method, regime

        for name, description in sorted(all_methods().items()):
            method = get_method(criterion_of(name))
            where = regime(method.name, method.defaults)  # the regime its defaults run in
            source = f"; source: {method.source}" if method.source and not name.startswith("cap_") else ""
            print(f"{name:16s} [{where}] {description}{source}")
        print(
            f"{'dense':16s} [reference] the dense fine-tuned model (the KD teacher) of each (task, seed); always run"
        )
    else:
        from capbench.presets import PRESETS

        for name, preset in PRESETS.items():
            print(f"{name:8s} {preset.model}: {preset.description}")
            for row in preset.method_options:  # method options the preset sets (per task, cited)
                print(f"{'':8s}   {row.describe()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="capbench", description=__doc__)
    parser.add_argument("--version", action="version", version=f"capbench {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_run_parser(subparsers)
    add_leaderboard_parser(subparsers)
    add_ls_parser(subparsers)
    from capbench import compare, migrate
    from capbench.probing import cli as probing_cli
    from capbench.speed import cli as speed_cli

    for module in (probing_cli, speed_cli, compare, migrate):
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except CapbenchError as error:
        print(f"capbench: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "capbench: interrupted; finished cells are saved, rerun the same command to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
