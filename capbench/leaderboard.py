"""Leaderboard vocabulary: a record's row label, sparsity key and cell configuration (digest).

The summary (records -> frame -> tables -> JSON and markdown) is `capbench.report`, which builds on this
vocabulary (this module imports nothing from it).
"""

from __future__ import annotations

import hashlib
import json

from capbench.spec import DENSE, MEASUREMENT_FIELDS, NAME_FIELDS

DIGITS = 2
# Spec fields that may differ between the records of one leaderboard cell.
CELL_INDEPENDENT = ("seed", *MEASUREMENT_FIELDS, *NAME_FIELDS)


def cell_config(spec: dict) -> dict:
    """A cell's configuration: its spec without the seed, measurements and display names."""
    return {k: v for k, v in spec.items() if k not in CELL_INDEPENDENT}


def config_digest(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


KD_SUFFIX = " +KD"
"""What a row label adds for a cell trained with knowledge distillation from its dense teacher."""


def row_label(spec: dict) -> str:
    """A cell's leaderboard row: its method, ``KD_SUFFIX`` when trained with KD, and its regime suffix; a CAP
    cell's label is its method plus the ablation variant, if any (CAP always distils)."""
    if spec["method"] == DENSE:
        return DENSE
    if spec.get("cap"):
        from capbench.methods import cap_variant

        variant = cap_variant(spec)
        return spec["method"] + (f" [{variant}]" if variant else "")
    return spec["method"] + (KD_SUFFIX if spec.get("kd") else "") + regime_suffix(spec)


def regime_suffix(spec: dict) -> str:
    """' [one-shot on fine-tuned]' (with its fine-tuning budget when not the preset's) for a one-shot cell;
    '' for a method pruned gradually during fine-tuning: rows of different regimes never share a label."""
    from capbench.methods import criterion_of
    from capbench.pruning.pruners import PRUNING_METHODS, method_defaults, regime

    criterion = criterion_of(spec["method"])
    if criterion not in PRUNING_METHODS:
        return ""
    options = {**method_defaults(criterion), **(spec.get("method_options") or {})}
    name = regime(criterion, options)
    if name == "gradual":
        return ""
    steps = options.get("finetune_steps")
    budget = "" if steps is None else (", no fine-tuning" if steps == 0 else f", {steps} fine-tuning steps")
    return f" [{name}{budget}]"


def sparsity_key(value: float) -> str:
    return f"{value:g}"


def differing_fields(a: dict, b: dict) -> list[str]:
    """Spec (or cell configuration) fields that differ, the seed, measurements and names aside."""
    return sorted(k for k in a.keys() | b.keys() if k not in CELL_INDEPENDENT and a.get(k) != b.get(k))
