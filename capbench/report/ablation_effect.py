"""The leaderboard's `cap_ablation_effect` table: each CAP ablation variant − the default CAP cell over the
same criterion, with a 95% interval paired by evaluation example.

Pairs: at each (task, criterion, sparsity, seed), a CAP cell whose settings differ from its method's defaults
(its row label names the difference, e.g. ``cap_first_order [modules=snc+fic]``) and the default CAP cell
over the same criterion.  The interval and the checks are the CAP − criterion table's
(``cap_effect.paired_effect``: the same settings apart from CAP's, the same teacher, the same evaluation rows;
rows and, with several seeds, seeds drawn in each of 2,000 bootstrap replicates).  "variant lower" says the
variant scored below the default over those seeds and rows: what the module or loss it removes adds, at this
budget.
"""

from __future__ import annotations

import pandas as pd

from capbench.report.cap_effect import paired_effect, paired_method, show_effect
from capbench.report.frame import register_column
from capbench.report.tables import BY_SPARSITY_KEY, Col, Table

VERDICTS = ("variant higher", "variant lower")


def _side(record) -> tuple[str | None, str | None]:
    """("variant", criterion) for a CAP cell with non-default CAP settings, ("default", criterion) for a
    default CAP cell, (None, None) otherwise."""
    from capbench.methods import cap_variant, criterion_of, is_cap

    spec = record.get("spec") or {}
    method = spec.get("method")
    if not method or not spec.get("cap") or not is_cap(method):
        return None, None
    return ("variant" if cap_variant(spec) else "default"), criterion_of(method)


register_column("ablation_side", lambda record: _side(record)[0])
register_column("ablation_criterion", lambda record: _side(record)[1])


def _where(frame: pd.DataFrame) -> pd.Series:
    return frame["status"].eq("done") & frame["ablation_side"].notna() & frame["sparsity"].gt(0)


def _pairable(frame: pd.DataFrame) -> bool:
    """Whether some variant cell has a default CAP cell of the same task, criterion and sparsity (a page
    whose CAP cells are all variants, e.g. records from before a default changed, shows no such table)."""
    kept = frame[_where(frame)]
    sides = kept.groupby(["task", "ablation_criterion", "sparsity_key"])["ablation_side"].agg(set)
    return any({"variant", "default"} <= found for found in sides)


def _pairs(kept: pd.DataFrame, rows: list[dict]) -> list[dict]:
    """The table's rows: one per (task, variant, sparsity), its cells paired with the default CAP cells of
    the same task, criterion and sparsity (the default cells are kept by ``where`` for this, not shown)."""
    defaults = kept[kept["ablation_side"] == "default"]
    variants = kept[kept["ablation_side"] == "variant"]
    out = []
    keys = ["task", "ablation_criterion", "row", "sparsity_key"]
    for (task, criterion, row, key), group in variants.groupby(keys, sort=False):
        base = defaults[
            defaults["task"].eq(task)
            & defaults["ablation_criterion"].eq(criterion)
            & defaults["sparsity_key"].eq(key)
        ]
        result = paired_effect(
            group.set_index("seed"),
            base.set_index("seed"),
            VERDICTS,
            "no seed has both the variant and the default CAP cell",
        )
        out.append({"task": task, "row": row, "sparsity_key": key, **result})
    return out


def _intro(frame: pd.DataFrame, kept: pd.DataFrame) -> str:
    return (
        "Each CAP variant minus the default CAP cell over the same criterion (×100), "
        f'{paired_method("capbench/report/ablation_effect.py")}; "variant lower": removing or changing what '
        "the label names cost accuracy."
    )


CAP_ABLATION_EFFECT = Table(
    name="cap_ablation_effect",
    title="## CAP ablations − default CAP, paired by evaluation example",
    keys=("task", "row"),
    aggregate=lambda group: {},  # the rows come from _pairs, which needs the default cells beside each variant
    lead=(Col("task", lambda r: r["task"]), Col("variant", lambda r: r["row"])),
    cells=(Col("{label}", show_effect),),
    **BY_SPARSITY_KEY,
    where=_where,
    present=_pairable,
    extra_rows=_pairs,
    intro=_intro,
    empty="No CAP variant has the default CAP cell to pair with.",
)
