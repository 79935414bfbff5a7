"""Mask mechanics, independent of any importance criterion.

* ``MaskedLinear``: an ``nn.Linear`` (same Parameter objects) whose forward uses ``weight * mask``; with
  learned ``scores`` the product goes through a straight-through estimator (dL/dscores = dL/dW' * W, as in
  the ``TopKBinarizer``/``ThresholdBinarizer`` of movement pruning).
* Thresholding: ``keep_top`` (exact count, ties broken by position), ``local_masks`` (same sparsity in
  every matrix) and ``global_masks`` (one threshold across all matrices).
* ``wrap``/``unwrap``: swap the prunable ``nn.Linear`` modules for ``MaskedLinear`` and back (baking the
  mask into the weight).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from capbench.layout import ROLES, Layout


class _MaskedWeight(torch.autograd.Function):
    """W' = W * M with M from the scores; backward passes dL/dM straight through to the scores."""

    @staticmethod
    def forward(ctx, weight, scores, mask):
        ctx.save_for_backward(weight, mask)
        return weight * mask

    @staticmethod
    def backward(ctx, grad):
        weight, mask = ctx.saved_tensors
        grad_weight = grad * mask if ctx.needs_input_grad[0] else None
        grad_scores = grad * weight if ctx.needs_input_grad[1] else None
        return grad_weight, grad_scores, None


def masked_weight(
    weight: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor | None = None
) -> torch.Tensor:
    if scores is not None and torch.is_grad_enabled() and scores.requires_grad:
        return _MaskedWeight.apply(weight, scores, mask)
    return weight * mask


class MaskedLinear(nn.Linear):
    """Wraps an ``nn.Linear`` in place: same ``weight``/``bias`` Parameters, plus a 0/1 ``mask`` buffer
    (not saved in the state dict) and optional learned ``scores`` (a Parameter, trained by the optimizer)."""

    def __init__(self, linear: nn.Linear):
        nn.Module.__init__(self)
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.register_buffer("mask", torch.ones_like(linear.weight, requires_grad=False), persistent=False)
        self.register_parameter("scores", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, masked_weight(self.weight, self.mask, self.scores), self.bias)

    def effective_weight(self) -> torch.Tensor:
        return (self.weight * self.mask).detach()

    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear holding the same Parameters, with the mask baked into the weight."""
        with torch.no_grad():
            self.weight.mul_(self.mask)
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight, linear.bias = self.weight, self.bias
        return linear


def wrap(model: nn.Module) -> list[tuple[str, MaskedLinear]]:
    """Replace every prunable linear by a MaskedLinear (idempotent); returns them in layer order."""
    lay = Layout(model)
    names = {id(m): n for n, m in model.named_modules()}
    out = []
    for layer in lay.layers:
        for role in ROLES:
            module = lay.get(layer, role)
            name = names.get(id(module), lay.family.path(role))
            if not isinstance(module, MaskedLinear):
                module = MaskedLinear(module)
                lay.set(layer, role, module)
            out.append((name, module))
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """Bake masks into plain nn.Linear modules (drops scores); the model saves with save_pretrained."""
    lay = Layout(model)
    for layer in lay.layers:
        for role in ROLES:
            module = lay.get(layer, role)
            if isinstance(module, MaskedLinear):
                lay.set(layer, role, module.to_linear())
    return model


def rezero(modules: Sequence[MaskedLinear]) -> None:
    """Set masked weights to exactly zero in storage (hard methods call this after every optimizer step)."""
    with torch.no_grad():
        for m in modules:
            m.weight.mul_(m.mask)


# ---------------------------------------------------------------------------------------------- thresholds
def n_pruned(numel: int, sparsity: float) -> int:
    return min(numel, max(0, int(round(sparsity * numel))))


_SAMPLE = 4096  # strided sample that brackets the k-th value in kth_smallest
_SMALL = 1 << 16


def kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest entry (1-based) of a 1-D float tensor: exactly ``values.kthvalue(k).values``.

    ``kthvalue`` costs about 35 ns per entry on one CPU thread (20 ms for a 384x1536 matrix), which made the
    per-step mask updates of magnitude pruning about a tenth of a MiniLM training step.  Here a strided,
    sorted sample of 4,096 entries brackets the k/n quantile, one comparison pass counts the entries below
    the bracket and gathers those inside it (about 3% of them), and ``kthvalue`` runs on that band only; when
    the bracket misses (it cannot on a continuous distribution, it can with heavy ties) the full
    ``kthvalue`` runs.  -inf entries (already pruned weights of hard methods) are set aside first.
    """
    n = values.numel()
    if n <= _SMALL:
        return values.kthvalue(k).values
    stride = n // _SAMPLE
    sample = values[::stride].sort().values
    m = sample.numel()
    if sample[0] == -math.inf:  # hard methods: the pruned entries, counted once and set aside
        finite = values > -math.inf
        n_inf = n - int(finite.sum())
        if k <= n_inf:
            return values.new_tensor(-math.inf)
        if n_inf:
            return kth_smallest(values[finite], k - n_inf)
    at = int(k / n * m)
    lo, hi = sample[max(0, at - 64)], sample[min(m - 1, at + 64)]
    below = int((values < lo).sum())
    band = values[(values >= lo) & (values <= hi)]
    if below < k <= below + band.numel():
        return band.kthvalue(k - below).values
    return values.kthvalue(k).values


def keep_top(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Bool mask keeping exactly ``n_keep`` highest entries (ties at the cut broken by position)."""
    flat = scores.detach().reshape(-1)
    numel = flat.numel()
    n_keep = max(0, min(numel, int(n_keep)))
    if n_keep == numel:
        return torch.ones_like(scores, dtype=torch.bool)
    if n_keep == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    cut = kth_smallest(flat.float(), numel - n_keep)  # the largest pruned value
    keep = flat > cut
    missing = n_keep - int(keep.sum())
    if missing > 0:  # ties at the cut value: keep the first `missing` of them
        tied = torch.nonzero(flat == cut).reshape(-1)[:missing]
        keep[tied] = True
    return keep.reshape(scores.shape)


def local_masks(scores: Sequence[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Each matrix pruned to ``sparsity`` on its own (movement pruning's per-matrix TopK/Magnitude)."""
    return [keep_top(s, s.numel() - n_pruned(s.numel(), sparsity)) for s in scores]


def global_masks(scores: Sequence[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """One threshold across all matrices: the lowest ``sparsity`` fraction of all scores is pruned."""
    flat = torch.cat([s.detach().reshape(-1).float() for s in scores])
    keep = keep_top(flat, flat.numel() - n_pruned(flat.numel(), sparsity))
    out, start = [], 0
    for s in scores:
        out.append(keep[start : start + s.numel()].reshape(s.shape))
        start += s.numel()
    return out


def select_masks(scores: Sequence[torch.Tensor], sparsity: float, scope: str) -> list[torch.Tensor]:
    if scope == "global":
        return global_masks(scores, sparsity)
    if scope == "local":
        return local_masks(scores, sparsity)
    raise ValueError(f"scope must be local or global, got {scope!r}")


def mask_sparsity(modules: Sequence[MaskedLinear]) -> float:
    total = sum(m.mask.numel() for m in modules)
    kept = sum(int(m.mask.count_nonzero()) for m in modules)
    return 1.0 - kept / total if total else 0.0
