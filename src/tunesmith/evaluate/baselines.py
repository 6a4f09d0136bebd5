"""What simple methods score on the same split: the yardsticks a fine-tune is read against.

Every run fits, on the training part alone, and scores on the val and test parts:

- `majority` (`mean` for regression): the most frequent training class, each label the training
  part mostly has, or the training mean;
- the classic model of the modality: `tfidf_logistic` for text (TF-IDF of words and word pairs +
  logistic regression, C by cross-validation), `pixel_logistic` for images (logistic regression
  on 16x16 RGB pixels), `gradient_boosting` for tables (histogram gradient boosting);
- `linear_probe`: a linear model on the pretrained backbone's frozen, pooled features, fitted on
  at most 5,000 training rows (not for a network trained from scratch).

Regression fits ridge regression where logistic regression is named; multilabel fits one
model per label. A baseline's outputs take the fine-tuned model's form (log-probabilities,
logits, or numbers in the target's units), so the same metrics, intervals and paired differences
apply to both.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import logit
from sklearn.base import BaseEstimator
from sklearn.compose import TransformedTargetRegressor
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, Ridge, RidgeCV
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

PIXELS = 16  # images are shrunk to PIXELS x PIXELS RGB for the classic baseline
PROBABILITY_FLOOR = 1e-7  # for a class the training part lacks, or one rounded to 0


@dataclass(frozen=True)
class Baseline:
    name: str
    about: str  # what it is, in a few words
    val: np.ndarray  # outputs on the val part, in the model's form
    test: np.ndarray


@dataclass(frozen=True)
class Parts:
    """One representation of the three parts (texts, pixels, features) and their targets."""

    train: Any
    val: Any
    test: Any
    train_targets: np.ndarray
    classes: int


def majority(kind: str, parts: Parts) -> Baseline:
    y = parts.train_targets
    if kind == "classification":
        counts = np.bincount(y.astype(int), minlength=parts.classes).astype(np.float64)
        # The most frequent class, a shade above the rest: the argmax is the majority class.
        share = np.maximum(counts / counts.sum(), PROBABILITY_FLOOR)
        share[counts.argmax()] += 1e-6
        row = np.log(share / share.sum())
        about = "the most frequent training class"
    elif kind == "multilabel":
        row = np.where(y.mean(axis=0) > 0.5, 1.0, -1.0)
        about = "each label the training part mostly has"
    else:
        row = np.array([float(np.mean(y))])
        about = "the training mean"
    name = "mean" if kind == "regression" else "majority"
    return Baseline(name, about, _constant(row, parts.val, kind), _constant(row, parts.test, kind))


def _constant(row: np.ndarray, part: Any, kind: str) -> np.ndarray:
    return np.broadcast_to(row, (len(part), len(row))).astype(
        np.float64 if kind == "regression" else np.float32)


def fitted(name: str, about: str, kind: str, parts: Parts,
           make: Callable[[str], BaseEstimator]) -> Baseline:
    """A scikit-learn estimator (`make(kind)`) fitted on the training part."""
    estimator = make(kind)
    if kind == "multilabel":
        estimator = OneVsRestClassifier(estimator)
    if kind == "regression":  # fitted on standardized targets, as the model is: gradient
        # boosting sums its gradients in float32, which a target past 1e19 squared overflows
        estimator = TransformedTargetRegressor(estimator, transformer=StandardScaler())
    with warnings.catch_warnings():  # a slow convergence or a constant label is not the user's
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn's changing defaults
        estimator.fit(parts.train, parts.train_targets)
        outputs = [_outputs(estimator, kind, part, parts.classes)
                   for part in (parts.val, parts.test)]
    return Baseline(name, about, *outputs)


def _outputs(estimator: Any, kind: str, part: Any, classes: int) -> np.ndarray:
    if kind == "regression":
        return np.asarray(estimator.predict(part), dtype=np.float64).reshape(-1, 1)
    probabilities = np.asarray(estimator.predict_proba(part), dtype=np.float64)
    if kind == "multilabel":
        odds = logit(np.clip(probabilities, PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR))
        return np.asarray(odds, dtype=np.float32)
    full = np.full((len(probabilities), classes), PROBABILITY_FLOOR)
    # a floor under what a confident model rounds to 0: its log stays finite
    full[:, np.asarray(estimator.classes_, dtype=int)] = np.maximum(probabilities,
                                                                    PROBABILITY_FLOOR)
    return np.asarray(np.log(full / full.sum(axis=1, keepdims=True)), dtype=np.float32)


def _folds(targets: np.ndarray, kind: str) -> int:
    """Cross-validation folds for choosing C: 5, fewer when a class is that rare."""
    if kind != "classification":
        return 5
    rarest = int(np.bincount(targets.astype(int)).clip(min=1).min())
    return max(2, min(5, rarest))


def text_model(targets: np.ndarray) -> Callable[[str], BaseEstimator]:
    def make(kind: str) -> BaseEstimator:
        words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
        if kind == "regression":
            return make_pipeline(words, RidgeCV(alphas=(0.1, 1.0, 10.0)))
        if kind == "multilabel":
            return make_pipeline(words, LogisticRegression(C=4.0, max_iter=1000))
        if _folds(targets, kind) < 2 or len(targets) < 10:
            return make_pipeline(words, LogisticRegression(C=4.0, max_iter=1000))
        return make_pipeline(words, LogisticRegressionCV(
            Cs=[0.5, 2.0, 8.0, 32.0], cv=_folds(targets, kind), max_iter=1000))
    return make


def linear_model(kind: str) -> BaseEstimator:
    """Standardized features, then logistic (C = 1) or ridge regression."""
    if kind == "regression":
        return make_pipeline(StandardScaler(), Ridge(alpha=1.0))
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))


def boosted_trees(kind: str) -> BaseEstimator:
    if kind == "regression":
        return HistGradientBoostingRegressor(random_state=0)
    return HistGradientBoostingClassifier(random_state=0)


def pixels(paths: list[str]) -> np.ndarray:
    """Each image shrunk to 16 x 16 RGB, as 768 numbers in [0, 1], decoded as the model sees it
    (`open_image`: a 16-bit scan stretched to its range, transparency on white; Pillow's own
    conversion made 16-bit digits all white, and the baseline scored chance)."""
    from PIL import Image

    from tunesmith.data.image_scan import open_image

    rows = np.empty((len(paths), PIXELS * PIXELS * 3), dtype=np.float32)
    for i, path in enumerate(paths):
        small = open_image(path, "RGB").resize((PIXELS, PIXELS), Image.Resampling.BILINEAR)
        rows[i] = np.asarray(small, dtype=np.float32).reshape(-1) / 255.0
    return rows


def baseline_record(
    kind: str, baselines: list[Baseline], *, model_val: tuple[np.ndarray, np.ndarray],
    model_test: tuple[np.ndarray, np.ndarray], seed: int,
    model_resampled: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """metrics.json's `baselines`: per baseline its test metrics (as DESIGN's schema has them),
    what it is, its val metrics, and the fine-tuned model's paired difference from it on each
    part (model minus baseline, with a 95% interval). `model_resampled` holds the model's
    `bootstrap_values` of a part (same rows, same seed) where the caller computed them."""
    from tunesmith.evaluate.intervals import bootstrap_values, differences
    from tunesmith.evaluate.metrics import evaluation_metrics

    parts = {"val": model_val, "test": model_test}
    given = model_resampled or {}  # the model's bootstrap values of a part, if made already
    resampled = {name: given[name] if name in given else
                 bootstrap_values(kind, *pair, seed=seed) if len(pair[1]) else {}
                 for name, pair in parts.items()}
    model_scores = {name: evaluation_metrics(kind, *pair) if len(pair[1]) else {}
                    for name, pair in parts.items()}
    record: dict[str, Any] = {}
    for baseline in baselines:
        scores: dict[str, dict[str, float]] = {}
        gaps: dict[str, dict[str, Any]] = {}
        for name, (_, targets) in parts.items():
            outputs = getattr(baseline, name)
            if not len(targets):
                scores[name], gaps[name] = {}, {}
                continue
            scores[name] = evaluation_metrics(kind, outputs, targets)
            intervals = differences(resampled[name], bootstrap_values(kind, outputs, targets,
                                                                      seed=seed))
            gaps[name] = {
                metric: {"value": model_scores[name][metric] - value,
                         **({"ci95": list(intervals[metric])} if metric in intervals else {})}
                for metric, value in scores[name].items() if metric in model_scores[name]
            }
        record[baseline.name] = {**scores["test"], "about": baseline.about, "val": scores["val"],
                                 "difference": gaps["test"], "val_difference": gaps["val"]}
    return record
