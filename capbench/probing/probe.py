"""Linear probes: standardised features, logistic regression, C chosen on dev (SentEval's practice).

For every layer and seed: a StandardScaler fit on train, one LogisticRegression per C in the grid fit on
train, the C with the best dev accuracy kept (ties go to the smaller C), and only that probe is scored on
test. A control task is probed at the task's C (not re-tuned), and its train accuracy is reported: a control
the probe cannot fit even on train measures nothing (Hewitt & Liang 2019). The test split is never seen before C is fixed. Seeds re-partition the task's examples
(`ProbeTask.resplit`); test accuracy is reported as mean and std (ddof=0) over seeds. The best layer is the
one with the best mean *dev* accuracy, so choosing it does not peek at test either.

The fits run with one BLAS thread: these problems are small, and a multi-threaded BLAS on a shared CPU
makes them tens of times slower, not faster.
"""

from __future__ import annotations

import base64
import copy
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from capbench.probing.tasks import ProbeTask

C_GRID = (0.001, 0.01, 0.1, 1.0)
MAX_ITER = 500
DEFAULT_SEEDS = (0, 1, 2)


def accuracy(predicted: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(np.asarray(predicted) == np.asarray(gold))) if len(gold) else 0.0


def pack_correct(predicted: np.ndarray, gold: np.ndarray) -> str:
    """Which test rows a probe got right, in test-row order, as base64 of the packed bits (8 rows a byte):
    what a paired bootstrap over test rows needs, about 100 characters for 600 rows."""
    bits = np.packbits(np.asarray(predicted) == np.asarray(gold))
    return base64.b64encode(bits.tobytes()).decode("ascii")


def unpack_correct(text: str, n: int) -> np.ndarray:
    """[n] bool: the inverse of ``pack_correct`` for a test split of ``n`` rows."""
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))
    if len(bits) < n or len(bits) > n + 7:
        raise ValueError(f"packed test rows hold {len(bits)} bits, not {n} rows")
    return bits[:n].astype(bool)


def select_c(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_dev: np.ndarray,
    y_dev: np.ndarray,
    c_grid: Sequence[float] = C_GRID,
    max_iter: int = MAX_ITER,
) -> tuple[float, LogisticRegression, list[float]]:
    """Fit one probe per C (ascending, warm-started) on train; return (best C, its probe, dev accuracies)."""
    clf = LogisticRegression(max_iter=max_iter, warm_start=True)
    best: tuple[float, LogisticRegression] | None = None
    scores: list[float] = []
    best_score = -1.0
    for c in sorted(c_grid):
        clf.set_params(C=c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(x_train, y_train)
        score = accuracy(clf.predict(x_dev), y_dev)
        scores.append(score)
        if score > best_score:
            best_score, best = score, (c, copy.deepcopy(clf))
    assert best is not None
    return best[0], best[1], scores


def fit_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_dev: np.ndarray,
    y_dev: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    c_grid: Sequence[float] = C_GRID,
    max_iter: int = MAX_ITER,
) -> dict:
    """Scale on train, choose C on dev, score the chosen probe once on test."""
    with threadpool_limits(limits=1):
        return _fit_probe(x_train, y_train, x_dev, y_dev, x_test, y_test, c_grid, max_iter)


def _fit_probe(x_train, y_train, x_dev, y_dev, x_test, y_test, c_grid, max_iter) -> dict:
    scaler = StandardScaler().fit(x_train)
    x_train = scaler.transform(x_train)
    c, clf, dev_scores = select_c(x_train, y_train, scaler.transform(x_dev), y_dev, c_grid, max_iter)
    predicted = clf.predict(scaler.transform(x_test))
    train = accuracy(clf.predict(x_train), y_train)
    return {
        "C": c,
        "dev_acc": max(dev_scores),
        "test_acc": accuracy(predicted, y_test),
        "train_acc": train,
        "test_correct": pack_correct(predicted, y_test),
    }


