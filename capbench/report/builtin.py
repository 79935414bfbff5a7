"""The leaderboard's tables, declared as pivots of the records frame: main metric, retention, probes,
speed and CAP ablations (in page order). See tables.py for what a declaration says."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd

from capbench.leaderboard import DIGITS
from capbench.metrics import chance_margin, versus_chance
from capbench.report.tables import Col, Table, register_table, varies
from capbench.spec import DENSE

# ------------------------------------------------------------------------------------ main metric, retention


def stats(values: list[float]) -> dict:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(mean, DIGITS + 2), "std": round(std, DIGITS + 2), "n": len(values)}


def check_one_configuration(where: str, group: pd.DataFrame) -> None:
    """A leaderboard cell averages seeds of one configuration; anything else would be a silent mix."""
    from capbench.errors import CapbenchError
    from capbench.leaderboard import differing_fields

    first = group.iloc[0]
    seen: dict = {}
    for _, row in group.iterrows():
        differing = differing_fields(first["configuration"], row["configuration"])
        if differing:
            raise CapbenchError(
                f"{where}: records {first['cell_id']} and {row['cell_id']} differ in "
                f"{', '.join(differing)}; a cell averages seeds of one configuration, so pass "
                "run directories of one configuration (or migrate old records: capbench migrate-records)"
            )
        seed = row["seed"]
        seed = int(seed) if isinstance(seed, int | float | np.number) and float(seed).is_integer() else seed
        if seed in seen:
            raise CapbenchError(
                f"{where}: seed {seed} appears twice ({seen[seed]} and {row['cell_id']}); "
                "pass each run directory once"
            )
        seen[seed] = row["cell_id"]


def main_cell(group: pd.DataFrame) -> dict:
    """A cell's numbers: mean/std/n over its seeds, failures, undefined reasons, retention, achieved."""
    first = group.iloc[0]
    check_one_configuration(f"{first['task']} {first['row']} sparsity {first['sparsity_key']}", group)
    done = group[group["status"] == "done"]
    if done.empty:
        errors = sorted(set(group["error"].fillna("")))
        return {"status": "failed", "n": 0, "config": first["config"], "errors": errors}
    undefined = sorted(set(done["undefined"].dropna()))
    if undefined:  # a seed without a value makes the cell's mean undefined, never a mean of the rest
        cell = {
            "status": "done",
            "mean": None,
            "std": None,
            "n": len(done),
            "undefined": "; ".join(undefined),
        }
        cell["undefined_seeds"] = int(done["undefined"].notna().sum())
    else:
        cell = {"status": "done", **stats(list(done["value"]))}
    cell.update(failed=len(group) - len(done), config=first["config"])
    measured = done[done["has_achieved"]]
    if not measured.empty:
        cell["achieved_sparsity"] = round(statistics.fmean(measured["achieved"]), 4)
        cell["target_sparsity"] = done.iloc[0]["target"]
        if all(g is not None for g in measured["granularity"]):
            cell["sparsity_granularity"] = max(measured["granularity"])
    dense_mean = first["dense_mean"]
    if dense_mean and not math.isnan(dense_mean) and cell["mean"] is not None:
        cell["retention"] = round(cell["mean"] / dense_mean, 4)
    cell.update(chance_fields(first, cell))
    return cell


def chance_fields(first: pd.Series, cell: dict) -> dict:
    """{"vs_chance": "at" | "below" | "above", "chance_margin"} of a cell with a mean, when the chance score
    of its split is known: "at" when |mean - chance| <= chance_margin = 2 x max(seed standard error, sampling
    standard error of chance on the evaluation rows) (capbench.metrics.chance_margin); else {}."""
    chance, rows = first.get("chance", math.nan), first.get("chance_rows")
    if cell.get("mean") is None or chance is None or math.isnan(chance) or not rows:
        return {}
    margin = chance_margin(first["metric"], chance, int(rows), cell["std"], cell["n"])
    return {
        "vs_chance": versus_chance(cell["mean"], chance, margin),
        "chance_margin": round(margin, DIGITS + 2),
    }


RETENTION_FIELDS = (
    "status",
    "retention",
    "achieved_sparsity",
    "target_sparsity",
    "sparsity_granularity",
    "vs_chance",
)
CHANCE_MARKS = {"at": "≈ chance", "below": "< chance"}  # shown after a cell's value; "above" shows nothing


def chance_mark(cell: dict) -> str:
    mark = CHANCE_MARKS.get(cell.get("vs_chance", ""))
    return f" {mark}" if mark else ""


