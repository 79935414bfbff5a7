"""Structured first-order pruning (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"): heads and
FFN neurons by first-order Taylor importance, pruned in steps, then compacted.

The pruner is ``capbench.pruning.structured.FirstOrderPruner`` (``structured = True``)."""

from __future__ import annotations

from capbench.options import OptionRule
from capbench.pruning.pruners import SCHEDULE, register_method
from capbench.pruning.structured import FirstOrderPruner

DEFAULTS = {
    **SCHEDULE,
    "scope": "global",  # Michel et al.: heads ranked across layers after per-layer L2 normalisation
    "prune_steps": 10,  # Michel et al. prune 10% of the heads per iteration, re-estimating importance
    "min_heads_per_layer": 1,
    "min_ffn_per_layer": 1,
    "ffn_multiple": 1,  # 16 gives kernel-friendly widths (../shared/notes/cpu-speed-facts.md)
    # gradual: prune_steps events on the cubic schedule in one run; iterative: the CAP authors' prune, then
    # retrain with a fresh optimizer, step by step (capbench/pruning/structured.py docstring, which cites
    # alibaba/AliceMind ContrastivePruning/StructuredPruning/run_glue.py L584-669).
    "procedure": "gradual",
    "step_sparsity": 0.1,  # iterative: PRUNE_SEQUENCE=10,20,...,90 (StructuredPruning/run_glue.sh L12)
    # iterative: epochs of retraining after each step; RETRAIN_EPOCH=2.0 (run_glue.sh L18) in the paper
    # preset; 0 shares the run's --epochs evenly among the steps (the same budget as gradual).
    "step_epochs": 0.0,
}

# Options that leave today's behaviour unchanged at their default are left out of the cell spec there, so the
# digests of cells from before they existed stay the same (see capbench.pruning.pruners.spec_options).
OMIT_AT_DEFAULT = ("procedure", "step_sparsity", "step_epochs")

RULES = {
    "prune_steps": OptionRule("int", "pruning events over the ramp", 1),
    "min_heads_per_layer": OptionRule("int", "heads kept in every layer (BERT attention needs one)", 1),
    "min_ffn_per_layer": OptionRule("int", "FFN neurons kept in every layer", 0),
    "ffn_multiple": OptionRule("int", "kept FFN widths are multiples of this", 1),
    "procedure": OptionRule(
        "choice",
        "gradual: prune_steps events on the cubic schedule in one run; iterative: prune step_sparsity more, "
        "then retrain with a fresh optimizer, until the target (the CAP authors' procedure)",
        choices=("gradual", "iterative"),
    ),
    "step_sparsity": OptionRule("float", "iterative: sparsity added at each step", 0, 1, open_low=True),
    "step_epochs": OptionRule(
        "float", "iterative: epochs of retraining after each step (0: --epochs shared among the steps)", 0
    ),
}

register_method(
    FirstOrderPruner,
    "structured: heads and FFN neurons by first-order Taylor importance, pruned in steps, "
    "then compacted (Michel et al. 2019)",
    DEFAULTS,
    RULES,
    omit_at_default=OMIT_AT_DEFAULT,
    source="Michel et al. 2019 (arXiv 1905.10650); CAP authors' StructuredPruning (alibaba/AliceMind ContrastivePruning)",
)
