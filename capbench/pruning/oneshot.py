"""The mechanics shared by the one-shot post-training pruners (Wanda, SparseGPT): calibrate once, layer by
layer, then keep the masks fixed (and the pruned weights at exactly zero) through any fine-tuning.

Call order (``capbench.runner``)::

    pruner.attach(model, total_steps)      # wraps the prunable linears; no mask yet
    pruner.calibrate(batches)              # layer by layer: masks (and weights) from the calibration inputs
    ...evaluate the model right after pruning...
    train(model, ..., pruner=pruner)       # optional KD fine-tuning; after_step keeps the pruned weights at 0
    model = pruner.finalize(model)

Each method supplies ``new_stats(module)`` (what it accumulates from a linear's inputs) and
``solve(module, stats) -> (weight or None, keep mask)``; the criterion is kept apart from these mechanics.
"""

from __future__ import annotations

import torch
from torch import nn

from capbench.errors import CapbenchError
from capbench.pruning.base import UnstructuredPruner, parse_pattern
from capbench.pruning.calibration import sequential_calibration
from capbench.pruning.criteria import Criterion
from capbench.pruning.masks import MaskedLinear, mask_sparsity, rezero, unwrap


class _Calibrated(Criterion):
    """Placeholder criterion: a calibrated pruner's masks come from ``calibrate``, not from scores."""

    def __init__(self, name: str):
        self.name = name


class CalibratedPruner(UnstructuredPruner):
    """Base of the calibrated one-shot pruners; subclasses define ``new_stats`` and ``solve``."""

    post_training = True  # pruned once from calibration inputs (Wanda, SparseGPT)

    def __init__(self, sparsity: float, options: dict):
        super().__init__(sparsity, options, _Calibrated(self.name), hard=True)
        self.calibration: dict | None = None

    @property
    def oneshot(self) -> bool:
        return True

    @property
    def scope(self) -> str:
        return "per-layer"

    def attach(self, model: nn.Module, total_steps: int) -> None:
        self.wrap(model, total_steps)  # the masks come from calibrate()

    # --- the method --------------------------------------------------------------------------------------
    def new_stats(self, module: MaskedLinear):
        raise NotImplementedError

    def solve(self, module: MaskedLinear, stats) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(the new weight or None to keep it, the bool keep mask) of one linear from its statistics."""
        raise NotImplementedError

    # --- mechanics ---------------------------------------------------------------------------------------
    @property
    def pattern(self) -> tuple[int, int]:
        return parse_pattern(self.options.get("pattern", "unstructured"))

    def calibrate(self, batches: list[dict]) -> dict:
        """Prune every prunable linear once from ``batches`` (``capbench.pruning.calibration``); returns and
        records the calibration cost (rows, tokens, forward passes, seconds)."""
        self._require_attached()
        if self.calibration is not None:
            raise CapbenchError(f"{self.name} pruner is already calibrated; make a new pruner")
        if not batches:
            raise CapbenchError(f"{self.name}: no calibration rows; give calibration_size >= 1")

        def solve(_role, module, stats):
            weight, keep = self.solve(module, stats)
            with torch.no_grad():
                if weight is not None:
                    module.weight.copy_(weight.to(module.weight.dtype))
                module.mask.copy_(keep)
                module.weight.mul_(module.mask)

        if self.target > 0:
            self.calibration = sequential_calibration(self.model, batches, self.new_stats, solve)
        else:  # nothing to remove: the model stays as it is
            self.calibration = {"layers": 0, "batches": 0, "rows": 0, "tokens": 0, "forward_passes": 0}
            self.calibration["seconds"] = 0.0
        self.applied = self.target
        self.info["calibration"] = dict(self.calibration)
        return self.calibration

    def after_step(self, step: int) -> None:
        self._require_attached()
        if not self.finalized:
            rezero(self.modules)

    def finalize(self, model: nn.Module) -> nn.Module:
        self._require_attached()
        if self.calibration is None and not self.finalized:
            raise CapbenchError(f"{self.name} pruner finalized before calibrate(batches) pruned the model")
        if not self.finalized:
            self.info["achieved_linear_sparsity"] = mask_sparsity(self.modules)
            unwrap(model)
            self.finalized = True
        return model

    def config(self) -> dict:
        out = super().config()
        out["schedule"] = "oneshot"
        out["pattern"] = self.options.get("pattern", "unstructured")
        return out