def retention_cell(group: pd.DataFrame) -> dict:
    cell = main_cell(group)
    return {k: cell[k] for k in RETENTION_FIELDS if k in cell}


def fmt_metric(cell: dict | None) -> str:
    if cell is None:
        return "–"
    if cell["status"] != "done":
        return "failed"
    if cell["mean"] is None:
        return f"undefined: {cell['undefined']} (n={cell['n']})"
    spread = f" ± {100 * cell['std']:.{DIGITS - 1}f}" if cell["n"] > 1 else ""
    text = f"{100 * cell['mean']:.{DIGITS - 1}f}{spread} (n={cell['n']})"
    return text + chance_mark(cell) + (f", {cell['failed']} failed" if cell.get("failed") else "")


def fmt_retention(cell: dict | None) -> str:
    if cell is None or cell["status"] != "done":
        return "–" if cell is None else "failed"
    parts = []
    if cell.get("retention") is not None and cell["row"] != DENSE:
        parts.append(f"{100 * cell['retention']:.1f}%")
    if cell.get("achieved_sparsity") is not None:
        parts.append(f"s={cell['achieved_sparsity']:.3f}")
    return (" · ".join(parts) or "–") + chance_mark(cell)


def _dense_first(row: dict) -> tuple:
    return (row["task"], row["row"] != DENSE, row["row"], float(row.get("sparsity_key", 0)))


def _sparsity_header(key: str) -> str:
    return "dense" if key == "0" else f"s={key}"


CHANCE_RULES = {
    "accuracy": "majority class",
    "f1": "always the positive class",
    "matthews_correlation": "no association",
    "pearson": "no association",
    "spearmanr": "no association",
}
CHANCE_NOISE = (
    "≈ chance: the mean is within 2 × max(standard error over seeds, sampling standard error of chance on "
    "the evaluation rows: sqrt(c(1-c)/rows) for accuracy and F1, 1/sqrt(rows) for correlations) of chance; "
    "< chance: further below."
)


def _chance_line(metric: str | None, chance: dict) -> str:
    rows = f"the {chance['rows']} {chance['split']} rows"
    if chance["value"] is None:
        return f"Chance: unknown (no per-example predictions of {rows} found beside the records)."
    return f"Chance: {100 * chance['value']:.{DIGITS - 1}f} ({CHANCE_RULES.get(metric, metric)}, {rows})."


def dense_at_chance(rows: list[dict]) -> bool:
    """Whether the task's dense reference (its dense row at sparsity 0) is within noise of chance, or below."""
    return any(r["row"] == DENSE and r.get("vs_chance") in ("at", "below") for r in rows)


def main_chance_note(task: str, rows: list[dict], info: dict) -> str:
    """The main table's note: chance per evaluation split (and rows), the "≈ chance" rule, and a warning
    when the dense reference itself is at chance."""
    chances = info.get("chance") or []
    lines = [" ".join(_chance_line(info.get("metric"), c) for c in chances)]
    if any(c["value"] is not None for c in chances):
        lines[0] += " " + CHANCE_NOISE
    if dense_at_chance(rows):
        lines.append(
            f"**Dense reference is at chance on {task}: results on this task do not measure pruning.**"
        )
    return "\n\n".join(line for line in lines if line)


def retention_chance_note(task: str, rows: list[dict], info: dict) -> str:
    """The retention table's note: chance as a share of the dense mean (the retention a chance model has)."""
    dense = (info.get("rows") or {}).get(DENSE, {}).get("0", {}).get("mean")
    known = [c for c in info.get("chance") or [] if c["value"] is not None]
    if not dense or len(known) != 1:
        return ""
    return f"Chance = {100 * known[0]['value'] / dense:.1f}% of dense."


METHOD = Col("method", lambda row: row["row"])
BY_SPARSITY = dict(spread="sparsity_key", spread_label=_sparsity_header, spread_order=float)

MAIN = Table(
    name="main_metric",
    title="## {task}: {metric} on {split} (×100, mean ± std over seeds)",
    keys=("task", "row"),
    aggregate=main_cell,
    lead=(METHOD,),
    cells=(Col("{label}", fmt_metric),),
    per_task=True,
    order=_dense_first,
    task_note=main_chance_note,
    **BY_SPARSITY,
)
RETENTION = Table(
    name="retention",
    title="### {task}: retention (% of dense) · achieved sparsity of the pruned linear weights",
    keys=("task", "row"),
    aggregate=retention_cell,
    lead=(METHOD,),
    cells=(Col("{label}", fmt_retention),),
    per_task=True,
    order=_dense_first,
    task_note=retention_chance_note,
    **BY_SPARSITY,
)

