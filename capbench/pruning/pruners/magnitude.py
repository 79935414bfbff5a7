"""Magnitude pruning: gradual on the cubic schedule (Zhu & Gupta 2017, "To prune, or not to prune"), or
one-shot global magnitude before training, the classic one-shot baseline."""

from __future__ import annotations

from capbench.pruning.base import UnstructuredPruner
from capbench.pruning.criteria import MagnitudeCriterion
from capbench.pruning.pruners import PRETRAINED, SCHEDULE, register_method


class MagnitudePruner(UnstructuredPruner):
    name = "magnitude"

    def __init__(self, sparsity: float, options: dict):
        super().__init__(sparsity, options, MagnitudeCriterion(), hard=True)


DEFAULTS = {
    **SCHEDULE,
    # auto = local for the gradual method (MagnitudeBinarizer thresholds each matrix on its own), global
    # for oneshot (one-shot global magnitude, the classic one-shot baseline).
    "scope": "auto",
    # masked_run_glue.py recomputes masks at every step (Zhu & Gupta suggest every 100-1000 steps).
    "update_every": 1,
    # oneshot: prune to the target once before training, then a fixed mask.
    "oneshot": False,
    # start=finetuned with oneshot=true: the dense fine-tuned model pruned once (per matrix, as Wanda and
    # SparseGPT prune each layer to the target), then KD: the control row of that regime.
    "start": PRETRAINED,
    "finetune_steps": None,
    # N:M ramps per group of M on the schedule (2:4: 4 kept, then 3, then 2), or at once with oneshot.
    "pattern": "unstructured",
}

register_method(
    MagnitudePruner,
    "gradual magnitude pruning on the cubic schedule (Zhu & Gupta 2017); oneshot: global "
    "magnitude at the start, then a fixed mask",
    DEFAULTS,
    omit_at_default=("start", "finetune_steps", "pattern"),
    source="Zhu & Gupta 2017 (arXiv 1710.01878); movement-pruning masked_run_glue.py MagnitudeBinarizer",
)
