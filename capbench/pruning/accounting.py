"""Sparsity accounting for records.

``dense_counts(model)`` takes the counts of the dense model (a JSON-serialisable dict).  Call it before
pruning, or on a model that ``finalize`` compacted: the original shapes are recovered from
``config.capbench_structure`` and the config's dense ``num_attention_heads``/``intermediate_size``.

``sparsity_report(model, dense_reference, target)``; ``dense_reference`` is the dense model, a
``dense_counts`` dict, or None (derive it from ``model`` itself, which is right for masked and compacted
models alike).  A weight counts as pruned when it is physically removed, or when it is an exact zero in a
pruned linear weight (zeros elsewhere, such as zero-initialised biases, are not pruning):

* ``linear``  = 1 - nonzero(pruned linear weights) / dense count of those weights (biases excluded);
* ``encoder`` = 1 - kept(encoder params) / dense encoder params  (all of the encoder layers' module:
  ``base_model.encoder``, DistilBERT's ``base_model.transformer``; see ``capbench.layout``);
* ``model``   = 1 - kept(all params) / dense params               (embeddings, pooler, classifier included);
  where kept = params present - zeros in the pruned linear weights;
* ``flops_ratio`` = nonzero linear-layer MACs per token / dense ones, over the encoder:
  ``sum_layers [nnz(Q, K, V, O, FFN in, FFN out) + 2 * seq_len * kept_heads * head_size]`` divided by the
  same with dense weights and all heads.  The second term is the attention score (``QK^T``) and context
  (``AV``) matmuls per token, counted dense but only for kept heads (a head is kept if its columns of the
  attention output projection are not all zero).  Embeddings, pooler, classifier, biases, softmax, LayerNorm
  and activations are not counted.  ``seq_len`` defaults to 128, the usual GLUE maximum.
* ``granularity``: how far below ``target`` the achieved ``linear`` sparsity may fall and still count as on
  target: 0.005 for unstructured masks, one attention head's share of the pruned linear weights for
  structured pruning (``structured=True``);
* ``heads_per_layer`` / ``ffn_per_layer``: heads and FFN neurons still contributing (their columns of the
  attention / FFN output projection not all zero); physical widths for a compacted model.
"""

from __future__ import annotations

import torch
from torch import nn

from capbench.layout import Layout, prunable_linears
from capbench.pruning.compact import STRUCTURE_KEY, layer_shapes

DEFAULT_SEQ_LEN = 128
# How far below its target an unstructured mask's achieved sparsity may fall (thresholds tie, rounding of
# per-matrix counts); structured pruning's tolerance is one head's share of the pruned linear weights.
UNSTRUCTURED_GRANULARITY = 0.005


class NonFiniteWeights(ValueError):
    """A pruned linear weight holds nan or inf: accounting refuses to count it as kept or pruned."""


def _unique_params(module: nn.Module) -> list[torch.Tensor]:
    return list({id(p): p for p in module.parameters()}.values())


def _present(module: nn.Module, skip: set[int]) -> int:
    return sum(p.numel() for p in _unique_params(module) if id(p) not in skip)


def dense_counts(model: nn.Module) -> dict:
    """Parameter counts and layer shapes of the dense model (JSON-serialisable)."""
    linears = [m for _, m in prunable_linears(model)]
    shapes = layer_shapes(model)
    counts = {
        "linear_weights": sum(m.weight.numel() for m in linears),
        "encoder_params": _present(Layout(model).encoder, set()),
        "model_params": _present(model, set()),
        "layers": [
            {"heads": s["heads"], "head_size": s["head_size"], "hidden": q.in_features, "ffn": s["ffn"]}
            for s, q in zip(shapes, linears[::6], strict=True)
        ],
    }
    structure = getattr(getattr(model, "config", None), STRUCTURE_KEY, None)
    if structure:  # a compacted model: add back what compaction removed
        heads0, ffn0 = Layout(model).dense_shape()
        removed_linear = removed_params = 0
        for layer in counts["layers"]:
            h, d = layer["hidden"], layer["head_size"]
            rh, rf = heads0 - layer["heads"], ffn0 - layer["ffn"]
            removed_linear += 4 * rh * d * h + 2 * rf * h
            removed_params += 4 * rh * d * h + 3 * rh * d + 2 * rf * h + rf  # + Q/K/V and FFN-in biases
            layer["heads"], layer["ffn"] = heads0, ffn0
        counts["linear_weights"] += removed_linear
        counts["encoder_params"] += removed_params
        counts["model_params"] += removed_params
    return counts


