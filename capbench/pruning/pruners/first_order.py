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
}

RULES = {
    "prune_steps": OptionRule("int", "pruning events over the ramp", 1),
    "min_heads_per_layer": OptionRule("int", "heads kept in every layer (BERT attention needs one)", 1),
    "min_ffn_per_layer": OptionRule("int", "FFN neurons kept in every layer", 0),
    "ffn_multiple": OptionRule("int", "kept FFN widths are multiples of this", 1),
}

register_method(
    FirstOrderPruner,
    "structured: heads and FFN neurons by first-order Taylor importance, pruned in steps, "
    "then compacted (Michel et al. 2019)",
    DEFAULTS,
    RULES,
)
