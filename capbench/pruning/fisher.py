"""The math of the Optimal BERT Surgeon (oBERT), on plain tensors: no model, no data.

Kurtic et al. 2022, "The Optimal BERT Surgeon: Scalable and Accurate Second-Order Pruning for Large Language
Models" (arXiv 2203.07259, EMNLP 2022), Sec. 3.  Reference implementation: neuralmagic/sparseml,
``src/sparseml/pytorch/sparsification/pruning/modifier_pruning_obs.py`` (classes ``EmpiricalBlockFisherInverse``
and ``OBSPruningParamsScorer``); this module follows its unstructured path.

The loss around the current weights w is modelled to second order with the dampened empirical Fisher of m
gradients, restricted to blocks of B consecutive weights along the main diagonal (the flattened weight is cut
into ceil(d / B) blocks; the last one is zero-padded)::

    F = lambda * I + (1 / m) * sum_k g_k g_k^T          (one B x B matrix per block)

Its inverse is built without any matrix inversion, one gradient at a time, by the Woodbury / Sherman-Morrison
recursion (``BlockFisherInverse.add_grad``), starting from F_0^-1 = (1 / lambda) I::

    F_k^-1 = F_{k-1}^-1 - (F_{k-1}^-1 g_k)(F_{k-1}^-1 g_k)^T / (m + g_k^T F_{k-1}^-1 g_k)

Memory is O(d * B) (``BlockFisherInverse.bytes_needed``).  For pruning a single weight q, the Optimal Brain
Surgeon (Hassibi & Stork 1993) gives the increase of the modelled loss and the update of all the other weights
that minimises it::

    rho_q = w_q^2 / (2 [F^-1]_qq)                       (``obs_scores``; lowest first to prune)
    dw    = -(w_q / [F^-1]_qq) F^-1 e_q                 (``obs_update``; sets w_q to 0 exactly)

Approximation kept from the reference: when several weights are pruned in the same step, ``obs_update`` sums
the single-weight updates ``dw`` of all newly pruned weights (``F^-1 (w * newly_pruned / diag(F^-1))``), as
sparseml's ``OBSPruningParamsScorer.mask_update`` does.  It ignores the correlation between weights pruned
together in one block (the exact joint OBS update would solve with the Q x Q sub-matrix [F^-1]_QQ), so the
surviving weights of a block with several newly pruned weights do not get the exact joint optimum; the
pruned weights themselves are set to exactly 0 afterwards.

Defaults of the paper (sparseml recipe ``research/optimal_BERT_surgeon_oBERT/recipes/
30epochs_unstructured97_mnli.yaml``, ``OBSPruningModifier``): ``num_grads`` m = 1024, ``damp`` lambda = 1e-7,
``fisher_block_size`` B = 50, gradients of mini-batches of 16 (``grad_sampler_kwargs.batch_size``).  They are
listed in ``OBERT_DEFAULTS``; this module sets no default for them so each caller states its own.

Everything is fp32 by default (as in sparseml) and batched over blocks: no Python loop over blocks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["EPS", "OBERT_DEFAULTS", "BlockFisherInverse", "obs_scores", "obs_update"]

# sparseml OBSPruningParamsScorer: self._eps = torch.finfo(torch.float32).eps, added to [F^-1]_ii in both the
# score and the update denominator.
EPS = float(torch.finfo(torch.float32).eps)

# The paper's settings (sparseml recipe 30epochs_unstructured97_mnli.yaml, OBSPruningModifier).
OBERT_DEFAULTS = {"num_grads": 1024, "damp": 1e-7, "fisher_block_size": 50, "grad_batch_size": 16}


class BlockFisherInverse:
    """Inverse of the block-diagonal dampened empirical Fisher of ``num_weights`` weights.

    sparseml ``EmpiricalBlockFisherInverse`` (names there: ``m`` = num_grads, ``B`` = fisher_block_size,
    ``d`` = num_weights, ``damp``).  ``F_inv`` has shape ``(num_blocks, block_size, block_size)`` with
    ``num_blocks = ceil(num_weights / block_size)``; weight i of the flattened tensor is row ``i % B`` of block
    ``i // B``.  The zero padding of the last block never couples with real weights (its gradients are 0).

    After ``k`` calls of ``add_grad``, each block of ``F_inv`` is exactly the inverse of
    ``damp * I + (1 / num_grads) * sum_{j <= k} g_j g_j^T`` (divided by ``num_grads``, not ``k``: the estimate
    is only the one of the paper once all ``num_grads`` gradients are in; ``added`` tells how many are).

    Args:
        num_weights: d, the number of weights (``weight.numel()``), > 0.
        block_size: B, the side of each diagonal block, > 0 (the paper uses 50).
        num_grads: m, the number of gradients the Fisher averages, > 0 (the paper uses 1024).
        damp: lambda, the dampening added to the diagonal, > 0 (the paper uses 1e-7).
        dtype: floating dtype of the blocks (float32 as in sparseml; float64 for exact checks).
        device: where the blocks live.

    Raises:
        ValueError: a size or ``damp`` that is not positive, or a non-floating ``dtype``.
    """

    def __init__(
        self,
        num_weights: int,
        block_size: int,
        num_grads: int,
        damp: float,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        for name, value in (
            ("num_weights", num_weights),
            ("block_size", block_size),
            ("num_grads", num_grads),
        ):
            if int(value) != value or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (math.isfinite(damp) and damp > 0):
            raise ValueError(f"damp must be a positive finite number, got {damp!r}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        self.d = int(num_weights)
        self.B = int(block_size)
        self.m = int(num_grads)
        self.damp = float(damp)
        self.dtype = dtype
        self.num_blocks = math.ceil(self.d / self.B)
        self.added = 0
        eye = torch.eye(self.B, dtype=dtype, device=device) / self.damp
        self.F_inv = eye.unsqueeze(0).repeat(self.num_blocks, 1, 1).contiguous()  # O(d * B) memory

    @property
    def device(self) -> torch.device:
        return self.F_inv.device

    @property
    def nbytes(self) -> int:
        """Bytes held by the blocks (``F_inv``)."""
        return self.F_inv.numel() * self.F_inv.element_size()

    @staticmethod
    def bytes_needed(num_weights: int, block_size: int, dtype: torch.dtype = torch.float32) -> int:
        """Bytes the blocks of a ``BlockFisherInverse(num_weights, block_size, ...)`` will take, before
        allocating: ``ceil(d / B) * B * B * element size``."""
        element_size = torch.empty((), dtype=dtype).element_size()
        return math.ceil(num_weights / block_size) * block_size * block_size * element_size

    def _blocks(self, v: Tensor, what: str) -> Tensor:
        """``v`` (any shape with d elements) as ``(num_blocks, B)`` in the blocks' dtype and device, zero-padded."""
        if v.numel() != self.d:
            raise ValueError(f"{what} has {v.numel()} elements, expected num_weights = {self.d}")
        flat = v.detach().reshape(-1).to(device=self.device, dtype=self.dtype)
        pad = self.num_blocks * self.B - self.d
        if pad:
            flat = torch.cat([flat, flat.new_zeros(pad)])
        return flat.view(self.num_blocks, self.B)

    @torch.no_grad()
    def add_grad(self, g: Tensor, mask: Tensor | None = None) -> None:
        """Add one gradient ``g`` (flat ``(d,)`` or any shape with d elements, any floating dtype/device) to the
        Fisher: the Sherman-Morrison update of every block at once (sparseml ``EmpiricalBlockFisherInverse
        .add_grad``).

        ``mask`` (optional, d elements, 0 = pruned): multiply ``g`` by it first, as sparseml's
        ``pre_optim_step_update`` does with the current mask, so pruned weights stay decoupled from the rest.

        Raises:
            ValueError: more than ``num_grads`` gradients, ``g`` (or ``mask``) without d elements, or a
                non-finite gradient (it would corrupt every later update of its blocks).
        """
        if self.added >= self.m:
            raise ValueError(f"already added num_grads = {self.m} gradients; start a new BlockFisherInverse")
        g = self._blocks(g, "gradient")
        if mask is not None:
            g = g * self._blocks(mask, "mask")
        if not bool(torch.isfinite(g).all()):
            raise ValueError("gradient has non-finite values (nan or inf)")
        finv_g = torch.bmm(self.F_inv, g.unsqueeze(2)).squeeze(2)  # (num_blocks, B)
        alpha = (self.m + (g * finv_g).sum(1)).sqrt().unsqueeze(1)  # (num_blocks, 1)
        finv_g = finv_g / alpha
        # F_inv -= u uᵀ per block; addcmul_ of the broadcast outer product is about 8x faster on CPU than the
        # reference's baddbmm_ of (B, 1) x (1, B) matrices (MiniLM FFN matrix, blocks of 16: 8 vs 68 ms).
        self.F_inv.addcmul_(finv_g.unsqueeze(2), finv_g.unsqueeze(1), value=-1)
        self.added += 1

    def diag(self) -> Tensor:
        """``[F^-1]_ii`` for the d weights: shape ``(d,)``, the blocks' dtype and device."""
        return self.F_inv.diagonal(dim1=1, dim2=2).reshape(-1)[: self.d]

    @torch.no_grad()
    def mul(self, v: Tensor) -> Tensor:
        """``F^-1 v`` for ``v`` with d elements (any shape): shape ``(d,)``, the blocks' dtype and device."""
        return torch.bmm(self.F_inv, self._blocks(v, "vector").unsqueeze(2)).reshape(-1)[: self.d]


