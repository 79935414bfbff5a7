"""The leaderboard's tables, declared as pivots of the records frame: main metric, retention, probes,
speed and CAP ablations (in page order). See tables.py for what a declaration says."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd

from capbench.leaderboard import DIGITS
from capbench.metrics import chance_margin, versus_chance
from capbench.report.ablation_effect import CAP_ABLATION_EFFECT, CAP_ABLATION_VS_CRITERION
from capbench.report.cap_effect import CAP_EFFECT
from capbench.report.oneshot_table import ONESHOT
from capbench.report.probe_table import PROBES
from capbench.report.tables import BY_SPARSITY_KEY, Col, Table, register_table, varies
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
    # which dense teacher each seed learned from (main_chance_note warns when one seed's cells differ)
    cell["teachers"] = {
        str(seed): teacher for seed, teacher in zip(done["seed"], done["teacher"], strict=True) if teacher
    }
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
    lines += teacher_notes(rows)
    return "\n\n".join(line for line in lines if line)


def teacher_notes(rows: list[dict]) -> list[str]:
    """A line per seed whose cells learned from (or, the dense row, are) more than one dense teacher: the
    teacher is cached per machine, so a grid run across machines retrains it, and those rows then differ
    by the teacher's run-to-run variation as well as by method."""
    by_seed: dict[str, dict[str, list[str]]] = {}
    for row in rows:
        for seed, teacher in (row.get("teachers") or {}).items():
            by_seed.setdefault(seed, {}).setdefault(teacher, []).append(
                f"{row['row']} s={row['sparsity_key']}"
            )
    lines = []
    for seed, teachers in sorted(by_seed.items()):
        if len(teachers) > 1:
            parts = "; ".join(f"{teacher}: {', '.join(cells)}" for teacher, cells in teachers.items())
            lines.append(
                f"Seed {seed} used {len(teachers)} dense teachers of the same recipe ({parts}). A teacher is "
                "retrained on each machine: where two trainings' final losses agree to rounding "
                '(report.frame.teacher_relation), the paired tables pair across them and say "teacher '
                "retrained\"; otherwise they leave the pair out, as these rows also differ by the teacher's "
                "run-to-run variation."
            )
    return lines


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

# -------------------------------------------------------------------------------------------------- speed


def _sfmt(x, spec: str = ".2f", suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:{spec}}{suffix}"


