"""Wanda (Sun, Liu, Bair & Kolter 2023, "A Simple and Effective Pruning Approach for Large Language Models",
arXiv 2306.11695): one-shot, no weight update; a weight's score is |W_ij| · ‖X_j‖₂ over the calibration
inputs of its layer, compared within its output row (or within each group of M for N:M).  Defaults from the
authors' code, github.com/locuslab/wanda (``main.py`` arguments, ``lib/prune.py::prune_wanda``)."""

from __future__ import annotations

from capbench.pruning.calibration import DEFAULT_CALIBRATION_SIZE
from capbench.pruning.oneshot import CalibratedPruner
from capbench.pruning.pruners import FINETUNED, register_method
from capbench.pruning.wanda import InputNorms, nm_mask, per_row_mask_exact, wanda_scores


class WandaPruner(CalibratedPruner):
    name = "wanda"

    def new_stats(self, module):
        return InputNorms(module.in_features)

    def solve(self, module, stats):
        scores = wanda_scores(module.weight.detach().float(), stats.sq_norms)
        n, m = self.pattern
        keep = nm_mask(scores, n, m) if n else per_row_mask_exact(scores, self.target)
        return None, keep


DEFAULTS = {
    # Pruned once from the dense fine-tuned model, then KD for the preset's steps (issue "Today's baselines":
    # one-shot methods default to that regime; Wanda itself does no retraining: finetune_steps=0).
    "start": FINETUNED,
    "finetune_steps": None,
    # main.py --nsamples 128 (C4 segments); here rows of the task's train split, seeded by the cell's seed.
    "calibration_size": DEFAULT_CALIBRATION_SIZE,
    # main.py --sparsity_type unstructured | 2:4 | 4:8; unstructured compares weights per output row
    # (prune_wanda: sort along dim=-1, the first int(in_features * sparsity) of each row pruned; capbench
    # prunes the leftover of that floor one per row so the target is exact: wanda.per_row_mask_exact).
    "pattern": "unstructured",
}

register_method(
    WandaPruner,
    "Wanda: one-shot |W|·‖X‖ per output row from calibration activations, no weight update (Sun et al. 2023)",
    DEFAULTS,
    source="Sun et al. 2023 (arXiv 2306.11695); locuslab/wanda main.py, lib/prune.py::prune_wanda",
)
