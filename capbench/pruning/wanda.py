"""Wanda: prune by |weight| x input-activation norm, one linear layer at a time.

Sun, Liu, Bair, Kolter 2023, "A Simple and Effective Pruning Approach for Large Language Models"
(arXiv 2306.11695); reference code github.com/locuslab/wanda, ``lib/layerwrapper.py::WrappedGPT`` (the
activation statistic) and ``lib/prune.py::prune_wanda`` (score and mask).  Pure tensor code: the caller runs
the calibration forward passes, feeds each linear layer's real-token inputs to ``InputNorms.add`` and turns
the statistic into a keep mask::

    norms = InputNorms(layer.in_features)
    for x in calibration_inputs:                 # (tokens, in_features), padding already dropped
        norms.add(x)
    keep = per_row_mask(wanda_scores(layer.weight, norms.sq_norms), sparsity)   # or nm_mask(scores, 2, 4)

``sparsity`` is the fraction of weights removed, in [0, 1).  Masks are KEEP masks (True = kept).
"""

from __future__ import annotations

import torch

from capbench.errors import CapbenchError
from capbench.pruning.input_stats import RunningInputStat


def _check_sparsity(sparsity: float) -> float:
    if not 0.0 <= float(sparsity) < 1.0:
        raise CapbenchError(f"sparsity must be the fraction of weights removed, in [0, 1); got {sparsity}")
    return float(sparsity)


class InputNorms(RunningInputStat):
    """Running per-input-feature statistic of one linear layer's inputs, as ``WrappedGPT.add_batch``.

    After batches x_1..x_B of ``samples`` s_1..s_B, ``sq_norms[j] = sum_b ||x_b[:, j]||_2^2 / sum_b s_b``
    (the reference's ``scaler_row *= n/(n+tmp); n += tmp; scaler_row += ||X_j||^2 / n``, kept in float32 like
    the reference).  In the reference a batch of ``tmp`` sequences counts ``tmp`` samples; the 1/n factor scales
    every column alike, so it never changes a mask.
    """

    def __init__(self, in_features: int):
        super().__init__(in_features, (int(in_features),))

    def contribution(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(x, ord=2, dim=0) ** 2

    @property
    def sq_norms(self) -> torch.Tensor:
        """(in_features,) float32: the running mean of the squared input norms per feature."""
        return self.value


def wanda_scores(weight: torch.Tensor, sq_norms: torch.Tensor) -> torch.Tensor:
    """Wanda importance ``|W_ij| * sqrt(sq_norms_j)`` (``prune_wanda``: ``W_metric``).

    ``weight``: (out, in), any float dtype; ``sq_norms``: (in,), e.g. ``InputNorms.sq_norms``.
    Returns float32 (out, in) on ``weight``'s device.  Raises ValueError if the shapes disagree.
    """
    if weight.dim() != 2 or sq_norms.shape != (weight.shape[1],):
        raise ValueError(
            f"weight (out, in) and sq_norms (in,) disagree: {tuple(weight.shape)}, {tuple(sq_norms.shape)}"
        )
    norms = torch.sqrt(sq_norms.detach().to(device=weight.device, dtype=torch.float32))
    return weight.detach().to(torch.float32).abs() * norms.reshape(1, -1)


def per_row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Wanda's default unstructured mask: in each output row, prune the ``int(in * sparsity)`` lowest scores.

    As ``prune_wanda`` (comparison group = one output row; ``torch.sort(W_metric, dim=-1, stable=True)`` and
    the first ``int(W_metric.shape[1] * sparsity_ratio)`` indices pruned), so ties go by column position.
    ``scores``: (out, in).  Returns a bool KEEP mask (out, in).  Raises CapbenchError if ``sparsity`` is
    outside [0, 1).
    """
    sparsity = _check_sparsity(sparsity)
    if scores.dim() != 2:
        raise ValueError(f"scores must be (out, in), got {tuple(scores.shape)}")
    k = int(scores.shape[1] * sparsity)
    keep = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if k:
        pruned = torch.sort(scores, dim=-1, stable=True)[1][:, :k]
        keep.scatter_(1, pruned, False)
    return keep


def per_row_mask_exact(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """``per_row_mask`` that removes exactly ``round(out * in * sparsity)`` weights of the matrix.

    Every row prunes its ``int(in * sparsity)`` lowest scores as in Wanda; the few weights left over by that
    floor (fewer than one per row) are taken one per row from the rows whose next lowest score is smallest,
    so the comparison stays within rows and the achieved sparsity equals the target (Wanda's own rule
    leaves MiniLM's 384-wide rows at 0.898 for a target of 0.9).  ``scores``: (out, in); returns the bool
    KEEP mask; raises CapbenchError if ``sparsity`` is outside [0, 1)."""
    sparsity = _check_sparsity(sparsity)
    rows, cols = scores.shape
    total = min(rows * cols, int(round(rows * cols * sparsity)))
    per_row = total // rows
    extra = total - per_row * rows
    order = torch.sort(scores, dim=-1, stable=True)[1]
    keep = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if per_row:
        keep.scatter_(1, order[:, :per_row], False)
    if extra:
        candidates = order[:, per_row]
        next_scores = scores.gather(1, candidates[:, None]).squeeze(1)
        chosen = torch.sort(next_scores, stable=True)[1][:extra]
        keep[chosen, candidates[chosen]] = False
    return keep


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M semi-structured mask: in every group of ``m`` consecutive input columns of a row, prune ``n``.

    As ``prune_wanda`` with ``prune_n, prune_m`` (``torch.topk(W_metric[:, ii:ii+m], n, largest=False)``),
    vectorised over the groups; ties go to the lower column (a stable sort: the reference's ``topk`` leaves
    the order of equal scores unspecified).  ``scores``: (out, in).  Returns a bool KEEP mask (out, in) with
    exactly ``m - n`` kept per group.  Raises CapbenchError unless ``0 < n < m`` and ``in % m == 0``.
    """
    if not 0 < n < m:
        raise CapbenchError(f"N:M sparsity needs 0 < n < m; got {n}:{m}")
    if scores.dim() != 2 or scores.shape[1] % m:
        raise CapbenchError(
            f"N:M sparsity needs in_features divisible by m={m}; got scores {tuple(scores.shape)}"
        )
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // m, m)
    pruned = torch.sort(groups, dim=-1, stable=True)[1][..., :n]
    keep = torch.ones(groups.shape, dtype=torch.bool, device=scores.device)
    keep.scatter_(2, pruned, False)
    return keep.reshape(rows, cols)
