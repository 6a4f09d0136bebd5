"""Task metrics from a model's raw outputs, and which one decides (the objective).

| kind | outputs | metrics | objective |
|---|---|---|---|
| classification | logits (n, classes) | accuracy, macro-F1 | accuracy (higher is better) |
| multilabel | logits (n, classes); 0 is p = 0.5 | micro-F1, macro-F1, subset accuracy | micro-F1 |
| regression | predictions (n, 1), target units | RMSE, MAE, R² | RMSE (lower is better) |

These are what every epoch and trial is scored on. The evaluation of the final model reports more
(`evaluation_metrics`): for classification balanced accuracy, log loss, AUROC (binary, or the
one-vs-rest macro average) and top-5 accuracy from 10 classes on; for multilabel the mean average
precision; and a per-class table (`per_class`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.special import expit, log_softmax
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

TOP_K = 5
TOP_K_FROM_CLASSES = 10  # top-5 accuracy says something only with many classes
ECE_BINS = 15


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
    """Accuracy and macro-F1 from one confusion matrix: they score every epoch of every trial,
    and scikit-learn's argument checks cost more than the counting on a small part."""
    predicted = logits.argmax(axis=1)
    truth = np.asarray(targets).astype(np.int64).reshape(-1)
    if len(truth) == 0:
        return {"accuracy": 0.0, "macro_f1": 0.0}
    classes = int(max(logits.shape[1], truth.max() + 1))
    confusion = np.bincount(truth * classes + predicted, minlength=classes * classes).reshape(
        classes, classes)
    hits = np.diag(confusion).astype(np.float64)
    true_rows, predicted_rows = confusion.sum(axis=1), confusion.sum(axis=0)
    # As scikit-learn: the classes present in the targets or the predictions, an F1 of 0 where
    # a class has no true or predicted rows.
    present = (true_rows + predicted_rows) > 0
    f1 = np.divide(2 * hits, true_rows + predicted_rows, out=np.zeros(classes),
                   where=present)
    return {
        "accuracy": float(hits.sum() / len(truth)),
        "macro_f1": float(f1[present].mean()),
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
    predicted, truth = centered(predictions, targets)
    error = predicted - truth
    squared = float(np.sum(error**2))
    spread = float(np.sum((truth - truth.mean()) ** 2)) if len(truth) else 0.0
    return {
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mae": float(np.mean(np.abs(error))),
        "r2": r2_from(squared, spread),
    }


def centered(predictions: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and targets in float64, less one of the targets (near their middle): the
    errors are the same, but sums of squared targets no longer lose the digits that matter (a
    target near 1e10 with a spread of 100), and a constant target becomes exact zeros."""
    predicted = np.asarray(predictions, dtype=np.float64).reshape(-1)
    truth = np.asarray(targets, dtype=np.float64).reshape(-1)
    if not len(truth):
        return predicted, truth
    middle = truth[np.argsort(truth, kind="stable")[len(truth) // 2]]
    return predicted - middle, truth - middle


def r2_from(squared: float, spread: float) -> float:
    """R² from the sum of squared errors and of squared deviations of the truth; where the truth
    does not vary, 1 for exact predictions and 0 otherwise (scikit-learn's force_finite)."""
    if spread > 0:
        return 1.0 - squared / spread
    return 1.0 if squared == 0 else 0.0


def evaluation_metrics(kind: str, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """What the evaluation of a final model reports for a part: `task_metrics` and the rest."""
    metrics = task_metrics(kind, outputs, targets)
    if kind == "classification":
        metrics.update(_more_classification(outputs, targets))
    elif kind == "multilabel":
        average_precision = mean_average_precision(outputs, targets)
        if average_precision is not None:
            metrics["mean_average_precision"] = average_precision
    return metrics


def _more_classification(logits: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    targets = targets.astype(int)
    log_probs = log_softmax(logits.astype(np.float64), axis=1)
    classes = logits.shape[1]
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": as intended
        warnings.simplefilter("ignore", UserWarning)
        balanced = float(balanced_accuracy_score(targets, logits.argmax(axis=1)))
    metrics = {
        "balanced_accuracy": balanced,
        "log_loss": float(-log_probs[np.arange(len(targets)), targets].mean()),
        "ece": expected_calibration_error(log_probs, targets),
    }
    auroc = auroc_ovr(log_probs, targets)
    if auroc is not None:
        metrics["auroc"] = auroc
    if classes >= TOP_K_FROM_CLASSES:
        metrics[f"top_{TOP_K}_accuracy"] = float(np.mean(top_k_hits(logits, targets, TOP_K)))
    return metrics


def confidence_bins(log_probs: np.ndarray, targets: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(each row's bin of its top probability among `ECE_BINS` equal bins of [0, 1], that
    probability, whether its class is right)."""
    confidence = np.exp(log_probs.max(axis=1))
    correct = (log_probs.argmax(axis=1) == targets).astype(np.float64)
    bins = np.minimum((confidence * ECE_BINS).astype(int), ECE_BINS - 1)
    return bins, confidence, correct


def expected_calibration_error(log_probs: np.ndarray, targets: np.ndarray) -> float:
    """ECE (Guo et al. 2017): over 15 equal-width bins of the top probability, the row-weighted
    gap between the mean confidence and the accuracy of each bin."""
    bins, confidence, correct = confidence_bins(log_probs, targets.astype(int))
    gaps = np.bincount(bins, confidence - correct, minlength=ECE_BINS)
    return float(np.abs(gaps).sum() / max(1, len(targets)))


def top_k_hits(logits: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """Whether each row's true class is among its k highest outputs. Ties go to the lower class
    index, as `argmax` breaks them for accuracy, so a row right at top 1 is right at top k
    (`argpartition` picks among ties arbitrarily and left the predicted class out of 0.07% of
    rows of small whole-number logits). The true class's rank is counted, not sorted for."""
    true = np.take_along_axis(logits, targets[:, None], axis=1)
    above = (logits > true).sum(axis=1)
    tied_before = ((logits == true) & (np.arange(logits.shape[1]) < targets[:, None])).sum(axis=1)
    hits: np.ndarray = (above + tied_before < k) & ~np.isnan(true[:, 0])
    return hits


def auroc_classes(targets: np.ndarray, classes: int) -> list[int]:
    """The classes an AUROC can be computed for: present, and not every row's."""
    counts = np.bincount(targets, minlength=classes)
    return [c for c in range(classes) if 0 < counts[c] < len(targets)]


def auroc_ovr(log_probs: np.ndarray, targets: np.ndarray) -> float | None:
    """The area under the ROC curve: of class 1's probability with two classes, else the macro
    average of each class against the rest (scikit-learn's `multi_class="ovr"`), over the
    classes present in `targets`; None when fewer than two classes are present."""
    classes = log_probs.shape[1]
    present = auroc_classes(targets, classes)
    if not present:
        return None
    if classes == 2:
        return float(roc_auc_score(targets, log_probs[:, 1] - log_probs[:, 0]))
    return float(np.mean([roc_auc_score(targets == c, log_probs[:, c]) for c in present]))


def mean_average_precision(logits: np.ndarray, targets: np.ndarray) -> float | None:
    """Average precision of each label's score, averaged over labels that have a positive."""
    truth = targets > 0.5
    labels = [j for j in range(truth.shape[1]) if truth[:, j].any()]
    if not labels:
        return None
    scores = expit(logits.astype(np.float64))
    return float(np.mean([average_precision_score(truth[:, j], scores[:, j]) for j in labels]))


def per_class(
    kind: str, outputs: np.ndarray, targets: np.ndarray, classes: list[str]
) -> list[dict[str, float | int | str]]:
    """Precision, recall, F1 and support of each class (each label, for multilabel)."""
    if kind == "classification":
        truth, predicted = targets.astype(int), outputs.argmax(axis=1)
    else:
        truth, predicted = (targets > 0.5).astype(int), (outputs > 0).astype(int)
    labels = list(range(len(classes))) if kind == "classification" else None
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=0)
    return [
        {"label": name, "precision": float(p), "recall": float(r), "f1": float(f),
         "support": int(n)}
        for name, p, r, f, n in zip(classes, precision, recall, f1, support, strict=True)
    ]
