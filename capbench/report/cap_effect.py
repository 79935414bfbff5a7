"""The leaderboard's `cap_effect` table: CAP − its criterion, with a 95% interval paired by evaluation example.

Pairs: at each (task, criterion, sparsity, seed), the default CAP cell (row ``cap_<criterion>``: all modules,
both losses) and its criterion's cell trained with KD from the same teacher on the same budget (row
``<criterion> +KD``; CAP's loss is that KD loss plus its contrastive terms), gradual regime, the same preset,
model, data and training settings.  "The same teacher" is checked where the records say which one
(``report.frame.teacher_relation``: the teacher's weights hash, else its training run): the teacher is
retrained on each machine, and a pair across two trainings of one recipe whose final losses agree to rounding
is kept and marked "teacher retrained"; a pair across teachers that differ otherwise is left out, with the
reason.  Both models predicted the same evaluation rows, stored per example beside
each record (``capbench.predictions``), so their difference is taken on the same rows.

Interval (``paired_bootstrap``): B = 2,000 replicates.  In each, the evaluation rows are drawn with replacement
(one draw shared by both models and by every seed: it is one evaluation split) and, with two or more seeds,
the seeds are drawn with replacement too; the replicate's value is the mean over the drawn seeds of
metric(CAP) − metric(criterion), the metric recomputed on the drawn rows.  The interval is the 2.5th and 97.5th
percentiles; where it covers 0 the cell says "not distinguishable from 0".  With one seed the interval is
about evaluation rows only: a second training seed can move a cell by more (see the main table's ± std).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from capbench.errors import CapbenchError
from capbench.report.frame import register_column, teacher_mismatch, teacher_relation
from capbench.report.tables import BY_SPARSITY_KEY, Col, Table

REPLICATES = 2000
LEVEL = 0.95
BOOTSTRAP_SEED = 0
CRITERIA = ("magnitude", "movement", "soft_movement", "first_order")
NOT_DISTINGUISHABLE = "not distinguishable from 0"
# Spec fields the two cells of a pair must share (method, options, KD and CAP differ by design).
SHARED = ("task", "model_identity", "preset", "data", "max_train_examples", "max_eval_examples")
SHARED += ("max_seq_length", "data_sample_seed", "train", "sparsity", "seed")


# ------------------------------------------------------------------------------------- metric on weights
def _counts(w: np.ndarray, pred: np.ndarray, label: np.ndarray) -> tuple:
    """Weighted TP, TN, FP, FN of a binary task (positive class 1) for each row of weights ``w`` (B, n)."""
    p, y = pred == 1, label == 1
    return w @ (p & y), w @ (~p & ~y), w @ (p & ~y), w @ (~p & y)


def weighted_metric(name: str, w: np.ndarray, pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """The metric ``name`` of ``pred`` against ``label`` with each row counted ``w[b, i]`` times, for every
    replicate b; ``w`` of shape (B, n), returns (B,).  At w = 1 it equals ``capbench.metrics`` (accuracy,
    binary F1, MCC and Pearson, each 0 where scikit-learn returns 0 for a zero denominator).
    Raises ValueError for a metric without a weighted form here (Spearman's ranks)."""
    total = w.sum(axis=1)
    if name == "accuracy":
        return (w @ (pred == label)) / total
    if name == "f1":
        tp, _, fp, fn = _counts(w, pred, label)
        denominator = 2 * tp + fp + fn
        return np.divide(
            2 * tp, denominator, out=np.zeros_like(denominator, dtype=float), where=denominator > 0
        )
    if name == "matthews_correlation":
        tp, tn, fp, fn = (c.astype(float) for c in _counts(w, pred, label))
        denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        numerator = tp * tn - fp * fn
        return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)
    if name == "pearson":
        x, y = pred.astype(float), label.astype(float)
        mx, my = (w @ x) / total, (w @ y) / total
        cov = (w @ (x * y)) / total - mx * my
        vx, vy = (w @ (x * x)) / total - mx**2, (w @ (y * y)) / total - my**2
        denominator = np.sqrt(np.clip(vx, 0, None) * np.clip(vy, 0, None))
        return np.divide(cov, denominator, out=np.zeros_like(cov), where=denominator > 0)
    raise ValueError(f"no paired bootstrap for {name}: it has no per-row weighted form here")


