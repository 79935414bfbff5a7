"""The leaderboard's `cap_ablation_effect` table: each CAP ablation variant − the default CAP cell over the
same criterion, with a 95% interval paired by evaluation example; and `cap_ablation_vs_criterion`: each
variant − its criterion's own +KD cell, which says whether any variant of CAP beats pruning with KD alone.

Pairs: at each (task, criterion, sparsity, seed), a CAP cell whose settings differ from its method's defaults
(its row label names the difference, e.g. ``cap_first_order [modules=snc+fic]``) and the default CAP cell
over the same criterion.  The interval and the checks are the CAP − criterion table's
(``cap_effect.paired_effect``: the same settings apart from CAP's, the same teacher, the same evaluation rows;
rows and, with several seeds, seeds drawn in each of 2,000 bootstrap replicates).  "variant lower" says the
variant scored below the default over those seeds and rows: what the module or loss it removes adds, at this
budget.
"""

from __future__ import annotations

from collections.abc import Callable

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


def _criterion_cells(frame: pd.DataFrame) -> pd.Series:
    """Each criterion's gradual +KD cell (cap_effect's "criterion" side), its criterion in
    ``ablation_criterion`` terms."""
    return frame["status"].eq("done") & frame["effect_side"].eq("criterion") & frame["sparsity"].gt(0)


def _pairs_against(base_side: str, none: str) -> Callable[[pd.DataFrame, list[dict]], list[dict]]:
    """The rows of a table pairing each variant with the ``base_side`` cells ("default": the default CAP
    cell; "criterion": the criterion's +KD cell) of the same task, criterion and sparsity: one row per
    (task, variant, sparsity); the base cells are kept by the table's ``where`` for this, not shown."""

    def pairs(kept: pd.DataFrame, rows: list[dict]) -> list[dict]:
        if base_side == "default":
            bases = kept[kept["ablation_side"] == "default"]
            criteria = bases["ablation_criterion"]
        else:
            bases = kept[kept["effect_side"] == "criterion"]
            criteria = bases["effect_criterion"]
        variants = kept[kept["ablation_side"] == "variant"]
        out = []
        keys = ["task", "ablation_criterion", "row", "sparsity_key"]
        for (task, criterion, row, key), group in variants.groupby(keys, sort=False):
            base = bases[bases["task"].eq(task) & criteria.eq(criterion) & bases["sparsity_key"].eq(key)]
            result = paired_effect(group.set_index("seed"), base.set_index("seed"), VERDICTS, none)
            out.append({"task": task, "row": row, "sparsity_key": key, **result})
        return out

    return pairs


_pairs = _pairs_against("default", "no seed has both the variant and the default CAP cell")


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


def _where_vs_criterion(frame: pd.DataFrame) -> pd.Series:
    return (frame["status"].eq("done") & frame["ablation_side"].eq("variant") & frame["sparsity"].gt(0)) | (
        _criterion_cells(frame)
    )


def _pairable_vs_criterion(frame: pd.DataFrame) -> bool:
    """Whether some variant cell has its criterion's +KD cell at the same task and sparsity, both with
    per-example predictions (older boards whose CAP rows are variants of a since-changed default, with no
    predictions stored, show no table of "no pair")."""
    stored = frame["examples"].notna()
    variants = frame[
        frame["status"].eq("done") & frame["ablation_side"].eq("variant") & frame["sparsity"].gt(0) & stored
    ]
    bases = frame[_criterion_cells(frame) & stored]
    found = set(zip(bases["task"], bases["effect_criterion"], bases["sparsity_key"], strict=True))
    keys = zip(variants["task"], variants["ablation_criterion"], variants["sparsity_key"], strict=True)
    return any(key in found for key in keys)


def _intro_vs_criterion(frame: pd.DataFrame, kept: pd.DataFrame) -> str:
    return (
        "Each CAP variant minus its criterion's cell trained with KD from the same teacher (×100), as in the "
        f'CAP − criterion table: {paired_method("capbench/report/ablation_effect.py")}; "variant higher": '
        "this variant of CAP beats pruning with the criterion and KD alone."
    )


CAP_ABLATION_VS_CRITERION = Table(
    name="cap_ablation_vs_criterion",
    title="## CAP ablations − criterion, paired by evaluation example",
    keys=("task", "row"),
    aggregate=lambda group: {},  # the rows come from the pairing, which needs the criterion cells
    lead=(Col("task", lambda r: r["task"]), Col("variant", lambda r: r["row"])),
    cells=(Col("{label}", show_effect),),
    **BY_SPARSITY_KEY,
    where=_where_vs_criterion,
    present=_pairable_vs_criterion,
    extra_rows=_pairs_against("criterion", "no seed has both the variant and the criterion's +KD cell"),
    intro=_intro_vs_criterion,
    empty="No CAP variant has its criterion's +KD cell to pair with.",
)
