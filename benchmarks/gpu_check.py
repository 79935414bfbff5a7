"""One prepared check of capbench on a GPU (issue 19), sized for a few minutes of a lent machine.

    python benchmarks/gpu_check.py                              # a GPU: bert-base shapes, bf16
    python benchmarks/gpu_check.py --device cpu --shape tiny    # the same code on CPU (the slow tests)

In order, each part's results under ``--out`` (JSON) and one short table printed last:
1. the ``gpu``-marked tests (``tests/test_gpu.py``: every assertion on every available device), through
   pytest when it is importable;
2. a smoke cell of every method (the one-shot control included) through ``capbench.runner.run_cell`` on the
   device and precision: a few steps, synthetic rows, status, achieved sparsity, peak memory;
3. training throughput of a bert-base-shaped model at 32x128: dense, masked (magnitude 0.9) and CAP
   (cap_magnitude) steps in tokens/s and as ratios to dense (``capbench.training.train``; warm-up excluded);
4. speed: every kernel format (dense, CSR, BSR, compact, 2:4 semi-structured on CUDA) of the FFN input
   linear at 1x128, 32x128 and 128x128, and the whole-model speedup of ``capbench.speed.bench_model``, for a
   2:4 model and a 90% unstructured one (CUDA-event timing on a GPU).

Runs offline with only torch, transformers, numpy and capbench importable: models come from configs with
random weights, rows from synthetic token ids (``capbench.testing.synthetic_split``), no hub, no
``datasets``.  The numbers are a check that everything runs on the device and a first reading of the ratios,
not a benchmark result to publish.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # a bare checkout (no pip install) on the GPU machine
    sys.path.insert(0, str(REPO))

from capbench import device as devices  # noqa: E402
from capbench.estimate import StepClock  # noqa: E402
from capbench.grid import expand_grid  # noqa: E402
from capbench.methods import grid_method_specs, regime_controls  # noqa: E402
from capbench.model_identity import model_identity  # noqa: E402
from capbench.presets import get_preset  # noqa: E402
from capbench.pruning.base import pattern_mask  # noqa: E402
from capbench.runner import RunContext, TaskData, run_cell  # noqa: E402
from capbench.speed.formats import build_formats  # noqa: E402
from capbench.speed.kernels import iter_encoder_linears, time_formats  # noqa: E402
from capbench.speed.options import BenchOptions  # noqa: E402
from capbench.speed.timing import Rounds  # noqa: E402
from capbench.tasks import get_task  # noqa: E402
from capbench.testing import synthetic_split, tiny_bert_config, tiny_tokenizer  # noqa: E402
from capbench.training import TrainConfig, make_loader, train  # noqa: E402

METHODS = (
    "magnitude,movement,soft_movement,first_order,random,"
    "cap_magnitude,cap_movement,cap_soft,cap_first_order,wanda,sparsegpt,obert"
).split(",")
SHAPES = ("tiny", "bert-base")
TOKEN_COUNTS = ("1x128", "32x128", "128x128")


class SyntheticSource:
    """The data source a record names: synthetic rows, no files."""

    kind = "synthetic"
    root = "synthetic"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "root": self.root}


def model_config(shape: str, layers: int | None = None):
    """bert-base (12 layers, 768 wide, random weights) or the tests' tiny BERT; ``layers`` overrides depth."""
    from transformers import BertConfig

    config = BertConfig() if shape == "bert-base" else tiny_bert_config()
    if layers is not None:
        config.num_hidden_layers = min(config.num_hidden_layers, layers)
    return config


def save_model_dir(directory: Path, config) -> Path:
    """A random BertModel of ``config`` with the tiny word-level tokenizer, as ``--model DIR`` expects."""
    from transformers import BertModel

    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory)
    tiny_tokenizer(directory).save_pretrained(directory)
    return directory