def _kept_heads(lay: Layout, layer: nn.Module) -> int:
    heads, size = lay.heads(layer)
    out = lay.get(layer, "attn_out")
    weight = out.weight * out.mask if hasattr(out, "mask") else out.weight
    cols = weight.detach().reshape(weight.shape[0], heads, size)
    return int((cols != 0).any(dim=2).any(dim=0).sum())


def _kept_ffn(lay: Layout, layer: nn.Module) -> int:
    """FFN neurons whose column of the FFN output projection is not all zero."""
    return int((_effective(lay.get(layer, "ffn_out")) != 0).any(dim=0).sum())


def _effective(module: nn.Module) -> torch.Tensor:
    weight = module.weight.detach()
    mask = getattr(module, "mask", None)
    return weight * mask if mask is not None else weight


def _check_finite(named) -> None:
    with torch.no_grad():
        for name, module in named:
            if not bool(_effective(module).isfinite().all()):
                # nan != 0, so a diverged weight would count as kept and hide the fault as low sparsity
                raise NonFiniteWeights(
                    f"{name}.weight holds nan or inf; sparsity is undefined for a diverged model"
                )


@torch.no_grad()
def _macs(lay: Layout, linears: list, dense: dict, seq_len: int) -> tuple[int, int, list[int]]:
    """(dense MACs per token, kept MACs per token, kept heads per layer) over the encoder."""
    dense_macs = kept_macs = 0
    heads_kept = []
    for i, layer in enumerate(lay.layers):
        ref = dense["layers"][i]
        dense_macs += 4 * ref["hidden"] * ref["heads"] * ref["head_size"] + 2 * ref["hidden"] * ref["ffn"]
        dense_macs += 2 * seq_len * ref["heads"] * ref["head_size"]
        kept = _kept_heads(lay, layer)
        heads_kept.append(kept)
        kept_macs += sum(int(_effective(m).count_nonzero()) for m in linears[6 * i : 6 * i + 6])
        kept_macs += 2 * seq_len * kept * lay.heads(layer)[1]
    return dense_macs, kept_macs, heads_kept


def sparsity_granularity(dense: dict, structured: bool) -> float:
    """How far below target an achieved sparsity may fall: one head's share of the pruned linear weights
    for structured pruning (the smallest step that matters most), else UNSTRUCTURED_GRANULARITY."""
    if not structured:
        return UNSTRUCTURED_GRANULARITY
    return max(4 * r["hidden"] * r["head_size"] for r in dense["layers"]) / dense["linear_weights"]


def sparsity_report(
    model: nn.Module,
    dense_reference: nn.Module | dict | None,
    target: float,
    *,
    seq_len: int = DEFAULT_SEQ_LEN,
    structured: bool = False,
) -> dict:
    """Achieved sparsities of ``model`` against its dense reference (see module docstring).

    Raises NonFiniteWeights when a pruned linear weight holds nan or inf.
    """
    if isinstance(dense_reference, dict):
        dense = dense_reference
    else:
        dense = dense_counts(model if dense_reference is None else dense_reference)
    named = prunable_linears(model)
    _check_finite(named)
    linears = [m for _, m in named]
    # Movement scores are training state, not model weights: leave them out of the present counts.
    skip = {id(m.scores) for m in linears if getattr(m, "scores", None) is not None}
    with torch.no_grad():
        present_linear = sum(m.weight.numel() for m in linears)
        nonzero_linear = sum(int(_effective(m).count_nonzero()) for m in linears)
    zeros = present_linear - nonzero_linear
    lay = Layout(model)
    encoder_kept = _present(lay.encoder, skip) - zeros
    model_kept = _present(model, skip) - zeros
    dense_macs, kept_macs, heads_kept = _macs(lay, linears, dense, seq_len)
    return {
        "target": float(target),
        "granularity": sparsity_granularity(dense, structured),
        "linear": 1.0 - nonzero_linear / dense["linear_weights"],
        "encoder": 1.0 - encoder_kept / dense["encoder_params"],
        "model": 1.0 - model_kept / dense["model_params"],
        "flops_ratio": kept_macs / dense_macs,
        "flops_seq_len": int(seq_len),
        "heads_per_layer": heads_kept,
        "ffn_per_layer": [_kept_ffn(lay, layer) for layer in lay.layers],
        "counts": {
            "linear_dense": dense["linear_weights"],
            "linear_nonzero": nonzero_linear,
            "encoder_dense": dense["encoder_params"],
            "encoder_kept": encoder_kept,
            "model_dense": dense["model_params"],
            "model_kept": model_kept,
            "macs_per_token_dense": dense_macs,
            "macs_per_token_kept": kept_macs,
        },
    }
