"""Calibration of a classifier's probabilities: temperature scaling and reliability.

A fine-tuned network is often overconfident: of the rows it calls 95% sure, fewer than 95% are
right. Temperature scaling (Guo et al. 2017, "On calibration of modern neural networks") divides
the logits by one number T fitted on validation rows to minimize their log loss; the predicted
classes stay the same (T > 0 keeps the order), only the probabilities move. The bundle keeps T and
applies it at prediction time. For an ensemble the outputs are log mean probabilities, scaled the
same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from tunesmith.evaluate.metrics import ECE_BINS, confidence_bins, expected_calibration_error

LOG_T_RANGE = (-3.0, 3.0)  # T from 0.05 to 20


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The T > 0 that minimizes the mean negative log-likelihood of softmax(logits / T) within
    0.05..20; 1 when the rows do not pin one down: none, or every row right (the likelihood then
    only grows as T shrinks toward 0). The log loss is convex in 1/T, so a minimum beyond the
    range is approached by the end of it: an overconfident model (margins of 200 on 80% right)
    is softened by 20 rather than left as it was (val log loss 2.1, not 42)."""
    if not len(targets) or bool(np.all(logits.argmax(axis=1) == targets)):
        return 1.0
    logits = logits.astype(np.float64)
    targets = targets.astype(int)
    rows = np.arange(len(targets))

    def loss(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[rows, targets].mean())

    found = minimize_scalar(loss, bounds=LOG_T_RANGE, method="bounded",
                            options={"xatol": 1e-5})
    best = min([found.x, *LOG_T_RANGE], key=loss)  # "bounded" stops just short of an end
    return float(np.exp(best)) if loss(best) < loss(0.0) else 1.0


def scaled(logits: np.ndarray, temperature: float) -> np.ndarray:
    return (logits / temperature).astype(logits.dtype)


@dataclass(frozen=True)
class Calibration:
    temperature: float
    fitted: bool  # False: validation could not pin a temperature down, so none (1) is applied
    val_ece_before: float
    val_ece_after: float
    test_ece_before: float | None = None
    test_ece_after: float | None = None

    def to_json(self) -> dict[str, float | bool | None]:
        return {"temperature": self.temperature, "fitted": self.fitted,
                "val_ece_before": self.val_ece_before, "val_ece_after": self.val_ece_after,
                "test_ece_before": self.test_ece_before, "test_ece_after": self.test_ece_after}


def _ece(logits: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    return expected_calibration_error(
        log_softmax(logits.astype(np.float64) / temperature, axis=1), targets)


def calibrate(val_logits: np.ndarray, val_targets: np.ndarray,
              test: tuple[np.ndarray, np.ndarray] | None = None) -> Calibration:
    """The temperature fitted on validation, and the ECE before and after it on validation and
    (when given, for the record only) test."""
    temperature = fit_temperature(val_logits, val_targets)
    return Calibration(
        temperature, temperature != 1.0,
        _ece(val_logits, val_targets, 1.0), _ece(val_logits, val_targets, temperature),
        *((_ece(*test, 1.0), _ece(*test, temperature)) if test and len(test[1]) else (None,
                                                                                   None)),
    )


def reliability(logits: np.ndarray, targets: np.ndarray) -> list[dict[str, float]]:
    """Per bin of the top probability (15 equal bins of [0, 1]; empty ones left out): its range,
    rows, mean confidence and accuracy. Points of a reliability diagram."""
    bins, confidence, correct = confidence_bins(
        log_softmax(logits.astype(np.float64), axis=1), targets.astype(int))
    rows = np.bincount(bins, minlength=ECE_BINS)
    confidence_sum = np.bincount(bins, confidence, minlength=ECE_BINS)
    correct_sum = np.bincount(bins, correct, minlength=ECE_BINS)
    return [
        {"low": b / ECE_BINS, "high": (b + 1) / ECE_BINS, "rows": int(rows[b]),
         "confidence": float(confidence_sum[b] / rows[b]),
         "accuracy": float(correct_sum[b] / rows[b])}
        for b in range(ECE_BINS) if rows[b]
    ]