def _check_like(name: str, t: Tensor, weight: Tensor) -> None:
    if t.shape != weight.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected the weight's {tuple(weight.shape)}")


@torch.no_grad()
def obs_scores(
    weight: Tensor, finv: BlockFisherInverse, mask: Tensor | None = None, eps: float = EPS
) -> Tensor:
    """OBS saliency of each weight: ``rho_q = w_q^2 / (2 [F^-1]_qq + eps)`` (paper Sec. 3, single-weight OBS;
    sparseml ``OBSPruningParamsScorer.score_parameters``, unstructured).  Lowest = pruned first.

    Args:
        weight: any shape with ``finv.d`` elements, any floating dtype and device.
        finv: the Fisher inverse of these weights.
        mask: optional, the weight's shape; entries where ``mask == 0`` (already pruned) score ``-inf`` so
            they stay pruned, as in sparseml.
        eps: added to the denominator (sparseml: float32 eps); 0 for the exact formula.

    Returns:
        Scores of the weight's shape, in ``finv``'s dtype (fp32 by default) on the weight's device.

    Raises:
        ValueError: ``weight`` without ``finv.d`` elements, or ``mask`` not of the weight's shape.
    """
    if weight.numel() != finv.d:
        raise ValueError(
            f"weight has {weight.numel()} elements, BlockFisherInverse has num_weights = {finv.d}"
        )
    w = weight.detach().reshape(-1).to(device=finv.device, dtype=finv.dtype)
    scores = (w * w / (2.0 * finv.diag() + eps)).view(weight.shape)
    if mask is not None:
        _check_like("mask", mask, weight)
        scores = scores.masked_fill(mask.to(scores.device) == 0, float("-inf"))
    return scores.to(weight.device)