def environment(where: torch.device, precision: str) -> dict:
    import transformers

    info = {
        **devices.describe(where),
        "precision": precision,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if where.type == "cuda":
        info["gpus"] = torch.cuda.device_count()
    return info


# ----------------------------------------------------------------------------------------------- 1. tests
def run_gpu_tests(log) -> dict:
    """``pytest -m gpu tests/test_gpu.py``: the device-parametrised tests, CUDA ones skipped without CUDA."""
    if importlib.util.find_spec("pytest") is None:
        return {"status": "not run: pytest is not importable here"}
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"]
    command += ["tests/test_gpu.py", "-o", "addopts="]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    tail = [line for line in done.stdout.splitlines() if line.strip()][-1:] or ["(no output)"]
    log(done.stdout[-4000:] + done.stderr[-2000:])
    return {
        "status": "passed" if done.returncode == 0 else "FAILED",
        "summary": tail[0],
        "seconds": time.perf_counter() - started,
    }


# ----------------------------------------------------------------------------------------------- 2. cells
def smoke_cells(where, precision, shape, work: Path, steps: int, rows: int) -> list[dict]:
    """Every method at sparsity 0.5 through ``run_cell`` on ``where``: (method, status, sparsity, ...)."""
    config = model_config(shape, layers=4)
    model_dir = save_model_dir(work / "model-cells", config)
    task = get_task("rte")
    seq = (16, 64) if shape == "bert-base" else (8, 24)
    tokenizer = tiny_tokenizer(work / "tokenizer")
    data = TaskData(
        task=task,
        tokenizer=tokenizer,
        train=synthetic_split(rows, config.vocab_size, task.num_labels, seq, seed=0),
        evals={task.eval_splits[0]: synthetic_split(max(16, rows // 4), config.vocab_size, 2, seq, seed=1)},
        provenance={},
    )
    preset = get_preset("smoke")
    cfg = TrainConfig(
        max_steps=steps, batch_size=16, learning_rate=3e-4, warmup_ratio=0.1, precision=precision
    )
    base = dict(
        model=str(model_dir),
        preset="smoke",
        max_train_examples=None,
        max_eval_examples=None,
        max_seq_length=128,
        data_sample_seed=0,
        train=cfg.to_dict(),
        model_identity=model_identity(str(model_dir)),
    )
    specs = grid_method_specs(METHODS, {}, True, {}, [0.5])
    cells = expand_grid(
        base,
        {task.name: {"synthetic": data.train._fingerprint}},
        METHODS,
        [0.5],
        [0],
        specs,
        cell_options=lambda t, m, s, options: preset.cell_options(t, m, s, options, {}),
        controls=regime_controls(specs, True),
    )
    ctx = RunContext(
        out_dir=work / "run",
        cache_dir=work / "cache",
        source=SyntheticSource(),
        save_models=False,
        show_progress=False,
        device=where,
    )
    key = (task.name, str(model_dir), None, None, 128)
    ctx._data[key] = data  # what prepare_data would have loaded and tokenized
    (work / "run" / "records").mkdir(parents=True, exist_ok=True)
    out = []
    for spec in cells:
        label = spec.method + ("" if not spec.method_options.get("oneshot") else " (one-shot control)")
        if where.type == "cuda":
            torch.cuda.reset_peak_memory_stats(where)
        started = time.perf_counter()
        try:
            record = run_cell(spec, ctx).to_dict()
            row = {
                "method": label,
                "status": record["status"],
                "steps": record["train"]["steps"],
                "sparsity": (record.get("sparsity") or {}).get("linear"),
                "metric": record["main_metric"]["value"],
                "device": record["device"].get("name"),
                "peak_gib": (record["device"].get("peak_memory_bytes") or 0) / 2**30
                if where.type == "cuda"
                else None,
            }
        except Exception as exc:  # one failing method must not hide the others
            row = {
                "method": label,
                "status": f"FAILED: {type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
        row["seconds"] = time.perf_counter() - started
        out.append(row)
    return out


# ------------------------------------------------------------------------------------------ 3. throughput
def throughput(where, precision, shape, work: Path, steps: int, warmup: int) -> dict:
    """Tokens per second of dense, masked (magnitude 0.9) and CAP (cap_magnitude) training steps on the same
    32x128 batches; the first ``warmup`` steps (allocator, kernels' autotuning) are not counted."""
    from transformers import BertForSequenceClassification

    from capbench.cap.config import CapConfig
    from capbench.cap.loss import CapContext, CapLoss
    from capbench.distill import DistillationLoss, KDConfig
    from capbench.pruning.pruners import make_pruner
    from capbench.training import eval_loader

    config = model_config(shape)
    config.num_labels = 2
    seq = 128 if shape == "bert-base" else 32
    tokenizer = tiny_tokenizer(work / "tokenizer")
    rows = synthetic_split(32 * (steps + warmup), config.vocab_size, 2, (seq, seq), seed=2)
    cfg = TrainConfig(max_steps=steps + warmup, batch_size=32, learning_rate=1e-4, precision=precision)
    torch.manual_seed(0)
    base = BertForSequenceClassification(config).to(where)
    teacher = copy.deepcopy(base).eval()

    def run(name: str) -> dict:
        model = copy.deepcopy(base)
        loader = make_loader(rows, tokenizer, 32, shuffle=True, seed=0, device=where)
        pruner, loss_fn = None, None
        if name != "dense":
            pruner = make_pruner("magnitude", 0.9)
            loss_fn = DistillationLoss(teacher, KDConfig())
        if name == "cap":
            bank_loader, _ = eval_loader(rows, tokenizer, 128, where)
            cap = CapConfig.from_options({})
            loss_fn = CapLoss(model, cap, CapContext(teacher=teacher, loader=bank_loader, seed=0))
        clock = StepClock()
        if where.type == "cuda":
            torch.cuda.reset_peak_memory_stats(where)
        train(model, loader, cfg, loss_fn=loss_fn, pruner=pruner, progress=clock)
        counted = clock.times[warmup - 1 :]
        seconds = (counted[-1] - counted[0]) / max(1, len(counted) - 1)
        if hasattr(loss_fn, "close"):
            loss_fn.close()
        return {
            "seconds_per_step": seconds,
            "tokens_per_second": 32 * seq / seconds,
            "peak_gib": torch.cuda.max_memory_allocated(where) / 2**30 if where.type == "cuda" else None,
        }

    out = {name: run(name) for name in ("dense", "masked", "cap")}
    for row in out.values():
        row["x_dense_time"] = row["seconds_per_step"] / out["dense"]["seconds_per_step"]
    return {"shape": f"{shape} 32x{seq}", "precision": precision, "steps": steps, "variants": out}


# ----------------------------------------------------------------------------------------------- 4. speed
def _pruned(model, kind: str):
    """A copy with every encoder linear pruned: ``2:4`` (two of every four along the input) or ``0.9``
    (the smallest 90% of each matrix)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for _, module in iter_encoder_linears(model):
            w = module.weight
            if kind == "2:4":
                keep = pattern_mask(w.abs().float(), 0.5, "2:4")
            else:
                k = int(round(0.9 * w.numel()))
                threshold = w.abs().flatten().float().kthvalue(k).values
                keep = w.abs().float() > threshold
            w.mul_(keep.to(w.dtype))
    return model


def speed(where, precision, shape, quick: bool) -> dict:
    """Kernel formats of the first FFN input linear, and ``bench_model`` whole-model speedups, for a 2:4 and a
    90% unstructured model (weights in bf16 on a GPU: the 2:4 kernels take half precision; fp32 on CPU)."""
    from transformers import BertModel

    from capbench.speed.bench import bench_model, place

    torch.manual_seed(0)
    timed = precision if where.type == "cuda" else "fp32"
    dense = place(BertModel(model_config(shape), add_pooling_layer=False), where, timed)
    dtype = next(dense.parameters()).dtype
    counts = TOKEN_COUNTS if shape == "bert-base" else ("1x32", "8x32", "32x32")
    rounds = Rounds(repeats=9 if quick else 21, min_repeats=5, warmup=2, budget=5.0)
    options = BenchOptions(
        token_counts=counts,
        model_token_counts=counts,
        repeats=9 if quick else 21,
        min_repeats=3 if quick else 6,
        layer_min_repeats=3 if quick else 9,
        model_min_seconds=0.0 if quick else 3.0,
        model_budget=5.0 if quick else 15.0,
        layer_budget=0.3,
        breakdown=False,
        threads=None if where.type == "cuda" else 1,
    )
    out = {"dtype": str(dtype).replace("torch.", ""), "token_counts": list(counts), "models": {}}
    for kind in ("2:4", "0.9"):
        pruned = _pruned(dense, kind)
        ffn_in = [(n, m) for n, m in iter_encoder_linears(pruned) if "intermediate" in n][0]
        formats = build_formats(ffn_in[1].weight, ffn_in[1].bias)
        timed = time_formats(formats, counts, rounds)
        layer_rows = {
            fmt: {label: timed[label]["results"].get(fmt, {}).get("speedup") for label in counts}
            for fmt in formats
        }
        unavailable = {fmt: f.reason for fmt, f in formats.items() if not f.available}
        result = bench_model(pruned, dense, options)
        summary = result["summary"]
        out["models"][kind] = {
            "layer": ffn_in[0],
            "layer_speedups": layer_rows,
            "unavailable": unavailable,
            "whole_model": {
                label: row["measured_speedup"] for label, row in summary.get("shapes", {}).items()
            },
            "format": summary.get("format"),
        }
    return out


# ----------------------------------------------------------------------------------------------- report
def _fmt(value, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def table(results: dict) -> str:
    env = results["environment"]
    lines = [
        f"gpu_check: {env.get('name')} ({env.get('type')}"
        + (f", capability {env['capability']}" if "capability" in env else "")
        + f"), torch {env['torch']}, transformers {env['transformers']}, precision {env['precision']}"
    ]
    tests = results.get("tests")
    if tests:
        lines.append(f"tests -m gpu: {tests['status']} {tests.get('summary', '')}")
    cells = results.get("cells", [])
    if cells:
        ok = sum(1 for c in cells if c["status"] == "done")
        lines.append(f"cells: {ok}/{len(cells)} done")
        for c in cells:
            lines.append(
                f"  {c['method']:34s} {c['status'][:60]:8s} sparsity {_fmt(c.get('sparsity'), '.3f'):>6s} "
                f"steps {c.get('steps', '-')!s:>3s} {c['seconds']:6.1f}s peak {_fmt(c.get('peak_gib'), '.2f')} GiB"
            )
    tp = results.get("throughput")
    if tp:
        lines.append(
            f"training throughput ({tp['shape']}, {tp['precision']}, {tp['steps']} steps after warm-up):"
        )
        for name, row in tp["variants"].items():
            lines.append(
                f"  {name:8s} {row['tokens_per_second']:10.0f} tokens/s  {row['x_dense_time']:5.2f}x dense time"
                f"  peak {_fmt(row['peak_gib'], '.2f')} GiB"
            )
    sp = results.get("speed")
    if sp:
        counts = sp["token_counts"]
        lines.append(f"speed ({sp['dtype']}; speedup over dense, per layer then whole model):")
        lines.append(f"  {'model':5s} {'format':22s} " + " ".join(f"{c:>8s}" for c in counts))
        for kind, row in sp["models"].items():
            for fmt, per in row["layer_speedups"].items():
                if fmt in row["unavailable"]:
                    continue
                lines.append(f"  {kind:5s} {fmt:22s} " + " ".join(f"{_fmt(per[c]):>8s}" for c in counts))
            whole = row["whole_model"]
            lines.append(
                f"  {kind:5s} {'whole model: ' + str(row['format'])[:9]:22s} "
                + " ".join(f"{_fmt(whole.get(c)):>8s}" for c in counts)
            )
            for fmt, why in row["unavailable"].items():
                if fmt.startswith("semi"):
                    lines.append(f"  {kind:5s} {fmt}: unavailable ({why[:70]})")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", default="auto", help="auto (bf16 on a GPU) | fp32 | bf16 | fp16")
    parser.add_argument(
        "--shape", choices=SHAPES, default=None, help="default: bert-base on GPU, tiny on CPU"
    )
    parser.add_argument("--out", default=None, help="folder for gpu_check.json (default: a temp folder)")
    parser.add_argument("--parts", default="tests,cells,throughput,speed", help="which parts to run")
    parser.add_argument("--steps", type=int, default=None, help="throughput steps after warm-up")
    args = parser.parse_args(argv)
    try:
        where = devices.resolve_device(args.device)
        precision = devices.resolve_precision(args.precision, where)
    except Exception as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    shape = args.shape or ("bert-base" if where.type == "cuda" else "tiny")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - {"tests", "cells", "throughput", "speed"}
    if unknown:
        print(
            f"gpu_check: --parts {','.join(sorted(unknown))}: expected tests, cells, throughput, speed",
            file=sys.stderr,
        )
        return 2
    if where.type == "cpu":
        torch.set_num_threads(1)
    import transformers

    transformers.logging.set_verbosity_error()  # each cell's "classifier newly initialised" report
    out_dir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu_check-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "gpu_check.log"

    def log(text: str) -> None:
        with log_path.open("a") as handle:
            handle.write(text.rstrip() + "\n")

    results: dict = {"environment": environment(where, precision), "shape": shape}
    started = time.perf_counter()
    quick = shape == "tiny"
    with tempfile.TemporaryDirectory(prefix="gpu_check-work-") as tmp:
        work = Path(tmp)
        for part in parts:
            began = time.perf_counter()
            print(f"gpu_check: {part} ...", flush=True)
            try:
                if part == "tests":
                    results["tests"] = run_gpu_tests(log)
                elif part == "cells":
                    results["cells"] = smoke_cells(where, precision, shape, work, steps=4, rows=64)
                elif part == "throughput":
                    steps = args.steps or (20 if shape == "bert-base" else 4)
                    results["throughput"] = throughput(where, precision, shape, work, steps, warmup=3)
                elif part == "speed":
                    results["speed"] = speed(where, precision, shape, quick)
            except Exception as exc:
                results[part] = {"error": f"{type(exc).__name__}: {exc}"}
                log(traceback.format_exc())
                print(f"gpu_check: {part} FAILED: {type(exc).__name__}: {exc}", flush=True)
            print(f"gpu_check: {part} {time.perf_counter() - began:.1f}s", flush=True)
    results["seconds"] = time.perf_counter() - started
    (out_dir / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"gpu_check: {results['seconds']:.0f}s in all; results in {out_dir / 'gpu_check.json'}")
    print(table({k: v for k, v in results.items() if not (isinstance(v, dict) and "error" in v)}))
    failed = [p for p in parts if isinstance(results.get(p), dict) and "error" in results[p]]
    failed += [c["method"] for c in results.get("cells", []) if c["status"] != "done"]
    if isinstance(results.get("tests"), dict) and results["tests"].get("status") == "FAILED":
        failed.append("tests")
    if failed:
        print(f"gpu_check: FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
