"""GLUE metrics: the values scikit-learn and scipy give, and 0 where a correlation is undefined."""

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from crammit.eval.glue_data import TASKS
from crammit.eval.metrics import METRICS, score


@pytest.fixture
def classes() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    return np.where(rng.random(200) < 0.75, labels, 1 - labels), labels


@pytest.fixture
def scores() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    labels = rng.uniform(0, 5, 200).astype(np.float32)
    return (labels + rng.normal(0, 1, 200)).astype(np.float32), labels


def test_classification_metrics_are_sklearns(classes):
    predictions, labels = classes
    assert score("accuracy", predictions, labels) == accuracy_score(labels, predictions)
    assert score("f1", predictions, labels) == f1_score(labels, predictions)
    assert score("matthews", predictions, labels) == matthews_corrcoef(labels, predictions)
    assert 0.5 < score("accuracy", predictions, labels) < 1


def test_correlations_are_scipys(scores):
    predictions, labels = scores
    assert score("pearson", predictions, labels) == pearsonr(labels, predictions).statistic
    assert score("spearman", predictions, labels) == spearmanr(labels, predictions).statistic
    assert 0.5 < score("spearman", predictions, labels) < 1


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("metric", ["pearson", "spearman"])
def test_a_constant_correlates_0_without_warnings(scores, metric):
    predictions, labels = scores
    assert score(metric, np.full_like(predictions, 2.5), labels) == 0.0
    assert score(metric, predictions, np.full_like(labels, 3.0)) == 0.0


@pytest.mark.filterwarnings("error")
def test_no_positives_scores_f1_0_without_warnings():
    assert score("f1", np.zeros(4, np.int64), np.zeros(4, np.int64)) == 0.0


def test_every_tasks_metrics_are_known_and_unknown_ones_raise():
    assert {metric for task in TASKS.values() for metric in task.metrics} <= set(METRICS)
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        score("bleu", np.zeros(2), np.zeros(2))
