"""The leaderboard's `probes` table: retention of what the encoder adds, with its floors and paired differences.

Rows: the pre-trained reference (retention 1 by definition), the two floor models (random weights, zeroed
encoder; see capbench.probing.floors), then every method; columns per sparsity: retention as mean ± std over
fine-tuning seeds (n), the chance-corrected accuracy and the selectivity at the reference layer. Under the
table, paired differences (each default CAP row against its criterion trained with KD, every other method
against magnitude of the same KD setting and regime; ``baseline_of``) with a 95% interval: a bootstrap over
the probes' test rows paired by row (``paired_row_bootstrap``) where the records keep their rows, else a
t-interval over fine-tuning seeds; a difference is called only when its interval excludes 0. A seed whose
two models learned from different dense teachers (the teacher is retrained on each machine;
``report.frame.same_teacher``) is left out of the pair, and the line says so.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from capbench.leaderboard import KD_SUFFIX
from capbench.methods import criterion_of, is_cap
from capbench.probing.probe import unpack_correct
from capbench.report.cap_effect import BOOTSTRAP_SEED, REPLICATES
from capbench.report.frame import teacher_mismatch, teacher_relation
from capbench.report.tables import Col, Table, varies
from capbench.spec import DENSE

PRETRAINED = "pre-trained"
FLOOR_PREFIX = "floor: "
BASELINE = "magnitude"


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _nanmean(series: pd.Series) -> float | None:
    values = series.dropna()
    return float(np.mean(list(values))) if len(values) else None


def probe_cell(group: pd.DataFrame) -> dict:
    """One (task, row, sparsity) cell: retention mean/std over seeds with n and per seed, and the means of
    chance-corrected accuracy and selectivity."""
    values = list(group["probe_retention"].dropna())
    by_seed = {
        str(seed): float(value)
        for seed, value in zip(group["seed"], group["probe_retention"])
        if value == value
    }
    # which dense teacher each seed's model learned from, where its record says (report.frame.same_teacher)
    teachers = {
        str(seed): teacher
        for seed, teacher in zip(group["seed"], group.get("teacher_run", [None] * len(group)))
        if teacher and any(teacher.values())
    }
    return {
        "method": group.iloc[0]["method"],
        "retention": float(np.mean(values)) if values else None,
        "retention_std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
        "retention_by_seed": by_seed,
        "rows_by_seed": {
            str(seed): rows
            for seed, rows in zip(group["seed"], group.get("probe_test_rows", [None] * len(group)))
            if isinstance(rows, dict) and rows
        },
        "chance_corrected": _nanmean(group["probe_chance_corrected"]),
        "selectivity": _nanmean(group["probe_selectivity"]),
        **({"teacher_by_seed": teachers} if teachers else {}),
    }


def _reference_rows(kept: pd.DataFrame, rows: list[dict]) -> list[dict]:
    """The pre-trained reference and the floor models: rows of their own per task, repeated per sparsity."""
    sparsities = sorted({row["sparsity"] for row in rows})
    extra = []
    for task, group in kept.groupby("task", sort=True):
        first = group.iloc[0]
        fixed = {
            PRETRAINED: {"retention": 1.0, "chance_corrected": first["probe_reference_chance_corrected"]},
            **{FLOOR_PREFIX + name: {"retention": value} for name, value in first["probe_floors"].items()},
        }
        for row, values in fixed.items():
            for sparsity in sparsities:
                extra.append(
                    {"task": task, "row": row, "sparsity": sparsity, "method": row, "n": None}
                    | {k: (None if v is None or v != v else v) for k, v in values.items()}
                )
    return extra + rows


def _order(row: dict) -> tuple:
    kind = 0 if row["row"] == PRETRAINED else 1 if row["row"].startswith(FLOOR_PREFIX) else 2
    return (row["task"], kind, row["row"] != DENSE, row["row"], row["sparsity"])


def show_retention(row: dict) -> str:
    value = row.get("retention")
    if value is None:
        return "-"
    if not row.get("n"):
        return _fmt(value)
    spread = row.get("retention_std")
    return f"{value:.3f} ± {spread:.3f} ({row['n']})" if spread is not None else f"{value:.3f} (1)"


def baseline_of(label: str, method: str, labels: set[str]) -> str | None:
    """The row label a probe row (``label``, of grid method ``method``) is compared with, among ``labels``.

    A default CAP row (``cap_X``) goes with its criterion trained with KD from the same teacher (``X +KD``,
    else ``X`` where the grid ran without KD), as in the CAP − criterion table (capbench.report.cap_effect):
    CAP's loss is that KD loss plus its contrastive terms.  Any other method's row goes with magnitude's row
    of the same KD setting and regime (``wanda +KD [one-shot on fine-tuned]`` with ``magnitude +KD [one-shot
    on fine-tuned]``).  None for dense, the reference and floor rows, CAP variants (the ablation table's),
    and a row whose counterpart is not on the page."""
    if method == DENSE or not label.startswith(method):
        return None
    suffix = label[len(method) :]  # " +KD", " +KD [one-shot on fine-tuned]", a CAP variant's " [...]"
    if is_cap(method):
        if suffix:
            return None
        criterion = criterion_of(method)  # cap_soft's is soft_movement
        candidates = [criterion + KD_SUFFIX, criterion]
    elif method != BASELINE:
        candidates = [BASELINE + suffix]
    else:
        return None
    return next((c for c in candidates if c in labels), None)


def paired_difference(mine: dict[str, float], theirs: dict[str, float], level: float = 0.95) -> dict:
    """Retention difference paired by fine-tuning seed: mean, the t-interval at `level`, and whether it is
    called (interval excludes 0). Fewer than two shared seeds: no interval, never called."""
    seeds = sorted(set(mine) & set(theirs))
    diffs = [mine[s] - theirs[s] for s in seeds]
    out = {"n": len(diffs), "diff": float(np.mean(diffs)) if diffs else None, "low": None, "high": None}
    if len(diffs) >= 2:
        half = (
            scipy_stats.t.ppf(0.5 + level / 2, len(diffs) - 1)
            * statistics.stdev(diffs)
            / math.sqrt(len(diffs))
        )
        out.update(low=out["diff"] - half, high=out["diff"] + half)
    out["called"] = out["low"] is not None and (out["low"] > 0 or out["high"] < 0)
    return out


def _correct(rows: dict, who: str) -> np.ndarray:
    """[probe seeds, n] bool for one probe's ``mine``/``ref``/``emb`` packed rows."""
    return np.stack([unpack_correct(text, rows["n"]) for text in rows[who]])


def _drawn_accuracy(correct: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """[replicates] accuracy on the drawn rows ``idx`` [replicates, n], averaged over the probe seeds of
    ``correct`` [probe seeds, n]."""
    return np.mean([c[idx].mean(axis=1) for c in correct], axis=0)


def paired_row_bootstrap(
    mine: dict[str, dict],
    theirs: dict[str, dict],
    replicates: int = REPLICATES,
    level: float = 0.95,
    seed: int = BOOTSTRAP_SEED,
) -> dict:
    """Retention difference of two models paired by probe test row, as the accuracy table's CAP effect is
    paired by evaluation row (capbench.report.cap_effect).

    ``mine`` and ``theirs``: {fine-tuning seed: {probe: rows}} with rows as kept in a record's
    ``probes.retention.test_rows`` (``n`` test rows; per probe seed, which rows this model, the pre-trained
    reference at its reference layer and the reference's embeddings got right). Both models must share the
    reference (the same probes, corpus and protocol), so ``ref`` and ``emb`` are read from ``mine``.

    Per replicate, each probe's test rows are drawn with replacement (one draw for every fine-tuning seed and
    probe seed: it is one fixed test split) and, with two or more fine-tuning seeds, the seeds are drawn too;
    acc, acc_ref and acc0 are recomputed on the drawn rows (means over probe seeds), retention difference
    (acc_mine − acc_theirs) / (acc_ref − acc0) averaged over the probes both share, then over the drawn
    seeds. The interval is the percentile interval at ``level``; a replicate whose reference gap is not
    positive on some probe is dropped (counted in ``dropped``). Probes whose rows were not scored against the
    same reference rows are left out; no shared seed or probe: no interval.
    """
    seeds = sorted(set(mine) & set(theirs))
    probes = sorted(set.intersection(*(set(mine[s]) & set(theirs[s]) for s in seeds))) if seeds else []
    # rows pair only under one reference: the same test size and the same reference and embeddings rows
    probes = [
        p
        for p in probes
        if len(
            {(r[p]["n"], tuple(r[p]["ref"]), tuple(r[p]["emb"])) for s in seeds for r in (mine[s], theirs[s])}
        )
        == 1
    ]
    out = {"n": len(seeds), "probes": probes, "diff": None, "low": None, "high": None, "dropped": 0}
    if not seeds or not probes:
        out["called"] = False
        return out
    rng = np.random.default_rng(seed)
    draws_seeds = (
        rng.integers(0, len(seeds), size=(replicates, len(seeds)))
        if len(seeds) > 1
        else np.zeros((replicates, 1), dtype=int)
    )
    per_probe_point, per_probe_reps = [], []
    for probe in probes:
        n = mine[seeds[0]][probe]["n"]
        idx = rng.integers(0, n, size=(replicates, n))
        ref, emb = _correct(mine[seeds[0]][probe], "ref"), _correct(mine[seeds[0]][probe], "emb")
        gap_point = ref.mean() - emb.mean()
        gap_reps = _drawn_accuracy(ref, idx) - _drawn_accuracy(emb, idx)
        point, reps = [], []
        for s in seeds:
            a, b = _correct(mine[s][probe], "mine"), _correct(theirs[s][probe], "mine")
            point.append((a.mean() - b.mean()) / gap_point)
            diff = _drawn_accuracy(a, idx) - _drawn_accuracy(b, idx)
            with np.errstate(divide="ignore", invalid="ignore"):
                reps.append(np.where(gap_reps > 0, diff / gap_reps, np.nan))
        per_probe_point.append(np.mean(point))
        per_probe_reps.append(np.stack(reps, axis=1))  # [replicates, seeds]
    by_seed = np.mean(per_probe_reps, axis=0)  # [replicates, seeds]: mean over probes
    values = np.take_along_axis(by_seed, draws_seeds, axis=1).mean(axis=1)
    kept = values[np.isfinite(values)]
    tail = (1 - level) / 2 * 100
    out.update(
        diff=float(np.mean(per_probe_point)),
        low=float(np.percentile(kept, tail)) if len(kept) else None,
        high=float(np.percentile(kept, 100 - tail)) if len(kept) else None,
        dropped=int(replicates - len(kept)),
    )
    out["called"] = out["low"] is not None and (out["low"] > 0 or out["high"] < 0)
    return out


def _teachers(row: dict, other: dict, seed: str) -> tuple:
    return (row.get("teacher_by_seed") or {}).get(seed), (other.get("teacher_by_seed") or {}).get(seed)


def _other_teacher_seeds(row: dict, other: dict) -> set[str]:
    """The shared seeds whose two models learned from different dense teachers (a grid run across machines
    retrains the teacher): their difference is not paired."""
    shared = set(row.get("retention_by_seed") or {}) & set(other.get("retention_by_seed") or {})
    return {seed for seed in shared if teacher_mismatch(*_teachers(row, other, seed))}


def _retrained_teacher_seeds(row: dict, other: dict) -> set[str]:
    """The shared seeds whose two models learned from one teacher recipe trained twice (on machines whose
    rounding differs; ``report.frame.teacher_relation``): paired, and the line says so."""
    shared = set(row.get("retention_by_seed") or {}) & set(other.get("retention_by_seed") or {})
    return {s for s in shared if teacher_relation(*_teachers(row, other, s)) == "retrained"}


def _without(by_seed: dict, seeds: set[str]) -> dict:
    return {seed: value for seed, value in by_seed.items() if seed not in seeds}


def paired_lines(rows: list[dict]) -> list[str]:
    """Markdown lines: every (row, its baseline) pair per task and sparsity, with the paired interval."""
    lines = []
    cells = [r for r in rows if r.get("n")]
    keyed = {(r["task"], r["sparsity"], r["row"]): r for r in cells}
    labels: dict[tuple, set[str]] = {}  # (task, sparsity) -> the row labels on that page
    for task, sparsity, label in keyed:
        labels.setdefault((task, sparsity), set()).add(label)
    for row in sorted(cells, key=lambda r: (r["task"], r["sparsity"], r["row"])):
        base = baseline_of(row["row"], row["method"], labels[row["task"], row["sparsity"]])
        if base is None:
            continue
        other = keyed[(row["task"], row["sparsity"], base)]
        where = f"{row['task']} {100 * float(row['sparsity']):g}%: {row['row']} − {base}"
        apart = _other_teacher_seeds(row, other)
        if apart and not (set(row["retention_by_seed"]) & set(other["retention_by_seed"])) - apart:
            lines.append(f"- {where}: not paired: {teacher_mismatch(*_teachers(row, other, min(apart)))}")
            continue
        mine_rows, their_rows = (_without(r.get("rows_by_seed") or {}, apart) for r in (row, other))
        d = paired_row_bootstrap(mine_rows, their_rows)
        left_out = f"; seed {', '.join(sorted(apart))} left out: another teacher" if apart else ""
        if retrained := _retrained_teacher_seeds(row, other) - apart:
            left_out += f"; seed {', '.join(sorted(retrained))}: teacher retrained"
        if d["low"] is not None:
            how = f"95% bootstrap over probe test rows, paired, {d['n']} seed{'s' if d['n'] > 1 else ''}{left_out}"
        else:
            mine, theirs = (_without(r["retention_by_seed"], apart) for r in (row, other))
            d, how = paired_difference(mine, theirs), None
            if d["diff"] is None:
                continue
            if d["low"] is None:
                lines.append(
                    f"- {where}: {d['diff']:+.3f} (n = {d['n']} seed, no interval; not called{left_out})"
                )
                continue
            how = f"95% t, n = {d['n']} seeds{left_out}"
        verdict = (
            f"{row['row'] if d['diff'] > 0 else base} keeps more"
            if d["called"]
            else "not distinguishable from 0"
        )
        lines.append(f"- {where}: {d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] ({how}): {verdict}")
    return lines


def _intro(frame: pd.DataFrame, kept: pd.DataFrame) -> str:
    names: list[str] = []
    for joined in kept["probe_names"]:
        names += [n for n in str(joined).split(", ") if n and n not in names]
    excluded = sorted({e for e in kept["probe_excluded"] if e})
    text = (
        "Retention = (acc − acc₀) / (acc_ref − acc₀) at the pre-trained model's best encoder layer (chosen on "
        "dev), where acc₀ is the pre-trained model's embeddings-only accuracy: 1 keeps what the pre-trained "
        "encoder adds, 0 is no better than the embeddings. Floor rows are broken encoders (random weights; "
        "encoder linears zeroed). Chance-corr. = (acc − chance) / (1 − chance); selectivity = task − control "
        f"accuracy (generated probes). {kept.iloc[0]['probe_pooling']} pooling; mean over the probes "
        f"{', '.join(names) or '(none valid)'}; retention as mean ± std over fine-tuning seeds (n)."
    )
    if excluded:
        text += " Left out (reference too close to chance or its embeddings): " + "; ".join(excluded) + "."
    return text


def _outro(frame: pd.DataFrame, kept: pd.DataFrame) -> str:
    from capbench.report.tables import table_rows

    parts = []
    lines = paired_lines(table_rows(PROBES, frame))
    if lines:
        parts.append("Paired differences in retention:\n\n" + "\n".join(lines))
    outdated = int(frame["probe_outdated"].sum()) if "probe_outdated" in frame else 0
    if outdated:
        parts.append(
            f"{outdated} record(s) hold probe results from before retention was measured against the "
            "embeddings baseline; `capbench run --probes ...` on their run directory measures them again."
        )
    return "\n\n".join(parts)


def _empty(frame: pd.DataFrame) -> str:
    """Why a page with probe results has no probe row: outdated records, or no probe valid for its reference."""
    current = frame[frame["has_probes"].astype(bool) & ~frame["probe_outdated"].astype(bool)]
    excluded = sorted({e for e in current.get("probe_excluded", pd.Series(dtype=object)).dropna() if e})
    parts = []
    if excluded:
        parts.append(
            "No valid probe: the pre-trained reference does not clear chance and its own embeddings by the "
            "retention margin on any probe of these records (" + "; ".join(excluded) + ")."
        )
    outro = _outro(frame, current) if len(frame) else ""
    return "\n\n".join(p for p in (*parts, outro) if p)


PROBES = Table(
    name="probes",
    title="## Linear probes: what the pruned encoder keeps of the pre-trained one",
    keys=("task", "row"),
    aggregate=probe_cell,
    lead=(Col("task", lambda row: row["task"], when=varies("task")), Col("row", lambda row: row["row"])),
    cells=(
        Col("{label} retention", show_retention, align="right"),
        Col("{label} chance-corr.", lambda row: _fmt(row.get("chance_corrected")), align="right"),
        Col("{label} select.", lambda row: _fmt(row.get("selectivity")), align="right"),
    ),
    spread="sparsity",
    spread_label=lambda s: f"{100 * float(s):g}%",
    where=lambda f: f["status"].eq("done") & f["probe_retention"].notna(),
    present=lambda f: bool(f["has_probes"].any()),
    order=_order,
    extra_rows=_reference_rows,
    missing="-",
    empty=_empty,
    intro=_intro,
    outro=_outro,
)
