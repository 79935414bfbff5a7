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


# The cells a variant is paired with: (side column, side, criterion column) of the frame, per table.
BASES = {
    "default": ("ablation_side", "default", "ablation_criterion"),  # the default CAP cell
    "criterion": ("effect_side", "criterion", "effect_criterion"),  # the criterion's +KD cell (cap_effect)
}


def _cells(frame: pd.DataFrame, column: str, side: str) -> pd.Series:
    """The finished pruned cells whose ``column`` is ``side``."""
    return frame["status"].eq("done") & frame[column].eq(side) & frame["sparsity"].gt(0)


def _variant_cells(frame: pd.DataFrame) -> pd.Series:
    return _cells(frame, "ablation_side", "variant")


def _base_cells(frame: pd.DataFrame, base: str) -> pd.Series:
    column, side, _ = BASES[base]
    return _cells(frame, column, side)


def _keys(cells: pd.DataFrame, criterion_column: str) -> set[tuple]:
    """The (task, criterion, sparsity) of each of ``cells``."""
    return set(zip(cells["task"], cells[criterion_column], cells["sparsity_key"], strict=True))


def _pairable_with(base: str, stored_only: bool) -> Callable[[pd.DataFrame], bool]:
    """Whether some variant cell has a ``base`` cell of the same task, criterion and sparsity; with
    ``stored_only``, both with per-example predictions (the frame's ``examples``)."""

    def pairable(frame: pd.DataFrame) -> bool:
        variants, bases = _variant_cells(frame), _base_cells(frame, base)
        if stored_only:
            stored = frame["examples"].notna()
            variants, bases = variants & stored, bases & stored
        found = _keys(frame[bases], BASES[base][2])
        return bool(_keys(frame[variants], "ablation_criterion") & found)

    return pairable


def _pairs_against(base: str, none: str) -> Callable[[pd.DataFrame, list[dict]], list[dict]]:
    """The rows of a table pairing each variant with the ``base`` cells (``BASES``) of the same task,
    criterion and sparsity: one row per (task, variant, sparsity); the base cells are kept by the table's
    ``where`` for this, not shown.  ``none``: the reason when no seed has both."""
    column, side, criterion_column = BASES[base]

    def pairs(kept: pd.DataFrame, rows: list[dict]) -> list[dict]:
        bases = kept[kept[column] == side]
        variants = kept[kept["ablation_side"] == "variant"]
        out = []
        keys = ["task", "ablation_criterion", "row", "sparsity_key"]
        for (task, criterion, row, key), group in variants.groupby(keys, sort=False):
            base_cells = bases[
                bases["task"].eq(task) & bases[criterion_column].eq(criterion) & bases["sparsity_key"].eq(key)
            ]
            result = paired_effect(group.set_index("seed"), base_cells.set_index("seed"), VERDICTS, none)
            out.append({"task": task, "row": row, "sparsity_key": key, **result})
        return out

    return pairs


def _variant_table(
    base: str, name: str, title: str, intro: str, stored_only: bool, none: str, empty: str
) -> Table:
    """A table of each CAP variant − its ``base`` cell (``BASES``), paired by evaluation example; ``intro``
    names the pairing method as ``{method}``; ``none``: a row's reason when no seed has both cells."""
    return Table(
        name=name,
        title=title,
        keys=("task", "row"),
        aggregate=lambda group: {},  # the rows come from the pairing, which needs the base cells beside them
        lead=(Col("task", lambda r: r["task"]), Col("variant", lambda r: r["row"])),
        cells=(Col("{label}", show_effect),),
        **BY_SPARSITY_KEY,
        where=lambda frame: _variant_cells(frame) | _base_cells(frame, base),
        present=_pairable_with(base, stored_only),
        extra_rows=_pairs_against(base, none),
        intro=lambda frame, kept: intro.format(method=paired_method("capbench/report/ablation_effect.py")),
        empty=empty,
    )


# A page whose CAP cells are all variants (e.g. records from before a default changed) shows no table;
# older boards whose variants have no stored predictions show no table of "no pair" against the criterion.
_pairable = _pairable_with("default", stored_only=False)
_pairable_vs_criterion = _pairable_with("criterion", stored_only=True)

CAP_ABLATION_EFFECT = _variant_table(
    "default",
    name="cap_ablation_effect",
    title="## CAP ablations − default CAP, paired by evaluation example",
    intro=(
        'Each CAP variant minus the default CAP cell over the same criterion (×100), {method}; "variant lower": '
        "removing or changing what the label names cost accuracy."
    ),
    stored_only=False,
    none="no seed has both the variant and the default CAP cell",
    empty="No CAP variant has the default CAP cell to pair with.",
)

CAP_ABLATION_VS_CRITERION = _variant_table(
    "criterion",
    name="cap_ablation_vs_criterion",
    title="## CAP ablations − criterion, paired by evaluation example",
    intro=(
        "Each CAP variant minus its criterion's cell trained with KD from the same teacher (×100), as in the "
        'CAP − criterion table: {method}; "variant higher": this variant of CAP beats pruning with the '
        "criterion and KD alone."
    ),
    stored_only=True,
    none="no seed has both the variant and the criterion's +KD cell",
    empty="No CAP variant has its criterion's +KD cell to pair with.",
)