# ------------------------------------------------------------------------------------------------- probes


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _nanmean(series: pd.Series) -> float | None:
    values = series.dropna()
    return float(np.mean(list(values))) if len(values) else None


def probe_cell(group: pd.DataFrame) -> dict:
    return {
        "retention": _nanmean(group["probe_retention"]),
        "selectivity": _nanmean(group["probe_selectivity"]),
        "n": len(group),
    }


def _pretrained_rows(kept: pd.DataFrame, rows: list[dict]) -> list[dict]:
    """The pre-trained reference: a row of its own per task (retention 1 by definition)."""
    sparsities = sorted({row["sparsity"] for row in rows})
    extra = []
    for task, group in kept.groupby("task", sort=True):
        selectivity = group.iloc[0]["probe_reference_selectivity"]
        for sparsity in sparsities:
            extra.append(
                {"task": task, "row": "pre-trained", "sparsity": sparsity, "retention": 1.0}
                | {"selectivity": None if math.isnan(selectivity) else selectivity}
            )
    return extra + rows


def _probe_note(frame: pd.DataFrame, kept: pd.DataFrame) -> str:
    names: list[str] = []
    for joined in kept["probe_names"]:
        names += [n for n in joined.split(", ") if n not in names]
    return (
        "Retention = probe accuracy / pre-trained model's probe accuracy; selectivity = task - control "
        f"accuracy; best layer (chosen on dev), {kept.iloc[0]['probe_pooling']} pooling, mean over "
        f"{', '.join(names)}."
    )


PROBES = Table(
    name="probes",
    title="## Linear probes: task-agnostic knowledge retained",
    keys=("task", "row"),
    aggregate=probe_cell,
    lead=(Col("task", lambda row: row["task"], when=varies("task")), METHOD),
    cells=(
        Col("{label} retention", lambda row: _fmt(row["retention"]), align="right"),
        Col("{label} selectivity", lambda row: _fmt(row["selectivity"]), align="right"),
    ),
    spread="sparsity",
    spread_label=lambda s: f"{100 * float(s):g}%",
    where=lambda f: f["status"].eq("done") & f["probe_retention"].notna(),
    present=lambda f: bool(f["has_probes"].any()),
    order=lambda r: (r["task"], r["row"] != "pre-trained", r["row"] != DENSE, r["row"], r["sparsity"]),
    extra_rows=_pretrained_rows,
    missing="-",
    outro=_probe_note,
)

# -------------------------------------------------------------------------------------------------- speed


def _sfmt(x, spec: str = ".2f", suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:{spec}}{suffix}"


def speed_cell(group: pd.DataFrame) -> dict:
    first = group.iloc[0]
    return {
        "measured_speedup": first["speed_measured"],
        "theoretical_speedup": first["speed_theoretical"],
        "fraction_of_theoretical": first["speed_of_theoretical"],
        "achieved_sparsity": first["speed_sparsity"],
        "format": first["speed_format"],
        "sparse_not_faster": bool(first["speed_not_faster"]),
        "token_count": first["speed_token_count"],
        "machine": first["speed_machine"],
    }


def _speed_intro(frame: pd.DataFrame, kept: pd.DataFrame) -> str:
    machines = list(dict.fromkeys(kept["speed_machine"]))
    shapes = sorted(set(kept["speed_token_count"]))
    where = f"Speed on {machines[0]}" if len(machines) == 1 else "Speed on: " + "; ".join(machines)
    return (
        f"{where}\n\nWhole-model forward at {', '.join(shapes)} (batch x seq) vs the dense model, best kernel "
        "format per layer; median of per-round ratios. Theoretical = 1/(1-s) from non-zero encoder-linear FLOPs."
    )


def _speed_outro(frame: pd.DataFrame, kept: pd.DataFrame) -> str:
    missing = int((frame["status"] == "done").sum()) - len(kept)
    return f"{missing} done cell(s) have no speed measurement." if missing else ""


def _speed_sparsity(row: dict) -> str:
    target = row["sparsity"]
    return _sfmt(target if target is not None else row["achieved_sparsity"], ".2f")


def _of_theoretical(row: dict) -> str:
    fraction = row["fraction_of_theoretical"]
    return _sfmt(fraction * 100 if fraction is not None else None, ".0f", "%")


