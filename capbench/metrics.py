"""GLUE metrics with GLUE's definitions, computed with scikit-learn and scipy (no hub scripts)."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


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


METRICS = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson,
    "spearmanr": spearman,
}


def predictions_from_logits(logits: np.ndarray, regression: bool) -> np.ndarray:
    return logits[:, 0] if regression else logits.argmax(axis=-1)


def compute_metrics(names, predictions, references) -> dict[str, float]:
    predictions = np.asarray(predictions)
    references = np.asarray(references)
    return {name: METRICS[name](predictions, references) for name in names}
