"""95% confidence intervals of the evaluation metrics, by a seeded percentile bootstrap, and
paired intervals of the difference between two models scored on the same rows.

Each resample draws the rows with replacement; a metric's interval is the 2.5th and 97.5th
percentile of its value over the resamples. The resamples are vectorized: each metric is a
function of sums over rows (a confusion matrix, per-row losses and hits, error moments, per-label
counts), so a block of resamples is one index matrix, one gather and one sum, however many rows
there are. Two exceptions:
- AUROC is not a sum over rows; its resampled values are DeLong's linearization (each row's
  structural component: the share of the other class it outranks), exact on the full sample and
  first-order on a resample, for up to `AUROC_INTERVAL_CELLS` rows x classes;
- mean average precision (multilabel) is computed exactly on each resample from cumulative sums of
  the drawn rows' counts in score order, a pass over the rows per label.

The resamples depend only on the number of rows, the count and the seed, so two models scored on
the same rows with the same seed are scored on the same resamples: `paired_differences`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from scipy.special import log_softmax

from tunesmith.evaluate.metrics import (
    ECE_BINS,
    TOP_K,
    TOP_K_FROM_CLASSES,
    auroc_classes,
    centered,
    confidence_bins,
    top_k_hits,
)

RESAMPLES = 1000
LEVEL = 0.95
BLOCK_CELLS = 4_000_000  # resamples x rows gathered at once (about 32 MB of indices)
# AUROC's resampling holds two float32 components per row and class: 20 million cells (160 MB)
# take about 6 s here (10,000 rows of 1,000 classes); ImageNet's 50,000 x 1,000 have none.
AUROC_INTERVAL_CELLS = 20_000_000

Metrics = dict[str, np.ndarray]  # metric name -> its value on each resample


def bootstrap_values(
    kind: str, outputs: np.ndarray, targets: np.ndarray, *, resamples: int = RESAMPLES,
    seed: int = 0,
) -> Metrics:
    """{metric: its value on each resample} for the metrics `evaluation_metrics` reports (those
    with an interval)."""
    plan = _plan(kind, outputs, targets)
    values: dict[str, list[np.ndarray]] = {}
    for drawn in _resamples(len(targets), resamples, seed):
        counts = sums = None
        if plan.cells is not None:
            size, cells = len(drawn), plan.cells
            offsets = np.arange(size, dtype=np.int64)[:, None] * cells.size
            counts = np.bincount((cells.codes[drawn] + offsets).ravel(),
                                 minlength=size * cells.size).reshape(size, cells.size)
        times = _times(drawn) if plan.rows is not None or plan.ranked is not None else None
        if plan.rows is not None and times is not None:  # how often each row was drawn, times
            sums = times.astype(plan.rows.dtype) @ plan.rows  # the rows
            if plan.coarse is not None:
                coarse = times.astype(np.float32) @ plan.coarse
                sums = np.concatenate([sums, coarse.astype(sums.dtype)], axis=1)
        found = plan.summarize(counts, sums)
        if plan.ranked is not None and times is not None:
            found.update(plan.ranked(times))
        for name, value in found.items():
            values.setdefault(name, []).append(value)
    return {name: np.concatenate(parts) for name, parts in values.items()}


def bootstrap_intervals(
    kind: str, outputs: np.ndarray, targets: np.ndarray, *, resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """{metric: (low, high)}, the 95% percentile interval of each."""
    values = bootstrap_values(kind, outputs, targets, resamples=resamples, seed=seed)
    return {name: _percentiles(value) for name, value in values.items()}


def paired_differences(
    kind: str, outputs: np.ndarray, other: np.ndarray, targets: np.ndarray, *,
    resamples: int = RESAMPLES, seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """{metric: (low, high)}: the 95% interval of metric(outputs) - metric(other), the two scored
    on the same resampled rows (a paired bootstrap: what the rows share cancels out)."""
    first = bootstrap_values(kind, outputs, targets, resamples=resamples, seed=seed)
    second = bootstrap_values(kind, other, targets, resamples=resamples, seed=seed)
    return differences(first, second)


def differences(first: Metrics, second: Metrics) -> dict[str, tuple[float, float]]:
    """The 95% interval of each metric's difference, from two models' values on the same
    resamples (`bootstrap_values` with the same rows and seed)."""
    return {name: _percentiles(first[name] - second[name]) for name in first if name in second}


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    """The interval over the resamples where the metric is defined (NaN where it is not: an
    AUROC of a resample that drew no row of a class)."""
    tail = (1.0 - LEVEL) / 2 * 100
    defined = values[~np.isnan(values)]
    if not len(defined):
        return float("nan"), float("nan")
    return float(np.percentile(defined, tail)), float(np.percentile(defined, 100 - tail))


def standard_error(low: float, high: float) -> float:
    """The standard error a 95% interval implies (its half-width over 1.96)."""
    return (high - low) / (2 * 1.96)


@dataclass(frozen=True)
class _Cells:
    """Per-row statistics that are one of `size` categories: summed as counts per category."""

    codes: np.ndarray
    size: int


Summarize = Callable[[np.ndarray | None, np.ndarray | None], Metrics]


@dataclass(frozen=True)
class _Plan:
    """What a resample sums: category counts, per-row statistics (n, k), or both; and how the
    sums give each metric."""

    cells: _Cells | None
    rows: np.ndarray | None
    summarize: Summarize
    # more per-row statistics, summed in float32 (4x the speed) after `rows`: for those whose
    # resampled values are approximations anyway (AUROC's)
    coarse: np.ndarray | None = None
    # metrics of the rows in an order (mean average precision): from each resample's row counts
    ranked: Callable[[np.ndarray], Metrics] | None = None


def _resamples(count: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Blocks of drawn row indices (resamples in the block, count)."""
    rng = np.random.default_rng(seed)
    block = max(1, BLOCK_CELLS // max(1, count))
    for start in range(0, resamples, block):
        yield rng.integers(0, count, size=(min(block, resamples - start), count))


def _times(drawn: np.ndarray) -> np.ndarray:
    """(resamples, count): how often each row was drawn in each resample."""
    size, count = drawn.shape
    offsets = np.arange(size, dtype=np.int64)[:, None] * count
    return np.bincount((drawn + offsets).ravel(), minlength=size * count).reshape(size, count)


def _plan(kind: str, outputs: np.ndarray, targets: np.ndarray) -> _Plan:
    if kind == "classification":
        return _classification(outputs, targets)
    if kind == "multilabel":
        return _multilabel(outputs, targets)
    return _regression(outputs, targets)


def _classification(logits: np.ndarray, targets: np.ndarray) -> _Plan:
    classes, count = logits.shape[1], len(targets)
    targets = targets.astype(np.int64)
    # Each row's cell of the confusion matrix (true class, predicted class): a resample's counts
    # of the cells are its confusion matrix.
    cells = targets * classes + logits.argmax(axis=1)
    log_probs = log_softmax(logits.astype(np.float64), axis=1)
    bins, confidence, correct = confidence_bins(log_probs, targets)
    in_bin = np.eye(ECE_BINS)[bins]
    columns = [-log_probs[np.arange(count), targets][:, None],  # log loss
               in_bin * (confidence - correct)[:, None]]  # each bin's confidence-accuracy gap
    top_k = classes >= TOP_K_FROM_CLASSES
    if top_k:
        columns.append(top_k_hits(logits, targets, TOP_K)[:, None].astype(np.float64))
    scored = _auroc_classes(targets, classes)
    auroc = None if scored is None else _auroc_components(log_probs, targets, scored)
    if auroc is not None and scored is not None:
        positives = np.bincount(targets, minlength=classes)[scored].astype(np.float64)
        auroc_full = auroc[:, 0::2].sum(axis=0) / positives  # each class's AUROC on all rows
    rows = np.concatenate(columns, axis=1)

    def summarize(counts: np.ndarray | None, sums: np.ndarray | None) -> Metrics:
        assert counts is not None and sums is not None
        confusion = counts.reshape(-1, classes, classes)
        hits = np.diagonal(confusion, axis1=1, axis2=2)
        actual, called = confusion.sum(axis=2), confusion.sum(axis=1)
        present = (actual + called) > 0  # scikit-learn averages over the labels it sees
        f1 = _ratio(2 * hits, actual + called)
        seen = actual > 0  # balanced accuracy: the recall of each class the truth has
        metrics = {
            "accuracy": hits.sum(axis=1) / count,
            "macro_f1": (f1 * present).sum(axis=1) / present.sum(axis=1),
            "balanced_accuracy": (_ratio(hits, actual) * seen).sum(axis=1) / seen.sum(axis=1),
            "log_loss": sums[:, 0] / count,
            "ece": np.abs(sums[:, 1:1 + ECE_BINS]).sum(axis=1) / count,
        }
        at = 1 + ECE_BINS
        if top_k:
            metrics[f"top_{TOP_K}_accuracy"] = sums[:, at] / count
            at += 1
        if auroc is not None:
            parts = sums[:, at:].reshape(len(sums), -1, 2)
            positive = actual[:, scored]
            per_class = (_ratio(parts[..., 0], positive)
                         + _ratio(parts[..., 1], count - positive) - auroc_full)
            # A class the resample drew no positive (or no negative) of has no AUROC there: it
            # is left out, as the full sample's score leaves out such a class, and a resample
            # with no such class left has none (NaN, outside the interval's percentiles).
            defined = (positive > 0) & (positive < count)
            mean = _ratio((per_class * defined).sum(axis=1), defined.sum(axis=1), empty=np.nan)
            metrics["auroc"] = np.clip(mean, 0.0, 1.0)  # linearized: may stray
        return metrics

    return _Plan(_Cells(cells, classes * classes), rows, summarize, coarse=auroc)


def _auroc_classes(targets: np.ndarray, classes: int) -> list[int] | None:
    """The classes whose one-vs-rest AUROCs are averaged (class 1 alone with two classes), or
    None: no AUROC, or too many classes for its interval."""
    present = auroc_classes(targets, classes)
    if not present or len(targets) * classes > AUROC_INTERVAL_CELLS:
        return None
    return [1] if classes == 2 else present


def _auroc_components(
    log_probs: np.ndarray, targets: np.ndarray, scored: list[int]
) -> np.ndarray:
    """Per row and scored class c: [positive x V10, negative x V01] (float32), where V10 is the
    share of negatives a positive row outranks (ties half) and V01 the share of positives a
    negative row is outranked by; each has the AUROC A as its mean. To first order a resample's
    AUROC is mean V10 over its positives + mean V01 over its negatives - A (the U-statistic's
    projection; DeLong et al. 1988)."""
    binary = log_probs.shape[1] == 2
    columns = []
    for c in scored:
        score = log_probs[:, 1] - log_probs[:, 0] if binary else log_probs[:, c]
        order = np.argsort(score, kind="stable")
        ranked, positive = score[order], targets[order] == c  # in score order: the lookups
        pos, neg = ranked[positive], ranked[~positive]  # below walk memory in order
        neg_left, neg_right = (np.searchsorted(neg, ranked, side) for side in ("left", "right"))
        pos_left, pos_right = (np.searchsorted(pos, ranked, side) for side in ("left", "right"))
        below = (neg_left + 0.5 * (neg_right - neg_left)) / len(neg)
        above = (len(pos) - pos_right + 0.5 * (pos_right - pos_left)) / len(pos)
        pair = np.empty((len(score), 2))
        pair[order, 0] = np.where(positive, below, 0.0)
        pair[order, 1] = np.where(positive, 0.0, above)
        columns += [pair[:, 0], pair[:, 1]]
    return np.stack(columns, axis=1).astype(np.float32)


def _multilabel(logits: np.ndarray, targets: np.ndarray) -> _Plan:
    predicted = logits > 0
    truth = targets > 0.5
    labels = truth.shape[1]
    rows = np.concatenate([
        predicted & truth, predicted & ~truth, ~predicted & truth,
        (predicted == truth).all(axis=1, keepdims=True),
    ], axis=1).astype(np.float32)
    count = len(rows)

    def summarize(counts: np.ndarray | None, sums: np.ndarray | None) -> Metrics:
        assert sums is not None
        tp, fp, fn = (sums[:, i * labels:(i + 1) * labels] for i in range(3))
        micro = _ratio(2 * tp.sum(axis=1), 2 * tp.sum(axis=1) + fp.sum(axis=1) + fn.sum(axis=1))
        macro = _ratio(2 * tp, 2 * tp + fp + fn).mean(axis=1)
        return {"micro_f1": micro, "macro_f1": macro, "subset_accuracy": sums[:, -1] / count}

    return _Plan(None, rows, summarize, ranked=_average_precisions(logits, truth))


def _average_precisions(
    logits: np.ndarray, truth: np.ndarray
) -> Callable[[np.ndarray], Metrics]:
    """Mean average precision over the labels a resample has a positive of. With each row
    weighted by how often it was drawn, a label's AP is sum(w y P) / sum(w y) in descending score
    order, P the precision at the end of the row's group of tied scores (scikit-learn's)."""
    labels = [j for j in range(truth.shape[1]) if truth[:, j].any()]
    orders, hits, ends = [], [], []
    for j in labels:
        order = np.argsort(-logits[:, j], kind="stable")
        ranked = -logits[order, j]  # ascending
        orders.append(order)
        hits.append(truth[order, j].astype(np.float64))
        ends.append(np.searchsorted(ranked, ranked, side="right") - 1)

    def summarize(times: np.ndarray) -> Metrics:
        total = np.zeros(len(times))
        present = np.zeros(len(times))
        for order, hit, end in zip(orders, hits, ends, strict=True):
            weights = times[:, order].astype(np.float64)
            found = weights * hit
            true_pos, drawn = np.cumsum(found, axis=1), np.cumsum(weights, axis=1)
            precision = _ratio(true_pos[:, end], drawn[:, end])
            positives = true_pos[:, -1]
            total += _ratio((found * precision).sum(axis=1), positives)
            present += positives > 0
        return {"mean_average_precision": _ratio(total, present)}

    return summarize


def _regression(predictions: np.ndarray, targets: np.ndarray) -> _Plan:
    predicted, truth = centered(predictions, targets)
    error = predicted - truth
    rows = np.stack([error**2, np.abs(error), truth, truth**2], axis=1)
    count = len(rows)
    # A resample's sum of squared deviations, sum t² - (sum t)²/n, is a difference of two sums
    # that may both be large: below this share of sum t² it is rounding, not spread.
    rounding = 1e-9

    def summarize(counts: np.ndarray | None, sums: np.ndarray | None) -> Metrics:
        assert sums is not None
        squared, absolute, total, total_sq = (sums[:, i] for i in range(4))
        spread = total_sq - total**2 / count
        varies = spread > rounding * total_sq
        r2 = 1.0 - _ratio(squared, np.where(varies, spread, 0.0), empty=np.inf)
        return {"rmse": np.sqrt(squared / count), "mae": absolute / count,
                "r2": np.where(varies, r2, np.where(squared == 0, 1.0, 0.0))}

    return _Plan(None, rows, summarize)


def _ratio(top: np.ndarray, bottom: np.ndarray, *, empty: float = 0.0) -> np.ndarray:
    """top / bottom, `empty` where bottom is 0 (scikit-learn's zero_division=0 for F1)."""
    safe = np.where(bottom > 0, bottom, 1.0)
    return np.where(bottom > 0, top / safe, empty)


def scored_with_intervals(
    kind: str, outputs: np.ndarray, targets: np.ndarray, *, seed: int = 0,
    resampled: Metrics | None = None,
) -> dict[str, dict[str, float | list[float]]]:
    """{metric: {"value": v, "ci95": [low, high]}}: metrics.json's form of a part's scores;
    `resampled`, `bootstrap_values` of the same outputs when the caller has them already. One
    row has no interval (no "ci95")."""
    from tunesmith.evaluate.metrics import evaluation_metrics

    values = evaluation_metrics(kind, outputs, targets)
    if len(targets) < 2:  # every resample of one row is that row: an interval of width 0
        resampled = {}
    elif resampled is None:
        resampled = bootstrap_values(kind, outputs, targets, seed=seed)
    intervals = {name: _percentiles(v) for name, v in resampled.items()}
    return {
        name: {"value": value, **({"ci95": list(intervals[name])} if name in intervals else {})}
        for name, value in values.items()
    }
