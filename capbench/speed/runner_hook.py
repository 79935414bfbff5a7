"""`capbench run --speed`: time a finished cell's model against its dense model (`record["speed"]`), on
sentences of the cell's own evaluation split, on the run's device; on a GPU with the weights in the cell's precision
(bf16 weights for a bf16 cell) and at batch 128 too."""

from __future__ import annotations

import sys
from dataclasses import replace

import torch

from capbench.speed.options import BenchOptions, parse_token_count

# Per-cell settings: bench_model's defaults (threads pinned to 1, 2 warm-ups,
# 6-40 rounds until the spread is under 3%, 0.75 s per layer and calibration shape, 40 s per whole-model
# shape) on 32 evaluation sentences. About 1-3 minutes per MiniLM cell on 2 cores.
RUN_OPTIONS = BenchOptions()


def speed_record(record: dict, spec, ctx) -> dict:
    """`bench_model` on the cell's saved model vs `record["dense_model_dir"]` (None: itself, run densely),
    timed on `RUN_OPTIONS.sentences` rows of the task's main evaluation split from the run's data source, cut
    at the cell's `max_seq_length`."""
    from capbench.models import load_classifier, load_tokenizer
    from capbench.speed.bench import bench_model, place
    from capbench.speed.inputs import task_sentences
    from capbench.speed.options import model_token_counts_for
    from capbench.tasks import get_task

    num_labels = get_task(spec.task).num_labels
    where = getattr(ctx, "device", None) or torch.device("cpu")
    # A GPU cell's speed is timed in its half precision (what it deploys as; the 2:4 kernels need it); on a
    # CPU in fp32, which is what runs fast there (bf16 is emulated on CPUs without AVX-512).
    precision = (
        (getattr(spec, "train", None) or {}).get("precision", "fp32") if where.type == "cuda" else "fp32"
    )
    model = place(load_classifier(record["model_dir"], num_labels), where, precision)
    dense_dir = record.get("dense_model_dir")
    dense = place(load_classifier(dense_dir, num_labels), where, precision) if dense_dir else None
    tokenizer = load_tokenizer(record["model_dir"])
    options = replace(
        RUN_OPTIONS, model_token_counts=model_token_counts_for(where, RUN_OPTIONS.model_token_counts)
    )
    seq = getattr(spec, "max_seq_length", None)
    if seq:  # the sentences are cut where the cell's training and evaluation cut them
        options = replace(options, model_token_counts=tuple(f"{b}x{seq}" for b in _batches(options)))
    sentences = task_sentences(ctx.source, spec.task, tokenizer, options.sentences, options.seed)
    progress = None
    if getattr(ctx, "show_progress", False):
        cell = record.get("cell_id", "")
        progress = lambda msg: print(f"  [speed {cell}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    from capbench.quiet import quiet_window

    # the other workers of this machine pause while it times (capbench.quiet); its load reading says if they did
    with quiet_window(getattr(ctx, "cache_dir", None)) as window:
        result = bench_model(model, dense, options, progress=progress, sentences=sentences)
    return {**result, "quiet_window": window}


def _batches(options: BenchOptions) -> list[int]:
    return [parse_token_count(label)[0] for label in options.model_token_counts]
