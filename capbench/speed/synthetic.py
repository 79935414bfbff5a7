"""Synthetic weights and masks at real layer shapes, for kernel benchmarks without a trained model.

`weight_like_trained` gives rows and columns different scales (log-normal), as in trained BERT layers, so
magnitude pruning leaves an uneven number of non-zeros per row, unlike a uniformly random mask.
"""

from __future__ import annotations

import torch

MASK_KINDS = ("random", "magnitude", "block4", "block16", "rows")

# (name, out_features, in_features) of the encoder linears of one layer.
BERT_BASE_SHAPES = (
    ("bert-base.attn", 768, 768),
    ("bert-base.ffn_in", 3072, 768),
    ("bert-base.ffn_out", 768, 3072),
)
MINILM_SHAPES = (("minilm.attn", 384, 384), ("minilm.ffn_in", 1536, 384), ("minilm.ffn_out", 384, 1536))


def weight_like_trained(out_features: int, in_features: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g) * 0.02
    rows = torch.exp(0.5 * torch.randn(out_features, 1, generator=g))
    cols = torch.exp(0.5 * torch.randn(1, in_features, generator=g))
    return w * rows * cols


def _keep_top(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask keeping the round((1-s) * n) highest scores (ties broken by position)."""
    n = scores.numel()
    keep = n - int(round(sparsity * n))
    mask = torch.zeros(n, dtype=torch.bool)
    if keep > 0:
        mask[torch.topk(scores.flatten(), keep).indices] = True
    return mask.reshape(scores.shape)


def make_mask(weight: torch.Tensor, sparsity: float, kind: str = "random", seed: int = 0) -> torch.Tensor:
    """A boolean keep-mask of the given kind and sparsity for `weight`.

    - ``random``: uniformly random unstructured mask;
    - ``magnitude``: unstructured, keep the largest |w| (uneven per row on `weight_like_trained`);
    - ``block{b}``: whole b x b blocks, by block L2 norm (what BSR needs to pay off);
    - ``rows``: structured, whole output rows by row L2 norm (neurons / heads removed).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    out_features, in_features = weight.shape
    if kind == "random":
        g = torch.Generator().manual_seed(seed)
        return _keep_top(torch.rand(weight.shape, generator=g), sparsity)
    if kind == "magnitude":
        return _keep_top(weight.abs(), sparsity)
    if kind.startswith("block"):
        b = int(kind[len("block") :])
        if out_features % b or in_features % b:
            raise ValueError(f"block size {b} does not divide {out_features}x{in_features}")
        norms = weight.reshape(out_features // b, b, in_features // b, b).pow(2).sum(dim=(1, 3))
        keep = _keep_top(norms, sparsity)
        return keep.repeat_interleave(b, 0).repeat_interleave(b, 1)
    if kind == "rows":
        keep = _keep_top(weight.pow(2).sum(dim=1), sparsity)
        return keep[:, None].expand(out_features, in_features).clone()
    raise ValueError(f"unknown mask kind {kind!r}; known: {MASK_KINDS}")
