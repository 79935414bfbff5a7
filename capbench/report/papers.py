"""The "Reported in papers" table, declared as a pivot of the reported rows (capbench.reported.compare_reported):
per task, one line per published row (source, sparsity, KD, method, model), a column per split and metric,
and a note column saying why there is no Δ where capbench has records of that cell."""

from __future__ import annotations

import math

import pandas as pd

from capbench.report.tables import Col, Table, register_table

NOTE = (
    "Published numbers, labelled with their source; they are not capbench results and never enter the tables "
    "above. Δ = capbench − reported, given only where these records reproduce the paper's setting: the same "
    "checkpoint (by its pinned hub id or weights digest, never by folder name), task, method, sparsity and "
    "metric, the whole official train split, the official evaluation split, the paper's epochs and learning "
    "rate (and batch size where the source gives one) and the same distillation setting. A setting the source "
    "does not give rules out a Δ. Otherwise the published number stands alone, and where capbench ran that "
    "cell the last column says why it is not a reproduction."
)


def reported_frame(rows: list[dict]) -> pd.DataFrame:
    """One row per reported entry (the output of compare_reported), with its source's footnote number and
    its table column ("split metric")."""
    sources = sorted({row["source"] for row in rows})
    return pd.DataFrame(
        [
            {
                "task": row["task"],
                "source": row["source"],
                "source_no": sources.index(row["source"]) + 1,
                "sparsity": row["sparsity"],
                "kd": bool(row["kd"]),
                "method": row["method"],
                "method_label": row.get("method_label") or "",
                "model": row["model"],
                "column": f"{row['split']} {row['metric']}",
                "value": row["value"],
                "delta": row.get("delta"),
                "capbench_n": row.get("capbench_n"),
                "not_a_reproduction": tuple(row.get("not_a_reproduction", ())),
                "unknown_settings": tuple(row.get("unknown_settings", ())),
            }
            for row in rows
        ]
    )


def _cell(group: pd.DataFrame) -> dict:
    first = group.iloc[0]
    delta = first["delta"]
    if delta is None or (isinstance(delta, float) and math.isnan(delta)):
        return {"value": first["value"]}
    return {"value": first["value"], "delta": delta, "capbench_n": int(first["capbench_n"])}


def _note(group: pd.DataFrame) -> dict:
    """The reasons of a line's cells, merged position by position (they differ in the eval split)."""
    lists = list(group["not_a_reproduction"])
    reasons: list[str] = []
    for index in range(max(map(len, lists), default=0)):
        for reason in (r[index] for r in lists if index < len(r)):
            if reason not in reasons:
                reasons.append(reason)
    return {"note": "; ".join(reasons)}


def _fmt(row: dict) -> str:
    if row.get("delta") is None:
        return f"{row['value']:.1f}"
    return f"{row['value']:.1f} (capbench Δ {row['delta']:+.1f}, n={row['capbench_n']})"


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _footnotes(frame: pd.DataFrame, kept: pd.DataFrame) -> str:
    lines = []
    for number, source in enumerate(sorted(set(kept["source"])), 1):
        unknown: list[str] = []
        for names in kept.loc[kept["source"] == source, "unknown_settings"]:
            unknown += [name for name in names if name not in unknown]
        if not unknown:
            lines.append(f"[{number}] {source}  ")
        else:
            lines.append(
                f"[{number}] {source}; it gives no {_join(unknown)}, so no Δ is claimed against it  "
            )
    return "\n".join(lines)


def _order(row: dict) -> tuple:
    return (row["task"], row["source_no"], row["kd"], row["sparsity"], row["method"], row["column"])


REPORTED = register_table(
    Table(
        name="reported",
        title="## Reported in papers",
        source="reported",
        keys=("task", "source_no", "sparsity", "kd", "method", "method_label", "model"),
        aggregate=_cell,
        lead=(
            Col("method", lambda r: r["method"] + (f" ({r['method_label']})" if r["method_label"] else "")),
            Col("model", lambda r: r["model"]),
            Col("sparsity", lambda r: f"{r['sparsity']:g}"),
            Col("KD", lambda r: "yes" if r["kd"] else "no"),
        ),
        cells=(Col("{label}", _fmt),),
        tail=(
            Col("source", lambda r: f"[{r['source_no']}]"),
            Col(
                "not a reproduction because",
                lambda r: r["note"] or "–",
                when=lambda rows: any(r["note"] for r in rows),
            ),
        ),
        spread="column",
        spread_order=lambda key: tuple(key.split(" ", 1)),
        row_aggregate=_note,
        split_by="task",
        order=_order,
        intro=lambda frame, kept: NOTE,
        outro=_footnotes,
    )
)