def paired_bootstrap(
    metric: str,
    pairs: list[tuple[np.ndarray, np.ndarray]],
    label: np.ndarray,
    replicates: int = REPLICATES,
    level: float = LEVEL,
    seed: int = BOOTSTRAP_SEED,
    draw_seeds: bool = True,
) -> dict:
    """CAP − criterion on one evaluation split over seeds: ``pairs`` holds per seed (CAP's predictions, the
    criterion's), aligned with ``label`` (n rows).  Returns {"difference": the mean over seeds on all rows,
    "low", "high": the interval at ``level``, "seeds", "rows", "replicates"} (see the module docstring).
    ``draw_seeds=False`` holds the seeds fixed and draws only the rows (the same row draws)."""
    rng = np.random.default_rng(seed)
    n, k = len(label), len(pairs)
    ones = np.ones((1, n))
    per_seed = np.array(
        [
            weighted_metric(metric, ones, a, label)[0] - weighted_metric(metric, ones, b, label)[0]
            for a, b in pairs
        ]
    )
    rows = rng.multinomial(n, np.full(n, 1.0 / n), size=replicates).astype(float)  # (B, n) row counts
    differences = np.stack(
        [weighted_metric(metric, rows, a, label) - weighted_metric(metric, rows, b, label) for a, b in pairs]
    )  # (k, B)
    if k > 1 and draw_seeds:
        seeds = rng.multinomial(k, np.full(k, 1.0 / k), size=replicates).T  # (k, B) seed counts
        values = (differences * seeds).sum(axis=0) / k
    else:
        values = differences.mean(axis=0)
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return {
        "difference": float(per_seed.mean()),
        "low": float(low),
        "high": float(high),
        "seeds": k,
        "rows": n,
        "replicates": replicates,
    }


# ------------------------------------------------------------------------------------------- the table
def _arrays(examples: dict, split: str) -> dict:
    """The per-example arrays of ``split`` from a record's predictions file (its sha256 checked)."""
    from capbench.predictions import read_predictions

    record = {"cell_id": examples["cell_id"], "predictions": examples["ref"]}
    return read_predictions(record, Path(examples["folder"]))[split]


