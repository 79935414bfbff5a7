import numpy as np
import pytest

from capbench.errors import CapbenchError
from capbench.metrics import compute_metrics
from capbench.tasks import all_tasks, get_task, parse_task_list

GLUE = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"]


def test_every_glue_task_has_a_spec():
    tasks = all_tasks()
    assert sorted(tasks) == sorted(GLUE)
    for task in tasks.values():
        assert task.dataset == "nyu-mll/glue"
        assert task.main_metric in task.metrics
        assert task.regression == (task.num_labels == 1)


def test_task_specific_declarations():
    assert get_task("mnli").eval_splits == ("validation_matched", "validation_mismatched")
    assert get_task("mnli").main_eval_split == "validation_matched"
    assert get_task("cola").main_metric == "matthews_correlation"
    assert set(get_task("stsb").metrics) == {"pearson", "spearmanr"}
    assert "f1" in get_task("mrpc").metrics and "f1" in get_task("qqp").metrics


def test_unknown_task_names_the_known_ones():
    with pytest.raises(CapbenchError, match="known tasks: cola"):
        parse_task_list("rte,nope")


def test_metrics_follow_glue_definitions():
    predictions = np.array([1, 0, 1, 1, 0, 1])
    references = np.array([1, 0, 0, 1, 1, 1])
    scores = compute_metrics(["accuracy", "f1", "matthews_correlation"], predictions, references)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    # F1 of the positive class: precision 3/4, recall 3/4.
    assert scores["f1"] == pytest.approx(0.75)
    tp, tn, fp, fn = 3, 1, 1, 1
    mcc = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert scores["matthews_correlation"] == pytest.approx(mcc)
    reg = compute_metrics(["pearson", "spearmanr"], np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 1, 2, 3.0]))
    assert reg["pearson"] == pytest.approx(np.corrcoef([0.1, 0.4, 0.35, 0.8], [0, 1, 2, 3])[0, 1])
    assert reg["spearmanr"] == pytest.approx(0.8)


@pytest.mark.parametrize("config", ["cola", "mrpc", "stsb", "mnli"])
def test_metrics_match_evaluate_glue(config):
    evaluate = pytest.importorskip("evaluate", reason="evaluate is not installed")
    try:
        metric = evaluate.load("glue", config)
    except Exception as exc:
        pytest.skip(
            f"evaluate's glue metric script cannot be loaded here (it lives on the hub): {type(exc).__name__}"
        )
    rng = np.random.default_rng(0)
    if config == "stsb":
        predictions, references = rng.normal(size=50), rng.normal(size=50)
    else:
        predictions, references = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    expected = metric.compute(predictions=predictions, references=references)
    ours = compute_metrics(list(expected), predictions, references)
    for name, value in expected.items():
        assert ours[name] == pytest.approx(value)
