"""`capbench run --speed`: time a finished cell's model against its dense model (`record["speed"]`)."""

from __future__ import annotations

import sys

from capbench.speed.options import DEFAULT_MODEL_TOKEN_COUNTS, DEFAULT_TOKEN_COUNTS, BenchOptions

# Per-cell settings: the token counts of the issue, 5 interleaved rounds, at most ~2 s of rounds per layer
# and token count once 3 rounds are done. About 2-5 minutes per MiniLM cell on 2 shared cores.
RUN_OPTIONS = BenchOptions(
    token_counts=DEFAULT_TOKEN_COUNTS,
    model_token_counts=DEFAULT_MODEL_TOKEN_COUNTS,
    repeats=5,
    warmup=1,
    layer_budget=2.0,
)


def speed_record(record: dict, spec, ctx) -> dict:
    """`bench_model` on the cell's saved model vs `record["dense_model_dir"]` (None: itself, run densely)."""
    from capbench.models import load_classifier
    from capbench.speed.bench import bench_model
    from capbench.tasks import get_task

    num_labels = get_task(spec.task).num_labels
    model = load_classifier(record["model_dir"], num_labels)
    dense_dir = record.get("dense_model_dir")
    dense = load_classifier(dense_dir, num_labels) if dense_dir else None
    progress = None
    if getattr(ctx, "show_progress", False):
        cell = record.get("cell_id", "")
        progress = lambda msg: print(f"  [speed {cell}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    return bench_model(model, dense, RUN_OPTIONS, progress=progress)