SPEED = Table(
    name="speed",
    title="## Inference speed on this machine",
    keys=("task", "method", "sparsity", "cell_id"),
    aggregate=speed_cell,
    lead=(
        Col("task", lambda r: r["task"]),
        Col("method", lambda r: r["method"]),
        Col("sparsity", _speed_sparsity),
        Col("measured", lambda r: _sfmt(r["measured_speedup"], ".2f", "x")),
        Col("theoretical", lambda r: _sfmt(r["theoretical_speedup"], ".1f", "x")),
        Col("% of theor.", _of_theoretical),
        Col("format", lambda r: r["format"]),
        Col("note", lambda r: "sparse, not faster" if r["sparse_not_faster"] else ""),
        Col("machine", lambda r: r["machine"], when=varies("machine")),
    ),
    where=lambda f: f["status"].eq("done") & f["speed_measured"].notna(),
    present=lambda f: bool(f["has_speed"].any()),
    order=lambda r: (r["task"], r["method"], -1 if r["sparsity"] is None else r["sparsity"]),
    empty="_No speed measurements (run `capbench bench --runs RUNDIR` or `capbench run --speed`)._",
    intro=_speed_intro,
    outro=_speed_outro,
)

# ---------------------------------------------------------------------------------------------------- CAP


def cap_cell(group: pd.DataFrame) -> dict:
    if group["value"].isna().any():
        return {"status": "done", "undefined": True, "n": len(group)}
    return {"status": "done", **stats(list(group["value"]))}


def cap_costs(group: pd.DataFrame) -> dict:
    out = {
        "bank_mb": float(group["cap_bank_mb"].max()),
        "extra_forward": int(group["cap_extra_forward"].max()),
    }
    terms = mean_loss_terms(group)
    if terms:  # records from before the magnitudes were stored leave the row (and the page) as it was
        out["loss_terms"] = terms
    return out


def mean_loss_terms(group: pd.DataFrame) -> dict[str, float]:
    """{term: mean over the group's records of its mean |term| over the last 10% of steps}, CE and KD first
    (records that did not store the magnitudes are left out)."""
    if "loss_term_magnitudes" not in group:
        return {}
    stored = [m for m in group["loss_term_magnitudes"] if isinstance(m, dict) and m]
    names = sorted({name for m in stored for name in m}, key=_term_order)
    return {name: float(np.mean([m[name] for m in stored if name in m])) for name in names}


TERM_ORDER = ("ce", "kd", "prc_unsup", "prc_sup", "snc_unsup", "snc_sup", "fic_unsup", "fic_sup")


def _term_order(name: str) -> tuple[int, str]:
    """CE, KD, then each CAP module's unsupervised and supervised parts; other terms (a pruner's) last."""
    return (TERM_ORDER.index(name) if name in TERM_ORDER else len(TERM_ORDER), name)


def show_loss_terms(row: dict) -> str:
    terms = row.get("loss_terms") or {}
    return " · ".join(f"{name} {value:.3g}" for name, value in terms.items()) or "–"


CAP = Table(
    name="cap_ablation",
    title="## CAP ablations",
    keys=("task", "row", "cap_modules", "cap_losses", "cap_representation", "cap_temperature"),
    aggregate=cap_cell,
    lead=(
        Col("task", lambda r: r["task"]),
        Col("variant", lambda r: r["row"]),
        Col("modules", lambda r: r["cap_modules"]),
        Col("losses", lambda r: r["cap_losses"]),
        Col("repr", lambda r: r["cap_representation"]),
        Col("τ", lambda r: r["cap_temperature"]),
    ),
    cells=(Col("{label}", lambda r: "undefined" if r.get("undefined") else fmt_metric(r)),),
    tail=(
        Col("bank MB", lambda r: f"{r['bank_mb']:.1f}"),
        Col("extra fwd", lambda r: str(r["extra_forward"])),
        Col(
            "loss terms, mean abs. (last 10% of steps)",
            show_loss_terms,
            when=lambda rows: any(r.get("loss_terms") for r in rows),
        ),
    ),
    spread="sparsity_key",
    spread_label=lambda key: f"s={key}",
    spread_order=float,
    row_aggregate=cap_costs,
    where=lambda f: f["status"].eq("done") & f["cap_modules"].notna(),
    present=lambda f: bool(f["has_cap"].any()),
    empty="No finished CAP cells.",
)

for _table in (MAIN, RETENTION, PROBES, SPEED, CAP):
    register_table(_table)
