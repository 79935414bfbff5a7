"""A bag-of-n-grams floor for a GLUE single-sentence task (docs/presets.md, SST-2 at sparsity 0.9). An analysis
script, not part of capbench: it asks what a classifier with no encoder at all reaches on the same data, so a
pruned model's score can be read against it.

    python docs/experiments/lexical_baseline.py ../shared/glue/sst2

TF-IDF over word unigrams and bigrams (sublinear tf), then L2-regularised logistic regression whose C is
chosen by 5-fold cross-validation on the train split alone (scikit-learn's GridSearchCV); the
evaluation split is read once, for the reported accuracy. Deterministic (lbfgs, fixed folds).
Prints the chosen C, the cross-validated train accuracy and the evaluation accuracy (x100) with a 95% Wilson
interval over the evaluation rows. About 45 s of CPU for SST-2's 67,349 train rows. SST-2's train rows
include phrases of the same sentences, so folds share text and the cross-validated accuracy is optimistic;
the evaluation split holds whole sentences only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import norm
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold


def _rows(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    return [r["sentence"] for r in rows], np.array([r["label"] for r in rows])


def wilson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion, as fractions."""
    z = norm.ppf(0.5 + level / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def main(task_dir: str, eval_split: str = "validation") -> None:
    task = Path(task_dir)
    train_x, train_y = _rows(task / "train.jsonl")
    eval_x, eval_y = _rows(task / f"{eval_split}.jsonl")
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    features = vectorizer.fit_transform(train_x)
    search = GridSearchCV(
        LogisticRegression(max_iter=3000),
        {"C": [0.25, 0.5, 1, 2, 4, 8, 16]},
        cv=StratifiedKFold(5, shuffle=True, random_state=0),
        scoring="accuracy",
    ).fit(features, train_y)
    correct = int((search.predict(vectorizer.transform(eval_x)) == eval_y).sum())
    low, high = wilson(correct, len(eval_y))
    print(
        f"{task.name}: {len(train_y)} train rows, {features.shape[1]} n-gram features, C={search.best_params_['C']:g}"
    )
    print(f"cross-validated train accuracy {100 * search.best_score_:.2f}")
    print(
        f"{eval_split} accuracy {100 * correct / len(eval_y):.2f} [{100 * low:.2f}, {100 * high:.2f}] "
        f"({correct}/{len(eval_y)} rows)"
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