def _aligned(arrays: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(arrays["idx"], kind="stable")
    return arrays["idx"][order], arrays["prediction"][order], arrays["label"][order]


def effect_cell(group: pd.DataFrame) -> dict:
    """One (task, criterion, sparsity): the paired bootstrap over the seeds that have both cells with
    per-example predictions; {"status": "no pair"|"done"|..., ...} with the reason when not done."""
    return paired_effect(
        group[group["effect_side"] == "cap"].set_index("seed"),
        group[group["effect_side"] == "criterion"].set_index("seed"),
        ("CAP better", "CAP worse"),
        "no seed has both the CAP cell and the criterion's +KD cell",
    )


def paired_effect(cap: pd.DataFrame, base: pd.DataFrame, verdicts: tuple[str, str], none: str) -> dict:
    """``cap`` − ``base`` (frame rows of finished cells, indexed by seed): ``paired_bootstrap`` over the seeds
    both have, each pair checked for the same settings (``SHARED``), teacher and evaluation rows; a pair that
    fails a check is left out with its reason (``skipped``).  ``verdicts``: the words for an interval above 0
    and below 0; ``none``: the reason when no seed has both.  Returns {"status": "done", "metric",
    "difference", "low", "high", "seeds", "rows", "replicates", "seed_list", "verdict"} or {"status": "no
    pair"|"no interval", "reason"}, with "retrained_teacher": the seeds paired across one teacher recipe trained
    twice (``report.frame.teacher_relation``), where any."""
    seeds = sorted(set(cap.index) & set(base.index), key=str)
    if not seeds:
        return {"status": "no pair", "reason": none}
    metric = str(cap.loc[seeds[0], "metric"])
    label, pairs, used, skipped, retrained = None, [], [], {}, []
    for seed in seeds:
        a, b = cap.loc[seed], base.loc[seed]
        if not a["examples"] or not b["examples"]:
            skipped[seed] = "a predictions file is in none of the run directories"
            continue
        if {k: a["configuration"].get(k) for k in SHARED} != {k: b["configuration"].get(k) for k in SHARED}:
            skipped[seed] = "the two cells differ in settings other than the method"
            continue
        if reason := teacher_mismatch(a["teacher_run"], b["teacher_run"]):
            skipped[seed] = f"{reason}, so they are not paired"
            continue
        try:
            idx_a, pred_a, label_a = _aligned(_arrays(a["examples"], a["split"]))
            idx_b, pred_b, label_b = _aligned(_arrays(b["examples"], b["split"]))
        except (CapbenchError, KeyError) as exc:
            skipped[seed] = str(exc)
            continue
        if not (np.array_equal(idx_a, idx_b) and np.array_equal(label_a, label_b)):
            skipped[seed] = "the two cells were evaluated on different rows"
            continue
        if label is not None and not np.array_equal(label, label_a):
            skipped[seed] = "another seed's evaluation rows differ"
            continue
        label = label_a
        pairs.append((pred_a, pred_b))
        used.append(seed)
        if teacher_relation(a["teacher_run"], b["teacher_run"]) == "retrained":
            retrained.append(seed)
    if not pairs:
        return {"status": "no pair", "reason": "; ".join(f"seed {k}: {v}" for k, v in skipped.items())}
    try:
        result = paired_bootstrap(metric, pairs, label)
    except ValueError as exc:
        return {"status": "no interval", "reason": str(exc), "metric": metric}
    covers = result["low"] <= 0 <= result["high"]
    return {
        "status": "done",
        "metric": metric,
        **result,
        "seed_list": [_seed(s) for s in used],
        "verdict": NOT_DISTINGUISHABLE if covers else (verdicts[0] if result["low"] > 0 else verdicts[1]),
        **({"skipped": {str(k): v for k, v in skipped.items()}} if skipped else {}),
        **({"retrained_teacher": [_seed(s) for s in retrained]} if retrained else {}),
    }


def _seed(seed):
    return int(seed) if isinstance(seed, int | float) else seed


def show_effect(row: dict) -> str:
    """A paired cell as "+d [low, high] (n seeds; verdict)", naming the seeds paired across a retrained
    teacher (``report.frame.teacher_relation``)."""
    if row.get("status") != "done":
        return row.get("status", "–")
    text = f"{100 * row['difference']:+.1f} [{100 * row['low']:+.1f}, {100 * row['high']:+.1f}]"
    seeds = row["seeds"]
    retrained = row.get("retrained_teacher")
    across = f"; seed {', '.join(map(str, retrained))}: teacher retrained" if retrained else ""
    return f"{text} ({seeds} seed{'s' if seeds > 1 else ''}; {row['verdict']}{across})"


def _side(record) -> tuple[str | None, str | None]:
    """("cap", criterion) for a default CAP cell over one of CRITERIA, ("criterion", criterion) for that
    criterion's gradual +KD cell, (None, None) otherwise."""
    from capbench.leaderboard import KD_SUFFIX, row_label
    from capbench.methods import cap_name

    spec = record.get("spec") or {}
    if "method" not in spec:
        return None, None
    row = row_label(spec)
    for criterion in CRITERIA:
        if row == cap_name(criterion):
            return "cap", criterion
        if row == criterion + KD_SUFFIX:
            return "criterion", criterion
    return None, None


register_column("effect_side", lambda record: _side(record)[0])
register_column("effect_criterion", lambda record: _side(record)[1])


def _where(frame: pd.DataFrame) -> pd.Series:
    """The finished pruned cells of either side, of a (task, criterion) that has at least one CAP cell: a
    criterion the grid never ran CAP over on that task gets no row of "no pair"."""
    cells = frame["status"].eq("done") & frame["effect_side"].notna() & frame["sparsity"].gt(0)
    with_cap = frame[cells & frame["effect_side"].eq("cap")]
    pairs = set(zip(with_cap["task"], with_cap["effect_criterion"], strict=True))
    keys = zip(frame["task"], frame["effect_criterion"], strict=True)
    return cells & pd.Series([key in pairs for key in keys], index=frame.index, dtype=bool)


def paired_method(source: str) -> str:
    """How a paired table's intervals are made (``paired_effect``), naming the module ``source`` that pairs."""
    return (
        f"paired by evaluation example within a seed; 95% interval from {REPLICATES:,} bootstrap replicates over "
        f'evaluation rows and, with several seeds, over seeds ({source}). "{NOT_DISTINGUISHABLE}": the interval '
        "covers 0"
    )


def _intro(frame: pd.DataFrame, kept: pd.DataFrame) -> str:
    return (
        "CAP's default cell minus its criterion's cell trained with KD from the same teacher (×100), "
        f"{paired_method('capbench/report/cap_effect.py')}."
    )


CAP_EFFECT = Table(
    name="cap_effect",
    title="## CAP − criterion, paired by evaluation example",
    keys=("task", "effect_criterion"),
    aggregate=effect_cell,
    lead=(Col("task", lambda r: r["task"]), Col("criterion", lambda r: r["effect_criterion"])),
    cells=(Col("{label}", show_effect),),
    **BY_SPARSITY_KEY,
    where=_where,
    present=lambda f: bool(_where(f).any()),
    intro=_intro,
    empty="No CAP cell has its criterion's +KD cell to pair with.",
)
