"""SparseGPT: one-shot pruning of one linear layer with OBS weight reconstruction.

Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot"
(arXiv 2301.00774); reference code github.com/IST-DASLab/sparsegpt, ``sparsegpt.py::SparseGPT.add_batch``
(the Hessian) and ``SparseGPT.fasterprune`` (the solver).  Defaults are those of the reference's ``opt.py``
argparse: ``--blocksize 128``, ``--percdamp .01``, ``--prunen 0 --prunem 0`` (unstructured); its
``--nsamples 128`` calibration sequences are the caller's business.  Pure tensor code::

    hessian = LayerHessian(layer.in_features)
    for x in calibration_inputs:                 # (tokens, in_features), padding already dropped
        hessian.add(x)
    new_weight, keep, info = sparsegpt_prune(layer.weight, hessian.matrix, sparsity=0.5)

``sparsity`` is the fraction of weights removed, in [0, 1).
"""

from __future__ import annotations

import math

import torch

from capbench.errors import CapbenchError
from capbench.pruning.input_stats import RunningInputStat


class LayerHessian(RunningInputStat):
    """``H = 2/n * sum_tokens x x^T`` over a linear layer's inputs, accumulated as ``SparseGPT.add_batch``.

    The running average is the reference's: ``H *= n/(n+tmp); n += tmp; x = sqrt(2/n) * x; H += x^T x``.
    Kept in float32 like the reference (float64 would change the result only in rounding).
    """

    def __init__(self, in_features: int):
        super().__init__(in_features, (int(in_features), int(in_features)))

    def contribution(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * (x.t() @ x)

    @property
    def matrix(self) -> torch.Tensor:
        """(in_features, in_features) float32: the running Hessian 2/n X Xᵀ."""
        return self.value


def _block_counts(rows: int, columns: int, blocksize: int, sparsity: float) -> list[int]:
    """How many entries to prune in each column block: cumulative rounding, so the layer total is exactly
    ``round(rows * columns * sparsity)`` and each block gets its share to within one entry."""
    bounds = [min(i, columns) * rows for i in range(0, columns + blocksize, blocksize)]
    bounds = sorted(set(bounds))
    return [round(b * sparsity) - round(a * sparsity) for a, b in zip(bounds[:-1], bounds[1:])]


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    prunen: int = 0,
    prunem: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Prune ``weight`` and update its kept entries to compensate, as ``SparseGPT.fasterprune``.

    ``weight``: (out, in), any float dtype; ``hessian``: (in, in), e.g. ``LayerHessian.matrix`` (not
    modified).  Computes in float32 like the reference.  Unstructured (``prunen == 0``): each block of
    ``blocksize`` columns prunes its lowest ``w^2 / diag(Hinv)^2`` entries; N:M (``prunen:prunem``, e.g. 2:4):
    ``prunen`` of every ``prunem`` consecutive columns of each row, chosen inside the column loop as the
    reference does, and ``sparsity`` must then be 0 or ``prunen / prunem`` (the reference ignores it).

    Returns ``(new_weight, keep, info)``: ``new_weight`` (out, in) in ``weight``'s dtype with pruned entries
    exactly 0; ``keep`` a bool (out, in) mask of the entries the solver kept; ``info`` with ``loss`` (the
    reference's ``sum(Losses)``), ``dead_inputs`` (columns with ``H_jj == 0``: zeroed in ``new_weight`` like the
    reference, whatever ``keep`` says) and ``damp``.  Raises CapbenchError on a sparsity outside [0, 1), a
    bad N:M pattern (needs ``0 < n < m`` and ``m`` dividing ``in`` and ``blocksize``), or a Hessian the
    damping cannot make positive definite; ValueError on mismatched shapes.

    Deviation from the reference: an unstructured block prunes exactly its share of entries (stable sort,
    ties by position).  The reference's ``thresh = sort(tmp)[int(numel * sparsity)]; mask = tmp <= thresh``
    prunes one entry more per block (more with ties), so it prunes even at sparsity 0.
    """
    if not 0.0 <= float(sparsity) < 1.0:
        raise CapbenchError(f"sparsity must be the fraction of weights removed, in [0, 1); got {sparsity}")
    rows, columns = weight.shape
    if hessian.shape != (columns, columns):
        raise ValueError(f"hessian must be ({columns}, {columns}) for weight {tuple(weight.shape)}")
    if blocksize < 1:
        raise CapbenchError(f"blocksize must be >= 1, got {blocksize}")
    if prunen or prunem:
        if not 0 < prunen < prunem:
            raise CapbenchError(f"N:M sparsity needs 0 < n < m; got {prunen}:{prunem}")
        if columns % prunem or blocksize % prunem:
            raise CapbenchError(
                f"N:M sparsity needs m={prunem} to divide in_features={columns} and blocksize={blocksize}"
            )
        if sparsity and not math.isclose(sparsity, prunen / prunem):
            raise CapbenchError(
                f"sparsity {sparsity} contradicts {prunen}:{prunem}; pass 0 or {prunen / prunem}"
            )

    W = weight.detach().to(torch.float32).clone()
    H = hessian.detach().to(device=W.device, dtype=torch.float32).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    losses = torch.zeros(rows, device=W.device)
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns, device=W.device)
    H[diag, diag] += damp
    try:
        H = torch.linalg.cholesky(H)
        H = torch.cholesky_inverse(H)
        Hinv = torch.linalg.cholesky(H, upper=True)
    except torch.linalg.LinAlgError as exc:
        raise CapbenchError(
            f"SparseGPT: Hessian not positive definite after damping; raise percdamp ({exc})"
        ) from exc

    pruned = torch.zeros(W.shape, dtype=torch.bool, device=W.device)
    counts = _block_counts(rows, columns, blocksize, float(sparsity)) if not prunen else None
    for b, i1 in enumerate(range(0, columns, blocksize)):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Losses1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]

        mask1 = torch.zeros(W1.shape, dtype=torch.bool, device=W.device)
        if not prunen and counts[b]:
            tmp = W1**2 / torch.diag(Hinv1).reshape(1, -1) ** 2
            # Exactly counts[b] entries; the reference's ``<= thresh`` differs by one entry, and on ties.
            mask1.view(-1)[torch.sort(tmp.flatten(), stable=True)[1][: counts[b]]] = True

        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if prunen and i % prunem == 0:
                tmp = W1[:, i : i + prunem] ** 2 / torch.diag(Hinv1)[i : i + prunem].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.sort(tmp, dim=1, stable=True)[1][:, :prunen], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            Losses1[:, i] = (w - q) ** 2 / d**2
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err1

        W[:, i1:i2] = Q1
        pruned[:, i1:i2] = mask1
        losses += torch.sum(Losses1, 1) / 2
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    info = {"loss": float(losses.sum()), "dead_inputs": int(dead.sum()), "damp": float(damp)}
    return W.to(weight.dtype), ~pruned, info
