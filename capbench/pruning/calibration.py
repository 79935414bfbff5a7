"""Calibration data and layer-by-layer input statistics for the one-shot post-training pruners.

Wanda (locuslab/wanda ``lib/prune.py::prune_wanda``) and SparseGPT (IST-DASLab/sparsegpt
``opt.py::opt_sequential``) prune a model one transformer layer at a time: the calibration inputs run through
the layers already pruned, hooks on the current layer's linears gather statistics of their inputs (squared
input norms for Wanda, the Hessian X Xᵀ for SparseGPT), every linear of that layer is pruned from the
statistics gathered on the unpruned layer, and the next layer sees the outputs of the pruned one.
``sequential_calibration`` does the same on an encoder through ``capbench.layout``: for layer i it runs the
model on the calibration batches and stops at the end of layer i (the earlier layers already pruned), so
it needs no family-specific code to carry hidden states between layers.  Padding positions are dropped
before the statistics see a token (the reference code calibrates on unpadded 2,048-token segments).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from capbench.layout import ROLES, Layout
from capbench.training import make_loader, model_inputs

# Calibration rows per one-shot method: 128 sequences in the Wanda and SparseGPT code (``--nsamples 128``,
# locuslab/wanda main.py; IST-DASLab/sparsegpt opt.py).  Their sequences are 2,048-token C4 segments; GLUE
# rows are 10-60 tokens, so 128 rows give a few thousand tokens: raise ``calibration_size`` for more.
DEFAULT_CALIBRATION_SIZE = 128


def calibration_rows(dataset, size: int, seed: int):
    """A seeded sample of ``size`` rows of a tokenized split (all of them when it is smaller).

    The sample is the first ``size`` rows of a permutation drawn with ``seed`` (the cell's seed), so the
    same cell calibrates on the same rows; returns a ``datasets.Dataset``."""
    size = min(int(size), len(dataset))
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(dataset), generator=generator)[:size].tolist()
    return dataset.select(sorted(order))


def calibration_batches(dataset, tokenizer, size: int, seed: int, batch_size: int = 32) -> list[dict]:
    """The calibration sample as padded batches (``calibration_rows``, in row order)."""
    rows = calibration_rows(dataset, size, seed)
    return list(make_loader(rows, tokenizer, batch_size, shuffle=False))


class _Stop(Exception):
    """Raised by a hook at the end of the layer being calibrated: the rest of the forward is not needed."""


def _real_tokens(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """(tokens, features) of a (batch, seq, features) input, padding positions dropped."""
    if keep is None or x.dim() != 3 or keep.shape != x.shape[:2]:
        return x.reshape(-1, x.shape[-1])
    return x[keep]


@torch.no_grad()
def sequential_calibration(
    model: nn.Module,
    batches: list[dict],
    new_stats: Callable[[nn.Module], object],
    solve: Callable[[str, nn.Module, object], None],
) -> dict:
    """Prune ``model``'s encoder one layer at a time from its calibration inputs.

    For each encoder layer, in order: ``new_stats(module)`` makes an accumulator per prunable linear (an
    object with ``add(x, samples)``, x of shape (tokens, in_features), padding dropped, ``samples`` the rows
    of the batch), every batch runs through the model up to the end of that layer (the layers before it
    already pruned), then ``solve(role, module, stats)`` prunes each linear in place (its mask, and its
    weight for SparseGPT).  The model is in eval mode meanwhile (no dropout) and returns to its mode.

    Returns ``{"layers", "batches", "rows", "tokens", "forward_passes", "seconds"}``: ``forward_passes`` counts
    one partial forward per (layer, batch); ``tokens`` counts the real tokens of the sample once."""
    lay = Layout(model)
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    passes = 0
    state: dict = {"keep": None}
    try:
        for layer in lay.layers:
            modules = [(role, lay.get(layer, role)) for role in ROLES]
            stats = {role: new_stats(module) for role, module in modules}
            handles = []
            for role, module in modules:

                def observe(_module, inputs, role=role, stats=stats):
                    stats[role].add(_real_tokens(inputs[0], state["keep"]).float(), state["samples"])

                handles.append(module.register_forward_pre_hook(observe))

            def stop(*_):
                raise _Stop

            handles.append(layer.register_forward_hook(stop))
            try:
                for batch in batches:
                    mask = batch.get("attention_mask")
                    state["keep"] = mask.bool() if mask is not None else None
                    state["samples"] = int(batch["input_ids"].shape[0])
                    try:
                        model(**model_inputs(batch, model))
                    except _Stop:
                        pass
                    passes += 1
            finally:
                for handle in handles:
                    handle.remove()
            for role, module in modules:
                solve(role, module, stats[role])
    finally:
        model.train(was_training)
    tokens = sum(
        int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel() for b in batches
    )
    return {
        "layers": len(lay.layers),
        "batches": len(batches),
        "rows": sum(int(b["input_ids"].shape[0]) for b in batches),
        "tokens": tokens,
        "forward_passes": passes,
        "seconds": time.perf_counter() - started,
    }
