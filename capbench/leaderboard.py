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


def row_label(spec: dict) -> str:
    if spec["method"] == DENSE:
        return DENSE
    if spec.get("cap"):
        from capbench.methods import cap_variant

        variant = cap_variant(spec)
        return spec["method"] + (f" [{variant}]" if variant else "")
    return spec["method"] + (" +KD" if spec.get("kd") else "")


def sparsity_key(value: float) -> str:
    return f"{value:g}"


def differing_fields(a: dict, b: dict) -> list[str]:
    """Spec (or cell configuration) fields that differ, the seed, measurements and names aside."""
    return sorted(k for k in a.keys() | b.keys() if k not in CELL_INDEPENDENT and a.get(k) != b.get(k))
