"""CAP's contrastive losses as pure functions of L2-normalised embeddings.

Follows ``calculate_contrastive_loss`` in the authors' code (alibaba/AliceMind,
``ContrastivePruning/UnstructuredPruning/emmental/modeling_bert_masked.py``; the structured
``model/PruneBert.py`` is identical):

* scores are ``anchors @ cand.T / temperature`` (no projection head);
* the anchor's own current-model row among the candidates (the detached current batch) is masked out
  of the softmax and of the positives (``contrastive_mask`` there);
* ``log_softmax`` over all remaining candidates; the loss is minus the mean log-probability of the
  positives: the same example (unsupervised) or the same label (supervised), normalised as chosen by
  ``normalization`` (see :class:`capbench.cap.config.CapConfig`).

Deviation: an anchor without any positive (possible only for the supervised term, when its label occurs
nowhere among the candidates) is left out. The released code divides 0 by 0 there and returns NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from capbench.cap.config import NORMALIZATIONS
from capbench.errors import CapbenchError


def self_pair_mask(num_anchors: int, num_cand: int, self_index: Tensor | None, device=None) -> Tensor:
    """Boolean [B, M] mask, True at (i, self_index[i]): the anchor's own current-model row."""
    mask = torch.zeros(num_anchors, num_cand, dtype=torch.bool, device=device)
    if self_index is not None:
        self_index = torch.as_tensor(self_index, device=device).long()
        if self_index.shape != (num_anchors,):
            raise ValueError(f"self_index must have shape ({num_anchors},), got {tuple(self_index.shape)}")
        valid = self_index >= 0
        rows = torch.arange(num_anchors, device=device)[valid]
        mask[rows, self_index[valid]] = True
    return mask


def contrastive_log_probs(anchors: Tensor, cand: Tensor, temperature: float, self_mask: Tensor) -> Tensor:
    """``log_softmax(anchors @ cand.T / temperature)`` over candidates, self-pairs excluded (-inf)."""
    if anchors.dim() != 2 or cand.dim() != 2 or anchors.shape[1] != cand.shape[1]:
        raise ValueError(
            f"expected [B, H] anchors and [M, H] candidates, got {anchors.shape} and {cand.shape}"
        )
    scores = anchors @ cand.to(anchors.dtype).t() / temperature
    # The released code fills -1e6 after dividing by tau; -inf is the exact limit and is safe here
    # because masked entries are never positives (selected with torch.where, never multiplied).
    scores = scores.masked_fill(self_mask, float("-inf"))
    return F.log_softmax(scores, dim=-1)


def positive_mean_loss(log_probs: Tensor, positives: Tensor, normalization: str = "paper_code") -> Tensor:
    """Minus the mean log-probability of the positives, normalised the paper_code or supcon way."""
    if normalization not in NORMALIZATIONS:
        raise CapbenchError(f"CAP normalization must be one of {list(NORMALIZATIONS)}, got {normalization!r}")
    picked = torch.where(
        positives, log_probs, torch.zeros((), dtype=log_probs.dtype, device=log_probs.device)
    )
    per_anchor_sum = picked.sum(dim=1)
    counts = positives.sum(dim=1).to(log_probs.dtype)
    has = counts > 0
    if not bool(has.any()):
        return picked.sum()  # zero, still attached to the graph
    per_anchor = per_anchor_sum[has] / counts[has]
    if normalization == "paper_code":
        # torch.sum(mask_score / positive_num) / torch.sum(mask_score != 0) in the released code; the
        # denominator there counts non-zero log-probabilities, i.e. all positives (a log-probability of
        # exactly 0 would need probability 1).
        return -per_anchor.sum() / counts.sum()
    return -per_anchor.mean()


def positive_mask(anchor_keys: Tensor, cand_keys: Tensor, self_mask: Tensor) -> Tensor:
    """[B, M] True where the candidate has the anchor's key (row index or label), self-pairs excluded."""
    anchor_keys = anchor_keys.to(self_mask.device)
    cand_keys = cand_keys.to(self_mask.device)
    return (anchor_keys.view(-1, 1) == cand_keys.view(1, -1)) & ~self_mask


def unsupervised_contrastive_loss(
    anchors: Tensor,
    anchor_ids: Tensor,
    cand: Tensor,
    cand_ids: Tensor,
    temperature: float,
    normalization: str = "paper_code",
    self_index: Tensor | None = None,
) -> Tensor:
    """Instance-level term: positives are the candidates that represent the same example.

    ``anchors`` [B, H] (with gradient), ``cand`` [M, H] (detached), both L2-normalised;
    ``anchor_ids`` [B] and ``cand_ids`` [M] are train-set row indices; ``self_index`` [B] gives the
    column of each anchor's own current-model row in ``cand`` (or -1 / None when absent).
    """
    self_mask = self_pair_mask(anchors.shape[0], cand.shape[0], self_index, device=anchors.device)
    log_probs = contrastive_log_probs(anchors, cand, temperature, self_mask)
    return positive_mean_loss(log_probs, positive_mask(anchor_ids, cand_ids, self_mask), normalization)


def supervised_contrastive_loss(
    anchors: Tensor,
    anchor_labels: Tensor,
    cand: Tensor,
    cand_labels: Tensor,
    temperature: float,
    normalization: str = "paper_code",
    self_index: Tensor | None = None,
) -> Tensor:
    """Label-level (SupCon-style) term: positives are the candidates with the anchor's label."""
    self_mask = self_pair_mask(anchors.shape[0], cand.shape[0], self_index, device=anchors.device)
    log_probs = contrastive_log_probs(anchors, cand, temperature, self_mask)
    return positive_mean_loss(log_probs, positive_mask(anchor_labels, cand_labels, self_mask), normalization)
