"""Top-k movement pruning (Sanh et al. 2020): learned scores through the straight-through estimator.

Defaults: huggingface/transformers ``examples/research_projects/movement-pruning`` (README commands,
``masked_run_glue.py`` argparse defaults, ``emmental/modules/binarizer.py``)."""

from __future__ import annotations

from capbench.pruning.base import UnstructuredPruner
from capbench.pruning.criteria import MovementCriterion
from capbench.pruning.pruners import SCHEDULE, register_method


class MovementPruner(UnstructuredPruner):
    name = "movement"

    def __init__(self, sparsity: float, options: dict):
        super().__init__(sparsity, options, MovementCriterion(options["score_init"]), hard=False)


DEFAULTS = {
    **SCHEDULE,
    "scope": "local",  # TopKBinarizer per matrix; masked_run_glue.py --global_topk is off by default
    "score_lr": 1e-2,  # --mask_scores_learning_rate 1e-2 (README and argparse default)
    "score_init": 0.0,  # --mask_init constant --mask_scale 0.
    "update_every": 1,  # masks follow the scores at every step
    # N:M ramps per group of M along the input dimension on the schedule (2:4: 4 kept, then 3, then 2);
    # the final mask holds the pattern in every group (issue "Run on GPUs": the 2:4 kernels' models).
    "pattern": "unstructured",
}

register_method(
    MovementPruner,
    "top-k movement pruning: learned scores, straight-through estimator (Sanh et al. 2020)",
    DEFAULTS,
    omit_at_default=("pattern",),
    source="Sanh et al. 2020 (arXiv 2005.07683); huggingface/transformers examples/research_projects/movement-pruning",
)
