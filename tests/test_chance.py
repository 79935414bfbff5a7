"""Chance scores of a task's evaluation split (capbench.metrics) and the noise band around them."""

import math

import numpy as np
import pytest

from capbench.metrics import chance_margin, chance_score, f1, versus_chance


@pytest.mark.parametrize(
    ("labels", "majority"),
    [([0, 0, 0, 1], 0.75), ([2, 1, 2, 0, 2], 0.6), ([1, 0], 0.5), ([1] * 9 + [0], 0.9)],
)
def test_accuracy_chance_is_the_majority_rate_of_the_labels(labels, majority):
    assert chance_score("accuracy", labels) == pytest.approx(majority)


def test_f1_chance_is_always_predicting_the_positive_class():
    labels = np.array([1] * 25 + [0] * 75)
    assert chance_score("f1", labels) == pytest.approx(2 * 0.25 / 1.25)
    assert chance_score("f1", labels) == pytest.approx(f1(np.ones_like(labels), labels))


@pytest.mark.parametrize("metric", ["matthews_correlation", "pearson", "spearmanr"])
def test_correlation_chance_is_zero_without_labels(metric):
    assert chance_score(metric) == 0.0
    assert chance_score(metric, [0.1, 3.0, 2.2]) == 0.0


def test_chance_refuses_a_metric_without_a_rule_or_labels_it_needs():
    with pytest.raises(ValueError, match="needs the evaluation labels"):
        chance_score("accuracy")
    with pytest.raises(ValueError, match="no chance rule"):
        chance_score("bleu", [1, 0])


def test_margin_is_twice_the_larger_of_seed_and_sampling_error():
    sampling = math.sqrt(0.5 * 0.5 / 256)
    assert chance_margin("accuracy", 0.5, 256) == pytest.approx(2 * sampling)
    assert chance_margin("accuracy", 0.5, 256, seed_std=0.3, seeds=1) == pytest.approx(2 * sampling)
    assert chance_margin("accuracy", 0.5, 256, seed_std=0.3, seeds=4) == pytest.approx(2 * 0.3 / 2)
    assert chance_margin("matthews_correlation", 0.0, 400) == pytest.approx(2 / 20)


def test_versus_chance_is_at_within_the_margin_else_below_or_above():
    assert versus_chance(0.52, 0.5, 0.03) == "at"
    assert versus_chance(0.48, 0.5, 0.03) == "at"
    assert versus_chance(0.40, 0.5, 0.03) == "below"
    assert versus_chance(0.60, 0.5, 0.03) == "above"
