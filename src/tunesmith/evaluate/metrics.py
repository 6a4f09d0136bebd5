"""Task metrics from a model's raw outputs, and which one decides (the objective).

| kind | outputs | metrics | objective |
|---|---|---|---|
| classification | logits (n, classes) | accuracy, macro-F1 | accuracy (higher is better) |
| multilabel | logits (n, classes); 0 is p = 0.5 | micro-F1, macro-F1, subset accuracy | micro-F1 |
| regression | predictions (n, 1), target units | RMSE, MAE, R² | RMSE (lower is better) |
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
)


@dataclass(frozen=True)
class Objective:
    """The metric that chooses between epochs, trials and models, and its direction."""

    kind: str
    metric: str
    greater_is_better: bool

    def better(self, value: float, than: float | None) -> bool:
        if than is None:
            return True
        return value > than if self.greater_is_better else value < than

    @property
    def direction(self) -> str:
        """Optuna's word for it."""
        return "maximize" if self.greater_is_better else "minimize"

    def score(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        return task_metrics(self.kind, outputs, targets)


OBJECTIVES = {
    "classification": Objective("classification", "accuracy", True),
    "multilabel": Objective("multilabel", "micro_f1", True),
    "regression": Objective("regression", "rmse", False),
}


def objective_for(kind: str) -> Objective:
    return OBJECTIVES[kind]


def task_metrics(kind: str, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    if kind == "classification":
        return classification_metrics(outputs, targets)
    if kind == "multilabel":
        return multilabel_metrics(outputs, targets)
    return regression_metrics(outputs, targets)


def classification_metrics(logits: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    predicted = logits.argmax(axis=1)
    return {
        "accuracy": float(accuracy_score(targets, predicted)),
        "macro_f1": float(f1_score(targets, predicted, average="macro", zero_division=0)),
    }


def multilabel_metrics(logits: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    predicted = (logits > 0).astype(int)  # sigmoid(logit) > 0.5
    truth = (targets > 0.5).astype(int)
    return {
        "micro_f1": float(f1_score(truth, predicted, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        "subset_accuracy": float(np.mean((predicted == truth).all(axis=1))),
    }


def regression_metrics(predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    predicted = predictions.reshape(-1)
    truth = targets.reshape(-1)
    return {
        "rmse": float(np.sqrt(mean_squared_error(truth, predicted))),
        "mae": float(mean_absolute_error(truth, predicted)),
        "r2": float(r2_score(truth, predicted)) if len(truth) > 1 else 0.0,
    }


def majority_baseline(
    kind: str, train_targets: np.ndarray, test_targets: np.ndarray
) -> dict[str, float]:
    """What a model that ignores its input scores on the test part: the most frequent training
    class, each label the training part mostly has, or the training mean."""
    if kind == "classification":
        majority = np.bincount(train_targets.astype(int)).argmax()
        return {"accuracy": float(np.mean(test_targets == majority))}
    if kind == "multilabel":
        usual = (train_targets.mean(axis=0) > 0.5).astype(float)
        logits = np.where(np.broadcast_to(usual, test_targets.shape) > 0, 1.0, -1.0)
        return multilabel_metrics(logits, test_targets)
    mean = float(np.mean(train_targets))
    return regression_metrics(np.full(len(test_targets), mean), test_targets)
