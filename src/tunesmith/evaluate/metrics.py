"""Classification metrics, computed from logits and true classes."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

PRIMARY_METRIC = "accuracy"


def classification_metrics(logits: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    predicted = logits.argmax(axis=1)
    return {
        "accuracy": float(accuracy_score(targets, predicted)),
        "macro_f1": float(f1_score(targets, predicted, average="macro", zero_division=0)),
    }


def majority_baseline(train_targets: np.ndarray, test_targets: np.ndarray) -> dict[str, float]:
    """What always predicting the most frequent training class scores on the test part."""
    majority = np.bincount(train_targets).argmax()
    return {"accuracy": float(np.mean(test_targets == majority))}