@torch.no_grad()
def obs_update(weight: Tensor, finv: BlockFisherInverse, newly_pruned: Tensor, eps: float = EPS) -> Tensor:
    """The weight after pruning ``newly_pruned`` with the OBS compensation (sparseml
    ``OBSPruningParamsScorer.mask_update``, unstructured)::

        w_new = w - F^-1 ((w * newly_pruned) / (diag(F^-1) + eps)),   then w_new[newly_pruned] = 0

    For one pruned weight q this is ``w + dw`` with ``dw = -(w_q / [F^-1]_qq) F^-1 e_q`` (paper Sec. 3), the
    update that minimises the modelled loss under ``w_q = 0``.  For several weights it is the sum of their
    single-weight updates, the reference's approximation (see the module docstring).  Weights in other blocks
    than the pruned ones are not changed.  Already-pruned weights stay 0 when the gradients given to ``finv``
    were masked (their rows of ``F^-1`` are then ``e_i / damp``).

    Args:
        weight: any shape with ``finv.d`` elements, any floating dtype and device; not modified.
        finv: the Fisher inverse of these weights.
        newly_pruned: bool, the weight's shape; True for the weights pruned in this step (sparseml:
            ``mask_diffs == -1``).
        eps: added to ``[F^-1]_qq`` (sparseml: float32 eps); 0 for the exact formula.

    Returns:
        A new tensor of the weight's shape, dtype and device (computed in ``finv``'s dtype), with the newly
        pruned entries exactly 0.

    Raises:
        ValueError: ``weight`` without ``finv.d`` elements, ``newly_pruned`` not of its shape or not bool.
    """
    if weight.numel() != finv.d:
        raise ValueError(
            f"weight has {weight.numel()} elements, BlockFisherInverse has num_weights = {finv.d}"
        )
    _check_like("newly_pruned", newly_pruned, weight)
    if newly_pruned.dtype != torch.bool:
        raise ValueError(f"newly_pruned must be a bool tensor, got {newly_pruned.dtype}")
    w = weight.detach().reshape(-1).to(device=finv.device, dtype=finv.dtype)
    pruned = newly_pruned.reshape(-1).to(finv.device)
    new = w - finv.mul(w * pruned / (finv.diag() + eps))
    new = new.masked_fill(pruned, 0.0)
    return new.view(weight.shape).to(device=weight.device, dtype=weight.dtype)
