"""Cheap signals before any fine-tuning: a linear probe on each candidate backbone's frozen
features ranks the backbones, and those far behind the best are dropped from the search.

A probe takes one forward pass over the training and validation rows and a logistic (or ridge)
regression fitted in seconds; how well it does says how close the data is to what the backbone
was pretrained on (Kornblith et al. 2019: linear-probe and fine-tuned accuracy rank ImageNet
models alike). A backbone is dropped only when its probe trails the best one by more than two
standard errors of the validation score, so noise on a few hundred rows drops nothing close.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tunesmith.evaluate.metrics import Objective

STANDARD_ERRORS = 2.0


def probe_score(
    train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
    objective: Objective,
) -> float:
    """The validation objective of a linear model on standardized features (classification:
    accuracy of a logistic regression; regression: RMSE of a ridge regression)."""
    if objective.kind == "regression":
        model = make_pipeline(StandardScaler(), Ridge(alpha=1.0))
        model.fit(train_x, train_y.ravel())
        errors = model.predict(val_x) - val_y.ravel()
        return float(np.sqrt(np.mean(errors**2)))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=1.0))
    model.fit(train_x, train_y)
    return float(np.mean(model.predict(val_x) == val_y))


def standard_error(score: float, rows: int, objective: Objective) -> float:
    """Of an accuracy on `rows` rows (binomial), or of an RMSE (about RMSE / sqrt(2 rows))."""
    if objective.kind == "regression":
        return score / math.sqrt(2 * max(1, rows))
    return math.sqrt(max(score * (1 - score), 1e-4) / max(1, rows))


def surviving(scores: dict[str, float], rows: int, objective: Objective) -> list[str]:
    """The candidates whose probe is within two standard errors of the best one's, best first."""
    sign = 1.0 if objective.greater_is_better else -1.0
    ordered = sorted(scores, key=lambda name: -sign * scores[name])
    best = scores[ordered[0]]
    margin = STANDARD_ERRORS * standard_error(best, rows, objective)
    return [name for name in ordered if sign * (best - scores[name]) <= margin]
