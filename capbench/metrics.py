"""GLUE metrics with GLUE's definitions, computed with scikit-learn and scipy (no hub scripts)."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from capbench.registry import Registry


def accuracy(predictions, references) -> float:
    return float(accuracy_score(references, predictions))


def f1(predictions, references) -> float:
    return float(f1_score(y_true=references, y_pred=predictions))


def matthews_correlation(predictions, references) -> float:
    return float(matthews_corrcoef(references, predictions))


def pearson(predictions, references) -> float:
    return float(pearsonr(predictions, references)[0])


def spearman(predictions, references) -> float:
    return float(spearmanr(predictions, references)[0])


METRICS: Registry = Registry("metric")  # name -> fn(predictions, references) -> float; a task YAML names them
for _name, _fn in (
    ("accuracy", accuracy),
    ("f1", f1),
    ("matthews_correlation", matthews_correlation),
    ("pearson", pearson),
    ("spearmanr", spearman),
):
    METRICS.register(_name, _fn)
# Correlations are undefined (0/0) when either side is constant; a collapsed model predicts a constant.
CORRELATIONS = ("pearson", "spearmanr")


def predictions_from_logits(logits: np.ndarray, regression: bool) -> np.ndarray:
    return logits[:, 0] if regression else logits.argmax(axis=-1)


def undefined_reason(name: str, predictions: np.ndarray, references: np.ndarray) -> str | None:
    """Why metric `name` has no value on these predictions, or None when it is defined."""
    if len(predictions) == 0:
        return "no evaluation rows"
    if name in CORRELATIONS:
        if np.ptp(predictions) == 0:
            return "predictions are constant"
        if np.ptp(references) == 0:
            return "references are constant"
    return None


def undefined_metrics(names, predictions, references) -> dict[str, str]:
    """{metric: why it is undefined} for the metrics of `names` that have no value on these predictions."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    reasons = {name: undefined_reason(name, predictions, references) for name in names}
    return {name: reason for name, reason in reasons.items() if reason}


def compute_metrics(names, predictions, references) -> dict[str, float | None]:
    """Each metric's value; None where it is undefined (see `undefined_metrics` for why), never NaN.

    Raises ValueError on non-finite predictions (a fault of the model, not an undefined metric), or when
    a metric that should be defined comes out non-finite.
    """
    predictions = np.asarray(predictions)
    references = np.asarray(references)
    if predictions.dtype.kind == "f" and not np.isfinite(predictions).all():
        raise ValueError(f"{int((~np.isfinite(predictions)).sum())} predictions are not finite (nan or inf)")
    undefined = undefined_metrics(names, predictions, references)
    values = {}
    for name in names:
        if name in undefined:
            values[name] = None
            continue
        value = METRICS[name](predictions, references)
        if not np.isfinite(value):
            raise ValueError(f"{name} is {value} on finite predictions")
        values[name] = value
    return values


# ----------------------------------------------------------------------------------------------- chance

LABEL_FREE_CHANCE = ("matthews_correlation", "pearson", "spearmanr")  # chance is 0 whatever the labels


def chance_score(metric: str, labels=None) -> float:
    """The score of `metric` that needs no model, on an evaluation split with these `labels`:

    - accuracy: the majority-class rate of `labels` (always predicting the most frequent class);
    - f1: always predicting the positive class (label 1): 2p / (1 + p), p the positive rate of `labels`;
    - matthews_correlation, pearson, spearmanr: 0 (no association), `labels` are not needed.

    Raises ValueError for another metric, or for accuracy/f1 without labels.
    """
    if metric in LABEL_FREE_CHANCE:
        return 0.0
    if metric not in ("accuracy", "f1"):
        raise ValueError(f"no chance rule for metric {metric!r}")
    labels = np.asarray(labels if labels is not None else [])
    if labels.size == 0:
        raise ValueError(f"chance {metric} needs the evaluation labels")
    if metric == "accuracy":
        return float(np.unique(labels, return_counts=True)[1].max() / labels.size)
    positive = float(np.mean(labels == 1))
    return 2 * positive / (1 + positive)


def chance_sampling_error(metric: str, chance: float, rows: int) -> float:
    """The standard error of a chance-level score measured on `rows` evaluation rows.

    accuracy and f1: the binomial sqrt(c (1 - c) / rows) of the chance rate c; matthews_correlation,
    pearson and spearmanr: 1 / sqrt(rows), the standard error of a correlation with no true association.
    """
    if rows <= 0:
        return 0.0
    if metric in LABEL_FREE_CHANCE:
        return 1 / math.sqrt(rows)
    return math.sqrt(max(chance * (1 - chance), 0.0) / rows)


def chance_margin(metric: str, chance: float, rows: int, seed_std: float = 0.0, seeds: int = 1) -> float:
    """How far from chance a mean score still counts as chance: 2 x max(seed standard error, sampling
    standard error). The seed standard error is seed_std / sqrt(seeds) when there are 2 or more seeds (else
    0); the sampling standard error is `chance_sampling_error(metric, chance, rows)`."""
    seed_error = seed_std / math.sqrt(seeds) if seeds >= 2 and seed_std else 0.0
    return 2 * max(seed_error, chance_sampling_error(metric, chance, rows))


def versus_chance(value: float, chance: float, margin: float) -> str:
    """ "at" when |value - chance| <= margin, "below" when value is further below chance, else "above"."""
    if abs(value - chance) <= margin:
        return "at"
    return "below" if value < chance else "above"
