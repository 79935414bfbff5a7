"""The measured Amdahl ceiling: how fast the model could get if its pruned linears cost nothing.

Sparsity only speeds up the encoder linears; embeddings, attention scores, softmax, layer norms and the
rest cost what they cost. The ceiling is measured, not assumed: the same model with every encoder linear
replaced by a `FreeLinear` (a precomputed output of the right shape, ~zero cost) is timed in the same
interleaved rounds as the dense and the pruned model, and

    ceiling     = t_dense / t_free                    (median of per-round ratios)
    f           = 1 - t_free / t_dense = 1 - 1 / ceiling   (the linears' share of the dense forward)
    attainable  = 1 / ((1 - f) + f (1 - s))            (linears sped up by their FLOP ratio 1/(1-s))
    % of attainable = measured / attainable

with s the model's encoder-linear sparsity. For a compacted structured model the non-linear part shrinks
too (fewer heads), so it may pass the "attainable" bound; the ceiling is then still the one of that model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from capbench.layout import set_path
from capbench.speed.kernels import iter_encoder_linears


class FreeLinear(nn.Module):
    """Stands in for an encoder linear at (almost) no cost: the first call per input shape runs the real
    linear (during warm-up) and keeps its output; later calls of that shape return the kept output."""

    is_free_linear = True

    def __init__(self, linear: nn.Module):
        super().__init__()
        self.linear = linear
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self._outputs: dict[tuple, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.device)
        out = self._outputs.get(key)
        if out is None:
            out = self._outputs[key] = self.linear(x)
        return out


def free_linears(model: nn.Module) -> nn.Module:
    """A copy of `model` whose encoder linears (`iter_encoder_linears`) are `FreeLinear`s."""
    model = copy.deepcopy(model)
    for name, module in list(iter_encoder_linears(model)):
        set_path(model, name, FreeLinear(module))
    return model


def attainable(ceiling: float | None, sparsity: float) -> dict:
    """{"linear_fraction" f, "attainable_speedup"} from a measured `ceiling` (t_dense / t_free) and the
    encoder-linear `sparsity` s in [0, 1]; f is clamped to [0, 1] (a ceiling below 1 is noise). None values
    where the ceiling is unknown or not finite."""
    if ceiling is None or not ceiling > 0 or ceiling == float("inf"):
        return {"linear_fraction": None, "attainable_speedup": None}
    f = min(1.0, max(0.0, 1.0 - 1.0 / ceiling))
    rest = (1.0 - f) + f * (1.0 - sparsity)
    return {"linear_fraction": f, "attainable_speedup": 1.0 / rest if rest > 0 else None}
