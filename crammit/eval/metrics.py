"""GLUE's metrics, computed by scikit-learn and scipy so that scores compare with published ones."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

_CLASSIFICATION: dict[str, Callable[..., float]] = {
    "accuracy": accuracy_score,
    # Binary, class 1 positive (MRPC's paraphrases, QQP's duplicates). Where neither the
    # labels nor the predictions have a positive (a small subset), 0 without a warning.
    "f1": partial(f1_score, zero_division=0.0),
    "matthews": matthews_corrcoef,
}
_CORRELATION: dict[str, Callable] = {"pearson": pearsonr, "spearman": spearmanr}
METRICS = (*_CLASSIFICATION, *_CORRELATION)


def score(metric: str, predictions: np.ndarray, labels: np.ndarray) -> float:
    """metric (one of METRICS) of the predictions against the labels, as a fraction:
    class ids for classification, scores for STS-B's correlations."""
    if metric in _CLASSIFICATION:
        return float(_CLASSIFICATION[metric](labels, predictions))
    if metric in _CORRELATION:
        # A fine-tune that collapsed to a constant has no correlation to report: scipy
        # would warn and give nan, which would poison averages over tasks and seeds.
        if np.ptp(predictions) == 0 or np.ptp(labels) == 0:
            return 0.0
        return float(_CORRELATION[metric](labels, predictions).statistic)
    raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
