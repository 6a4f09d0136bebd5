"""Bootstrap intervals: the vectorized resamples give what scikit-learn gives on each resample,
and the 95% interval covers a known true accuracy as often as it should."""

from __future__ import annotations

import numpy as np
import pytest

from tunesmith.evaluate.intervals import bootstrap_intervals, scored_with_intervals
from tunesmith.evaluate.metrics import task_metrics

RESAMPLES = 200


def flat(intervals: dict[str, tuple[float, float]]) -> dict[str, float]:
    return {f"{name} {end}": value for name, pair in intervals.items()
            for end, value in zip(("low", "high"), pair, strict=True)}


def reference(
    kind: str, outputs: np.ndarray, targets: np.ndarray
) -> dict[str, tuple[float, float]]:
    """scikit-learn's metrics on each resample, the same rows drawn as the vectorized bootstrap
    draws them (one block: one matrix of indices from the seeded generator)."""
    drawn = np.random.default_rng(0).integers(0, len(targets), size=(RESAMPLES, len(targets)))
    values: dict[str, list[float]] = {}
    for rows in drawn:
        for name, value in task_metrics(kind, outputs[rows], targets[rows]).items():
            values.setdefault(name, []).append(value)
    return {name: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)))
            for name, v in values.items()}


def classification(rows: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, classes, rows)
    logits = rng.normal(size=(rows, classes))
    logits[np.arange(rows), targets] += 1.0
    return logits, targets


@pytest.mark.parametrize("classes", [2, 7])
def test_classification_intervals_match_scikit_learn_on_every_resample(classes: int) -> None:
    logits, targets = classification(300, classes, seed=classes)
    logits[:, -1] -= 5.0  # a class seldom predicted: some resamples see it only as a truth
    got = bootstrap_intervals("classification", logits, targets, resamples=RESAMPLES)
    assert flat(got) == pytest.approx(flat(reference("classification", logits, targets)), abs=1e-9)


def test_regression_intervals_match_scikit_learn_on_every_resample() -> None:
    rng = np.random.default_rng(1)
    targets = rng.normal(3.0, 2.0, 250)
    predictions = (targets + rng.normal(0, 1.0, 250)).reshape(-1, 1)
    got = bootstrap_intervals("regression", predictions, targets, resamples=RESAMPLES)
    assert flat(got) == pytest.approx(flat(reference("regression", predictions, targets)), abs=1e-9)


def test_multilabel_intervals_match_scikit_learn_on_every_resample() -> None:
    rng = np.random.default_rng(2)
    targets = (rng.random((200, 4)) < 0.3).astype(float)
    logits = rng.normal(size=(200, 4)) + 2.0 * (targets - 0.5)
    got = bootstrap_intervals("multilabel", logits, targets, resamples=RESAMPLES)
    assert flat(got) == pytest.approx(flat(reference("multilabel", logits, targets)), abs=1e-6)


def test_the_95_interval_covers_a_known_accuracy_in_about_95_of_100_sets() -> None:
    true_accuracy, rows, covered = 0.8, 500, 0
    for repetition in range(100):
        rng = np.random.default_rng(1000 + repetition)
        targets = rng.integers(0, 2, rows)
        correct = rng.random(rows) < true_accuracy  # each row right with probability 0.8
        predicted = np.where(correct, targets, 1 - targets)
        logits = np.eye(2)[predicted]
        low, high = bootstrap_intervals("classification", logits, targets,
                                        seed=repetition)["accuracy"]
        covered += low <= true_accuracy <= high
    assert 93 <= covered <= 99  # nominal 95; a far too wide interval would cover every time


def test_scores_carry_the_value_and_its_interval_around_it() -> None:
    logits, targets = classification(400, 3, seed=5)
    scores = scored_with_intervals("classification", logits, targets)
    for name, value in task_metrics("classification", logits, targets).items():
        low, high = scores[name]["ci95"]
        assert scores[name]["value"] == value and low < value < high
        assert 0.02 < high - low < 0.15  # about 4 standard errors of a proportion on 400 rows
