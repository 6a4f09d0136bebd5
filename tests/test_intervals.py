"""Bootstrap intervals: the vectorized resamples give what scikit-learn gives on each resample,
and the 95% interval covers a known true accuracy as often as it should."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)

from tunesmith.evaluate.intervals import (
    bootstrap_intervals,
    bootstrap_values,
    paired_differences,
    scored_with_intervals,
)
from tunesmith.evaluate.metrics import evaluation_metrics, per_class

RESAMPLES = 200


def flat(intervals: dict[str, tuple[float, float]]) -> dict[str, float]:
    return {f"{name} {end}": value for name, pair in intervals.items()
            for end, value in zip(("low", "high"), pair, strict=True)}


def reference_values(
    kind: str, outputs: np.ndarray, targets: np.ndarray, seed: int = 0
) -> dict[str, np.ndarray]:
    """The evaluation metrics (scikit-learn's) on each resample, the same rows drawn as the
    vectorized bootstrap draws them (one block: one matrix of indices from the seeded
    generator)."""
    drawn = np.random.default_rng(seed).integers(0, len(targets), size=(RESAMPLES, len(targets)))
    values: dict[str, list[float]] = {}
    for rows in drawn:
        for name, value in evaluation_metrics(kind, outputs[rows], targets[rows]).items():
            values.setdefault(name, []).append(value)
    return {name: np.asarray(v) for name, v in values.items()}


def reference(
    kind: str, outputs: np.ndarray, targets: np.ndarray
) -> dict[str, tuple[float, float]]:
    return {name: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)))
            for name, v in reference_values(kind, outputs, targets).items()
            if name != "auroc"}  # approximated


def classification(rows: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, classes, rows)
    logits = rng.normal(size=(rows, classes))
    logits[np.arange(rows), targets] += 1.0
    return logits, targets


@pytest.mark.parametrize("classes", [2, 7, 12])
def test_classification_intervals_match_scikit_learn_on_every_resample(classes: int) -> None:
    logits, targets = classification(300, classes, seed=classes)
    logits[:, -1] -= 5.0  # a class seldom predicted: some resamples see it only as a truth
    got = bootstrap_intervals("classification", logits, targets, resamples=RESAMPLES)
    auroc = got.pop("auroc")
    expected = reference("classification", logits, targets)
    assert set(got) == set(expected) >= {"accuracy", "balanced_accuracy", "log_loss", "ece"}
    assert ("top_5_accuracy" in got) == (classes >= 10)
    assert flat(got) == pytest.approx(flat(expected), abs=1e-9)
    # AUROC's resamples are DeLong's linearization: close to the exact ones
    exact = reference_values("classification", logits, targets)["auroc"]
    assert auroc == pytest.approx((np.percentile(exact, 2.5), np.percentile(exact, 97.5)),
                                  abs=0.01)


def test_the_evaluation_metrics_are_scikit_learns() -> None:
    logits, targets = classification(400, 12, seed=3)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    metrics = evaluation_metrics("classification", logits, targets)
    assert metrics["log_loss"] == pytest.approx(log_loss(targets, probabilities))
    assert metrics["auroc"] == pytest.approx(roc_auc_score(targets, probabilities,
                                                           multi_class="ovr"))
    assert metrics["top_5_accuracy"] == pytest.approx(top_k_accuracy_score(targets, logits, k=5))
    binary_logits, binary = classification(300, 2, seed=4)
    assert evaluation_metrics("classification", binary_logits, binary)["auroc"] == pytest.approx(
        roc_auc_score(binary, binary_logits[:, 1] - binary_logits[:, 0]))
    table = per_class("classification", logits, targets, [f"c{i}" for i in range(12)])
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, logits.argmax(axis=1), labels=list(range(12)), zero_division=0)
    assert [row["label"] for row in table] == [f"c{i}" for i in range(12)]
    assert [row["f1"] for row in table] == pytest.approx(list(f1))
    assert [row["precision"] for row in table] == pytest.approx(list(precision))
    assert [row["recall"] for row in table] == pytest.approx(list(recall))
    assert [row["support"] for row in table] == list(support)
    rng = np.random.default_rng(5)
    truth = (rng.random((150, 3)) < 0.4).astype(float)
    scores = rng.normal(size=(150, 3)) + 1.5 * (truth - 0.5)
    assert evaluation_metrics("multilabel", scores, truth)["mean_average_precision"] == (
        pytest.approx(average_precision_score(truth, scores, average="macro")))


def test_expected_calibration_error_is_the_gap_between_confidence_and_accuracy() -> None:
    # Every row 90% sure (one bin); 3 of 4 right: the gap is 0.15. Half at 0.6 and right, half
    # at 0.9 and wrong: (|0.6 - 1| + |0.9 - 0|) / 2.
    sure = np.log(np.array([[0.9, 0.1]] * 4))
    assert evaluation_metrics("classification", sure, np.array([0, 0, 0, 1]))["ece"] == (
        pytest.approx(0.15))
    mixed = np.log(np.array([[0.6, 0.4], [0.6, 0.4], [0.1, 0.9], [0.1, 0.9]]))
    assert evaluation_metrics("classification", mixed, np.array([0, 0, 0, 0]))["ece"] == (
        pytest.approx((0.4 + 0.9) / 2))


def test_a_paired_bootstrap_sees_a_gain_that_separate_intervals_cannot() -> None:
    # b is a with 12 of its 500 right answers made wrong: a gain of 2.4 points, well inside each
    # model's own interval (about ±3.5 points), but every resample sees a ahead of b.
    logits, targets = classification(500, 2, seed=6)
    right = np.flatnonzero(logits.argmax(axis=1) == targets)[:12]
    worse = logits.copy()
    worse[right] = worse[right][:, ::-1]
    low, high = paired_differences("classification", logits, worse, targets)["accuracy"]
    assert 0.0 <= low < 0.024 < high <= 0.05
    a = bootstrap_intervals("classification", logits, targets)["accuracy"]
    b = bootstrap_intervals("classification", worse, targets)["accuracy"]
    assert a[0] < b[1]  # alone, the intervals overlap
    # the paired differences are the differences of scikit-learn's metrics on the same resamples
    differences = (bootstrap_values("classification", logits, targets, resamples=RESAMPLES)
                   ["accuracy"] - bootstrap_values("classification", worse, targets,
                                                   resamples=RESAMPLES)["accuracy"])
    expected = (reference_values("classification", logits, targets)["accuracy"]
                - reference_values("classification", worse, targets)["accuracy"])
    assert differences == pytest.approx(expected, abs=1e-12)


def test_regression_intervals_match_scikit_learn_on_every_resample() -> None:
    rng = np.random.default_rng(1)
    targets = rng.normal(3.0, 2.0, 250)
    predictions = (targets + rng.normal(0, 1.0, 250)).reshape(-1, 1)
    got = bootstrap_intervals("regression", predictions, targets, resamples=RESAMPLES)
    assert flat(got) == pytest.approx(flat(reference("regression", predictions, targets)), abs=1e-9)


def test_regression_scores_keep_their_digits_far_from_zero() -> None:
    """A target near 1e10 with a spread of 100 scores as the same target near 0 does (the sums
    of squared targets used to swallow the spread: R² outside its own interval)."""
    rng = np.random.default_rng(6)
    targets = rng.normal(0.0, 100.0, 89)
    predictions = (0.6 * targets + rng.normal(0, 60.0, 89)).reshape(-1, 1)
    near, far = (scored_with_intervals("regression", predictions + shift, targets + shift)
                 for shift in (0.0, 1e10))
    for name in ("rmse", "mae", "r2"):
        assert far[name]["value"] == pytest.approx(near[name]["value"], rel=1e-6)
        assert far[name]["ci95"] == pytest.approx(near[name]["ci95"], rel=1e-6)
    low, high = far["r2"]["ci95"]
    assert low < far["r2"]["value"] < high


def test_a_constant_regression_target_has_r2_zero() -> None:
    """scikit-learn's convention (force_finite): 0 for a constant truth, 1 if also predicted
    exactly; rounding once gave -1.4e13, or an interval of -1e15."""
    targets = np.full(60, 1.1)
    predictions = (1.1 + np.random.default_rng(7).normal(0, 0.1, 60)).reshape(-1, 1)
    scores = scored_with_intervals("regression", predictions, targets)
    assert scores["r2"] == {"value": 0.0, "ci95": [0.0, 0.0]}
    assert scores["rmse"]["value"] == pytest.approx(np.sqrt(np.mean((predictions[:, 0] - 1.1)
                                                                    ** 2)))
    exact = scored_with_intervals("regression", targets.reshape(-1, 1), targets)
    assert exact["r2"] == {"value": 1.0, "ci95": [1.0, 1.0]}


def test_auroc_intervals_leave_out_resamples_without_a_class() -> None:
    """A resample that drew no row of a class has no AUROC for it; counting it as 0 pulled the
    interval below its own point (3 positives in 123: a perfect 1.0 had [0, 1])."""
    targets = np.array([1, 1, 1] + [0] * 120)
    logits = np.stack([np.zeros(123), np.where(targets == 1, 5.0, -5.0)], axis=1)
    scores = scored_with_intervals("classification", logits, targets)
    assert scores["auroc"] == {"value": 1.0, "ci95": [1.0, 1.0]}
    # twelve classes, six of them a single row: the interval holds the point and is close to
    # the exact resamples' (those that have the class)
    rng = np.random.default_rng(8)
    targets = np.concatenate([np.repeat([0, 1, 2, 3], [60, 40, 25, 15]), np.arange(4, 10)])
    logits = rng.normal(size=(len(targets), 10))
    logits[np.arange(len(targets)), targets] += 1.5
    scores = scored_with_intervals("classification", logits, targets, seed=0)
    low, high = scores["auroc"]["ci95"]
    assert low < scores["auroc"]["value"] < high
    exact = reference_values("classification", logits, targets)["auroc"]
    assert (low, high) == pytest.approx((np.percentile(exact, 2.5), np.percentile(exact, 97.5)),
                                        abs=0.03)


def test_multilabel_intervals_match_scikit_learn_on_every_resample() -> None:
    rng = np.random.default_rng(2)
    targets = (rng.random((200, 4)) < 0.3).astype(float)
    logits = rng.normal(size=(200, 4)) + 2.0 * (targets - 0.5)
    got = bootstrap_intervals("multilabel", logits, targets, resamples=RESAMPLES)
    assert "mean_average_precision" in got
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
    metrics = evaluation_metrics("classification", logits, targets)
    assert set(scores) == set(metrics)
    for name, value in metrics.items():
        low, high = scores[name]["ci95"]
        assert scores[name]["value"] == value and low < value < high
        if name in {"accuracy", "balanced_accuracy", "macro_f1"}:
            assert 0.02 < high - low < 0.15  # about 4 standard errors of a proportion, 400 rows


def test_one_scored_row_has_no_interval() -> None:
    """Every resample of one row is that row: the intervals read [x, x], a certainty one row
    cannot give (`evaluate --data` on a one-row file). Two rows have them."""
    logits, targets = classification(2, 2, seed=5)
    one = scored_with_intervals("classification", logits[:1], targets[:1])
    assert one["accuracy"]["value"] in (0.0, 1.0) and all("ci95" not in s for s in one.values())
    one = scored_with_intervals("regression", np.array([[3.0]]), np.array([1.0]))
    assert one["rmse"] == {"value": 2.0}
    two = scored_with_intervals("regression", np.array([[3.0], [0.0]]), np.array([1.0, 1.0]))
    assert two["rmse"]["ci95"] == [1.0, 2.0]


def test_auroc_of_150_classes_has_its_interval() -> None:
    """AUROC had no interval past 100 classes, though the others did and it costs no more; the
    limit is on rows x classes now (its resampling state)."""
    import tunesmith.evaluate.intervals as intervals

    logits, targets = classification(3000, 150, seed=2)
    scores = scored_with_intervals("classification", logits, targets)
    low, high = scores["auroc"]["ci95"]
    assert low < scores["auroc"]["value"] < high and high - low < 0.05
    assert 3000 * 150 <= intervals.AUROC_INTERVAL_CELLS < 50_000 * 1000


def test_top_5_breaks_ties_as_argmax_does() -> None:
    """On tied logits a row right at top 1 (argmax: the lowest tied class) is right at top 5,
    and the true class's rank counts the tied classes before it; argpartition had picked among
    ties arbitrarily, leaving the predicted class out of some rows' top 5."""
    from tunesmith.evaluate.metrics import top_k_hits

    rng = np.random.default_rng(0)
    logits = rng.integers(0, 3, size=(5_000, 20)).astype(np.float32)
    predicted = logits.argmax(axis=1)
    assert top_k_hits(logits, predicted, 5).all()
    targets = rng.integers(0, 20, size=5_000)
    ranks = np.array([list(np.argsort(-row, kind="stable")).index(t)
                      for row, t in zip(logits, targets, strict=True)])
    np.testing.assert_array_equal(top_k_hits(logits, targets, 5), ranks < 5)
    flat = np.zeros((2, 12), dtype=np.float32)
    assert top_k_hits(flat, np.array([4, 5]), 5).tolist() == [True, False]
    assert not top_k_hits(np.full((1, 12), np.nan, dtype=np.float32), np.array([0]), 5)[0]
