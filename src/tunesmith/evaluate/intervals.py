"""95% confidence intervals of the task metrics, by a seeded percentile bootstrap.

Each resample draws the rows with replacement; a metric's interval is the 2.5th and 97.5th
percentile of its value over the resamples. The resamples are vectorized: every metric here is
a function of sums over rows (a confusion matrix, error moments, per-label counts), so a block
of resamples is one index matrix, one gather and one sum, however many rows there are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95
BLOCK_CELLS = 4_000_000  # resamples x rows gathered at once (about 32 MB of indices)

Metrics = dict[str, np.ndarray]  # metric name -> its value on each resample


def bootstrap_intervals(
    kind: str, outputs: np.ndarray, targets: np.ndarray, *, resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """{metric: (low, high)} for the metrics `tunesmith.evaluate.metrics.task_metrics` reports."""
    rows, summarize = _row_statistics(kind, outputs, targets)
    values: dict[str, list[np.ndarray]] = {}
    for sums in _resampled_sums(rows, resamples, seed):
        for name, value in summarize(sums).items():
            values.setdefault(name, []).append(value)
    tail = (1.0 - LEVEL) / 2 * 100
    return {
        name: (float(np.percentile(np.concatenate(parts), tail)),
               float(np.percentile(np.concatenate(parts), 100 - tail)))
        for name, parts in values.items()
    }


def standard_error(low: float, high: float) -> float:
    """The standard error a 95% interval implies (its half-width over 1.96)."""
    return (high - low) / (2 * 1.96)


@dataclass(frozen=True)
class _Cells:
    """Per-row statistics that are one of `size` categories: summed as counts per category."""

    codes: np.ndarray
    size: int

    def __len__(self) -> int:
        return len(self.codes)


def _resampled_sums(rows: np.ndarray | _Cells, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of (resamples, statistics): each resample's column sums of `rows` (n, k), or its
    counts of each category."""
    count = len(rows)
    rng = np.random.default_rng(seed)
    block = max(1, BLOCK_CELLS // max(1, count))
    for start in range(0, resamples, block):
        size = min(block, resamples - start)
        drawn = rng.integers(0, count, size=(size, count))
        offsets = np.arange(size, dtype=np.int64)[:, None]
        if isinstance(rows, _Cells):
            cells = (rows.codes[drawn] + offsets * rows.size).ravel()
            yield np.bincount(cells, minlength=size * rows.size).reshape(size, rows.size)
        else:  # how often each row was drawn, times the rows: one matrix product
            times = np.bincount((drawn + offsets * count).ravel(), minlength=size * count)
            yield times.reshape(size, count).astype(rows.dtype) @ rows


def _row_statistics(
    kind: str, outputs: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray | _Cells, Callable[[np.ndarray], Metrics]]:
    """(per-row statistics (n, k), how the summed statistics give each metric)."""
    if kind == "classification":
        return _classification(outputs, targets)
    if kind == "multilabel":
        return _multilabel(outputs, targets)
    return _regression(outputs, targets)


def _classification(
    logits: np.ndarray, targets: np.ndarray
) -> tuple[_Cells, Callable[[np.ndarray], Metrics]]:
    classes = logits.shape[1]
    # Each row's cell of the confusion matrix (true class, predicted class): a resample's counts
    # of the cells are its confusion matrix.
    cells = targets.astype(np.int64) * classes + logits.argmax(axis=1)

    def summarize(counts: np.ndarray) -> Metrics:
        confusion = counts.reshape(-1, classes, classes)
        hits = np.diagonal(confusion, axis1=1, axis2=2)
        actual, called = confusion.sum(axis=2), confusion.sum(axis=1)
        present = (actual + called) > 0  # scikit-learn averages over the labels it sees
        f1 = _ratio(2 * hits, actual + called)
        return {"accuracy": hits.sum(axis=1) / len(cells),
                "macro_f1": (f1 * present).sum(axis=1) / present.sum(axis=1)}

    return _Cells(cells, classes * classes), summarize


def _multilabel(
    logits: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, Callable[[np.ndarray], Metrics]]:
    predicted = logits > 0
    truth = targets > 0.5
    labels = truth.shape[1]
    rows = np.concatenate([
        predicted & truth, predicted & ~truth, ~predicted & truth,
        (predicted == truth).all(axis=1, keepdims=True),
    ], axis=1).astype(np.float32)

    def summarize(sums: np.ndarray) -> Metrics:
        tp, fp, fn = (sums[:, i * labels:(i + 1) * labels] for i in range(3))
        micro = _ratio(2 * tp.sum(axis=1), 2 * tp.sum(axis=1) + fp.sum(axis=1) + fn.sum(axis=1))
        macro = _ratio(2 * tp, 2 * tp + fp + fn).mean(axis=1)
        count = len(rows)
        return {"micro_f1": micro, "macro_f1": macro, "subset_accuracy": sums[:, -1] / count}

    return rows, summarize


def _regression(
    predictions: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, Callable[[np.ndarray], Metrics]]:
    predicted = predictions.reshape(-1).astype(np.float64)
    truth = targets.reshape(-1).astype(np.float64)
    error = predicted - truth
    rows = np.stack([error**2, np.abs(error), truth, truth**2], axis=1)
    count = len(rows)

    def summarize(sums: np.ndarray) -> Metrics:
        squared, absolute, total, total_sq = (sums[:, i] for i in range(4))
        spread = total_sq - total**2 / count  # the resample's sum of squared deviations
        r2 = 1.0 - _ratio(squared, spread, empty=np.inf)
        return {"rmse": np.sqrt(squared / count), "mae": absolute / count,
                "r2": np.where(spread > 0, r2, 0.0)}

    return rows, summarize


def _ratio(top: np.ndarray, bottom: np.ndarray, *, empty: float = 0.0) -> np.ndarray:
    """top / bottom, `empty` where bottom is 0 (scikit-learn's zero_division=0 for F1)."""
    safe = np.where(bottom > 0, bottom, 1.0)
    return np.where(bottom > 0, top / safe, empty)


def scored_with_intervals(
    kind: str, outputs: np.ndarray, targets: np.ndarray, *, seed: int = 0
) -> dict[str, dict[str, float | list[float]]]:
    """{metric: {"value": v, "ci95": [low, high]}}: metrics.json's form of a part's scores."""
    from tunesmith.evaluate.metrics import task_metrics

    values = task_metrics(kind, outputs, targets)
    intervals = bootstrap_intervals(kind, outputs, targets, seed=seed) if len(targets) else {}
    return {
        name: {"value": value, **({"ci95": list(intervals[name])} if name in intervals else {})}
        for name, value in values.items()
    }