def _or_none(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


SPEED_BATCHES = ("1", "32")  # the batch sizes the table shows (bench_model's default whole-model shapes)


def speed_cell(group: pd.DataFrame) -> dict:
    first = group.iloc[0]
    shapes = first["speed_shapes"] if isinstance(first["speed_shapes"], dict) else {}
    return {
        "measured_speedup": first["speed_measured"],
        "theoretical_speedup": first["speed_theoretical"],
        "fraction_of_theoretical": first["speed_of_theoretical"],
        "achieved_sparsity": first["speed_sparsity"],
        "format": first["speed_format"],
        "sparse_not_faster": bool(first["speed_not_faster"]),
        "token_count": first["speed_token_count"],
        "machine": first["speed_machine"],
        **{f"batch_{b}": shapes.get(b) for b in SPEED_BATCHES},
        "ceiling": first["speed_ceiling"],
        "attainable_speedup": first["speed_attainable"],
        "fraction_of_attainable": first["speed_of_attainable"],
        "busy": _or_none(first["speed_busy"]),
        "busy_reason": _or_none(first["speed_busy_reason"]),
        "inputs": first["speed_inputs"],
        "schema": int(first["speed_schema"]),
    }


def _speed_intro(frame: pd.DataFrame, kept: pd.DataFrame) -> str:
    machines = list(dict.fromkeys(kept["speed_machine"]))
    inputs = list(dict.fromkeys(kept["speed_inputs"]))
    where = f"Speed on {machines[0]}" if len(machines) == 1 else "Speed on: " + "; ".join(machines)
    return (
        f"{where}\n\nWhole-model forward at batch 1 and batch 32 vs the dense model, on "
        f"{'; '.join(inputs)}; each layer in the kernel format a separate calibration run chose. Speedup: "
        "median of per-round ratios [95% interval of the median]; IQR and rounds per batch (b=1 / b=32). "
        "Ceiling: dense / the same model with its encoder linears free; attainable = 1/((1-f) + f(1-s)) with "
        "f = 1 - 1/ceiling the linears' measured share of the forward; % of attainable = measured / "
        "attainable. BUSY: other processes used the cores during the measurement (not comparable). "
        "— : not in the record (older measurements)."
    )


def _speed_outro(frame: pd.DataFrame, kept: pd.DataFrame) -> str:
    missing = int((frame["status"] == "done").sum()) - len(kept)
    lines = [f"{missing} done cell(s) have no speed measurement."] if missing else []
    old = int((kept["speed_schema"] < 2).sum())
    if old:
        lines.append(
            f"{old} measurement(s) come from the first speed harness (threads not pinned, one warm-up, five "
            "fixed rounds, each layer's format chosen on speedups within their noise, machine load not "
            "read): their differences may be machine load; `capbench bench --runs RUNDIR --force` measures "
            "them again."
        )
    return "\n\n".join(lines)


def _speed_sparsity(row: dict) -> str:
    target = row["sparsity"]
    return _sfmt(target if target is not None else row["achieved_sparsity"], ".2f")


def _batch_speedup(batch: str):
    def show(row: dict) -> str:
        shape = row.get(f"batch_{batch}") or {}
        text = _sfmt(shape.get("speedup"), ".2f", "x")
        ci = shape.get("ci")
        if text != "—" and ci and None not in ci:
            text += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
        return text

    return show


def _per_batch(field: str, spec: str, suffix: str = "", scale: float = 1.0):
    """One per-shape field at both batches: "value at b=1 / value at b=32"."""

    def show(row: dict) -> str:
        values = []
        for batch in SPEED_BATCHES:
            value = (row.get(f"batch_{batch}") or {}).get(field)
            values.append(_sfmt(None if value is None else value * scale, spec, suffix))
        return " / ".join(values)

    return show


def _speed_format(row: dict) -> str:
    """The kernel formats the pruned model ran in: one label, or "b=1 / b=32" where the two shapes' own
    calibrations chose differently (the record's headline format is the largest shape's)."""
    labels = [(row.get(f"batch_{b}") or {}).get("format") for b in SPEED_BATCHES]
    if None in labels or len(set(labels)) == 1:
        return row["format"]
    return " / ".join(labels)


def _speed_note(row: dict) -> str:
    """BUSY, and "sparse, not faster" (a sparse model under ``capbench.speed.bench.NOT_FASTER`` speedup) at
    the batch sizes where it holds."""
    from capbench.speed.bench import NOT_FASTER

    notes = ["BUSY"] if row.get("busy") else []
    speedups = {b: (row.get(f"batch_{b}") or {}).get("speedup") for b in SPEED_BATCHES}
    if row["sparse_not_faster"] and None not in speedups.values():
        slow = [b for b, x in speedups.items() if x < NOT_FASTER]
        if slow:
            where = "" if len(slow) == len(speedups) else f" at b={', b='.join(slow)}"
            notes.append(f"sparse, not faster{where}")
    elif row["sparse_not_faster"]:
        notes.append("sparse, not faster")
    return ", ".join(notes)


SPEED = Table(
    name="speed",
    title="## Inference speed on this machine",
    keys=("task", "method", "sparsity", "cell_id"),
    aggregate=speed_cell,
    lead=(
        Col("task", lambda r: r["task"]),
        Col("method", lambda r: r["method"]),
        Col("sparsity", _speed_sparsity),
        Col("batch 1 [95% CI]", _batch_speedup("1")),
        Col("batch 32 [95% CI]", _batch_speedup("32")),
        Col("IQR", _per_batch("iqr", ".2f")),
        Col("rounds", _per_batch("rounds", ".0f")),
        Col("ceiling", _per_batch("ceiling", ".2f", "x")),
        Col("attainable", _per_batch("attainable", ".2f", "x")),
        Col("% of attainable", _per_batch("of_attainable", ".0f", "%", 100.0)),
        Col("format", _speed_format),
        Col("note", _speed_note),
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
    **BY_SPARSITY_KEY,
    row_aggregate=cap_costs,
    where=lambda f: f["status"].eq("done") & f["cap_modules"].notna(),
    present=lambda f: bool(f["has_cap"].any()),
    empty="No finished CAP cells.",
)

for _table in (
    MAIN,
    RETENTION,
    ONESHOT,
    PROBES,
    SPEED,
    CAP_EFFECT,
    CAP,
    CAP_ABLATION_EFFECT,
    CAP_ABLATION_VS_CRITERION,
):
    register_table(_table)
