"""Random masks on the same schedule: the floor (Blalock et al. 2020, ShrinkBench's random baseline)."""

from __future__ import annotations

from capbench.options import OptionRule
from capbench.pruning.base import UnstructuredPruner
from capbench.pruning.criteria import RandomCriterion
from capbench.pruning.pruners import PRETRAINED, SCHEDULE, register_method


class RandomPruner(UnstructuredPruner):
    name = "random"

    def __init__(self, sparsity: float, options: dict):
        super().__init__(sparsity, options, RandomCriterion(options["seed"]), hard=True)


DEFAULTS = {
    **SCHEDULE,
    "scope": "auto",  # as magnitude: local when gradual, global when oneshot
    "seed": 0,
    "update_every": 1,
    "oneshot": False,
    "start": PRETRAINED,  # as magnitude: start=finetuned with oneshot=true prunes the fine-tuned model once
    "finetune_steps": None,
}

register_method(
    RandomPruner,
    "random masks on the same schedule: the floor (ShrinkBench)",
    DEFAULTS,
    {"seed": OptionRule("int", "seed of the random masks", 0, 2**32 - 1)},
    omit_at_default=("start", "finetune_steps"),
    source="Blalock et al. 2020 (ShrinkBench, arXiv 2003.03033)",
)