def fit_fixed_c(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    c: float,
    max_iter: int = MAX_ITER,
) -> dict:
    """One probe at a given C (no selection): train and test accuracy. The control task's probe uses the
    real task's C (Hewitt & Liang 2019 compare a task and its control at the same probe capacity)."""
    with threadpool_limits(limits=1):
        scaler = StandardScaler().fit(x_train)
        x_train = scaler.transform(x_train)
        clf = LogisticRegression(max_iter=max_iter, C=c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(x_train, y_train)
        return {
            "C": c,
            "train_acc": accuracy(clf.predict(x_train), y_train),
            "test_acc": accuracy(clf.predict(scaler.transform(x_test)), y_test),
        }


def probe_task(
    features: np.ndarray, task: ProbeTask, c_grid: Sequence[float] = C_GRID, max_iter: int = MAX_ITER
) -> dict:
    """One probe on (n_texts, dim) features with the task's current split."""
    tr, dv, te = (task.indices(s) for s in ("train", "dev", "test"))
    x = np.asarray(features, dtype=np.float32)
    return fit_probe(x[tr], task.labels[tr], x[dv], task.labels[dv], x[te], task.labels[te], c_grid, max_iter)


def control_probe(features: np.ndarray, task: ProbeTask, c: float, max_iter: int = MAX_ITER) -> dict:
    """The control task of `task` (its current split) probed at the real task's C, plus its coverage: the
    fraction of test examples whose control word type also labels a train example (a control word never
    seen in train cannot be memorised, so coverage bounds what the control can learn)."""
    control = task.control()
    tr, te = control.indices("train"), control.indices("test")
    x = np.asarray(features, dtype=np.float32)
    out = fit_fixed_c(x[tr], control.labels[tr], x[te], control.labels[te], c, max_iter)
    if task.control_words is not None:
        seen = {task.control_words[i] for i in tr}
        out["coverage"] = float(np.mean([task.control_words[i] in seen for i in te])) if len(te) else 0.0
    return out


def _summary(runs: list[dict]) -> dict:
    accs = [r["test_acc"] for r in runs]
    return {
        "acc": float(np.mean(accs)),
        "std": float(np.std(accs)),
        "accs": accs,
        "dev_acc": float(np.mean([r["dev_acc"] for r in runs])),
        "train_acc": float(np.mean([r["train_acc"] for r in runs])),
        "C": [r["C"] for r in runs],
        "test_correct": [r["test_correct"] for r in runs],  # per seed, in the order of `accs`
    }


def probe_layers(
    features: np.ndarray,
    task: ProbeTask,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    c_grid: Sequence[float] = C_GRID,
    max_iter: int = MAX_ITER,
    control: bool = True,
) -> dict:
    """Per-layer probe accuracy (and control accuracy, selectivity) on (n_layers + 1, n_texts, dim) features."""
    features = np.asarray(features)
    if features.ndim != 3 or features.shape[1] != len(task.labels):
        raise ValueError(f"features of shape {features.shape} do not match {len(task.labels)} examples")
    with_control = control and task.control_labels is not None
    splits = [task.resplit(seed) for seed in seeds]
    layers = []
    for layer in range(features.shape[0]):
        runs = [probe_task(features[layer], t, c_grid, max_iter) for t in splits]
        entry = {"layer": layer, **_summary(runs)}
        if with_control:
            controls = [control_probe(features[layer], t, run["C"], max_iter) for t, run in zip(splits, runs)]
            accs = [c["test_acc"] for c in controls]
            entry.update(
                control_acc=float(np.mean(accs)),
                control_std=float(np.std(accs)),
                control_accs=accs,
                control_train_acc=float(np.mean([c["train_acc"] for c in controls])),
                control_coverage=float(np.mean([c.get("coverage", np.nan) for c in controls])),
                selectivity=entry["acc"] - float(np.mean(accs)),
            )
        layers.append(entry)
    best = max(layers, key=lambda e: (e["dev_acc"], -e["layer"]))
    result = {
        "n_classes": task.n_classes,
        "chance": task.chance,
        "sizes": task.sizes,
        "seeds": list(seeds),
        "layers": layers,
        "best_layer": best["layer"],
        "best": {k: best[k] for k in ("layer", "acc", "std", "dev_acc") if k in best},
    }
    if with_control:
        result["control_chance"] = task.control().chance
        result["best"].update(
            control_acc=best["control_acc"],
            control_train_acc=best["control_train_acc"],
            selectivity=best["selectivity"],
        )
    return result
