"""Losses and metrics against numbers worked out in the test (by hand, math or numpy)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tunesmith.errors import TunesmithError
from tunesmith.evaluate import objective_for, task_metrics
from tunesmith.evaluate.baselines import Parts, majority
from tunesmith.models.losses import (
    FocalLoss,
    LossSettings,
    ScaledRegressionLoss,
    balanced_weights,
    check_loss,
    make_loss,
)

LOGITS = torch.tensor(
    [[2.0, 0.0, -1.0], [0.5, 0.4, 0.3], [-1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [1.0, -2.0, 2.5]]
)
TARGETS = torch.tensor([0, 2, 1, 1, 0])


def softmax_rows(logits: torch.Tensor) -> list[list[float]]:
    rows = []
    for row in logits.tolist():
        exps = [math.exp(v) for v in row]
        rows.append([e / sum(exps) for e in exps])
    return rows


# ----------------------------------------------------------------------------------------------
# focal loss


def test_focal_loss_with_gamma_zero_is_cross_entropy() -> None:
    focal = FocalLoss(0.0, None)(LOGITS, TARGETS)
    assert focal.item() == pytest.approx(F.cross_entropy(LOGITS, TARGETS).item(), rel=1e-6)
    # Soft targets (MixUp) go through the same formula: the cross-entropy with probabilities.
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.5, 0.5], [0.0, 1.0, 0.0], [0.2, 0.2, 0.6],
                         [1.0, 0.0, 0.0]])
    assert FocalLoss(0.0, None)(LOGITS, soft).item() == pytest.approx(
        F.cross_entropy(LOGITS, soft).item(), rel=1e-6)


def test_focal_loss_with_gamma_two_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    targets = torch.tensor([0, 2])
    # Row 0: p_t = e^2 / (e^2 + 2); row 1: p_t = 1 / (2 + e).
    p0 = math.exp(2) / (math.exp(2) + 2)
    p1 = 1 / (2 + math.e)
    expected = ((1 - p0) ** 2 * -math.log(p0) + (1 - p1) ** 2 * -math.log(p1)) / 2
    assert expected == pytest.approx(0.487186, abs=1e-6)
    assert FocalLoss(2.0, None)(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    # The easy row (p_t = 0.79) counts (1 - p_t)^2 = 0.045 of its cross-entropy, the hard one
    # (p_t = 0.21) 0.62 of it.
    for row, p_t in ((0, p0), (1, p1)):
        focal = FocalLoss(2.0, None)(logits[row:row + 1], targets[row:row + 1]).item()
        plain = F.cross_entropy(logits[row:row + 1], targets[row:row + 1]).item()
        assert focal / plain == pytest.approx((1 - p_t) ** 2, rel=1e-5)
    assert (1 - p0) ** 2 == pytest.approx(0.04537, abs=1e-5)


def test_focal_loss_class_weights_scale_each_row_by_its_class_weight() -> None:
    weights = torch.tensor([2.0, 0.5, 1.0])
    probabilities = softmax_rows(LOGITS)
    gamma = 2.0
    terms = [
        weights[t].item() * (1 - probabilities[i][t]) ** gamma * -math.log(probabilities[i][t])
        for i, t in enumerate(TARGETS.tolist())
    ]
    loss = make_loss(LossSettings("focal", focal_gamma=gamma, weights=(2.0, 0.5, 1.0)))
    assert isinstance(loss, FocalLoss)
    assert loss(LOGITS, TARGETS).item() == pytest.approx(sum(terms) / len(terms), rel=1e-6)


def test_cross_entropy_takes_label_smoothing_and_class_weights() -> None:
    probabilities = softmax_rows(LOGITS)
    eps = 0.1
    smoothed = [
        (1 - eps) * -math.log(row[t]) + eps * sum(-math.log(p) for p in row) / 3
        for row, t in zip(probabilities, TARGETS.tolist(), strict=True)
    ]
    loss = make_loss(LossSettings("cross_entropy", label_smoothing=eps))
    assert loss(LOGITS, TARGETS).item() == pytest.approx(np.mean(smoothed), rel=1e-6)

    weights = [2.0, 0.5, 1.0]
    nll = [-math.log(row[t]) for row, t in zip(probabilities, TARGETS.tolist(), strict=True)]
    row_weights = [weights[t] for t in TARGETS.tolist()]
    weighted = sum(w * v for w, v in zip(row_weights, nll, strict=True)) / sum(row_weights)
    loss = make_loss(LossSettings("cross_entropy", weights=tuple(weights)))
    assert loss(LOGITS, TARGETS).item() == pytest.approx(weighted, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# class weights


def test_balanced_weights_for_classification() -> None:
    targets = np.array([0, 0, 0, 1, 0, 1, 2, 0])  # counts 5, 2, 1 of n = 8, k = 4 (3 is absent)
    weights = balanced_weights("classification", targets, classes=4)
    assert weights == pytest.approx((8 / (4 * 5), 8 / (4 * 2), 8 / (4 * 1), 8 / (4 * 1)))
    # Every class present weighs the same in total: n / k.
    per_class = [sum(weights[t] for t in targets if t == c) for c in range(3)]
    assert per_class == pytest.approx([2.0, 2.0, 2.0])


def test_balanced_weights_for_multilabel_are_negatives_over_positives() -> None:
    targets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0], [1, 1, 0]], dtype=float)
    # Positives 4, 2, 0; negatives 1, 3, 5 (a label never seen counts one positive).
    assert balanced_weights("multilabel", targets, classes=3) == pytest.approx((0.25, 1.5, 5.0))


def test_bce_pos_weight_multiplies_the_positive_terms_only() -> None:
    logits = torch.tensor([[0.5, -1.0], [2.0, 0.0], [-0.5, 1.5]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    pos_weight = (3.0, 0.5)

    def sigmoid(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    terms = []
    for row, truth in zip(logits.tolist(), targets.tolist(), strict=True):
        for j, (x, y) in enumerate(zip(row, truth, strict=True)):
            terms.append(-(pos_weight[j] * y * math.log(sigmoid(x))
                           + (1 - y) * math.log(1 - sigmoid(x))))
    weighted = make_loss(LossSettings("bce", weights=pos_weight))(logits, targets).item()
    assert weighted == pytest.approx(sum(terms) / len(terms), rel=1e-6)
    plain = make_loss(LossSettings("bce"))(logits, targets).item()
    assert plain == pytest.approx(F.binary_cross_entropy_with_logits(logits, targets).item())
    # A row of negatives is unaffected by the positive weight.
    negatives = torch.zeros(1, 2)
    assert make_loss(LossSettings("bce", weights=pos_weight))(logits[:1], negatives).item() == (
        pytest.approx(make_loss(LossSettings("bce"))(logits[:1], negatives).item()))


# ----------------------------------------------------------------------------------------------
# regression


@pytest.mark.parametrize("name", ["mse", "huber"])
def test_scaled_regression_loss_is_invariant_to_the_targets_units(name: str) -> None:
    predictions = torch.tensor([[1.0], [2.5], [-0.5], [4.0]])
    targets = torch.tensor([1.5, 2.0, 1.0, 0.5])
    std = 1.7
    loss = ScaledRegressionLoss(name, std)(predictions, targets).item()
    for scale in (1e-3, 250.0, 1e5):
        rescaled = ScaledRegressionLoss(name, std * scale)(predictions * scale, targets * scale)
        assert rescaled.item() == pytest.approx(loss, rel=1e-5), scale
    # The same numbers by hand: errors in units of the std, then MSE or Huber (delta 1).
    errors = [(p - t) / std for p, t in zip([1.0, 2.5, -0.5, 4.0], [1.5, 2.0, 1.0, 0.5],
                                              strict=True)]
    if name == "mse":
        expected = sum(e * e for e in errors) / 4
    else:
        expected = sum(0.5 * e * e if abs(e) < 1 else abs(e) - 0.5 for e in errors) / 4
    assert any(abs(e) > 1 for e in errors) and any(abs(e) < 1 for e in errors)
    assert loss == pytest.approx(expected, rel=1e-6)
    # Without the scaling the loss would grow with the square of the units.
    assert ScaledRegressionLoss(name, 1.0)(predictions * 1e3, targets * 1e3).item() > 1e3 * loss


def test_make_loss_passes_the_target_std() -> None:
    loss = make_loss(LossSettings("mse", target_std=2.0))
    assert isinstance(loss, ScaledRegressionLoss) and loss.std == 2.0
    assert loss(torch.tensor([[3.0]]), torch.tensor([1.0])).item() == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------
# which loss fits which task


@pytest.mark.parametrize(
    ("loss", "kind"),
    [("mse", "classification"), ("huber", "classification"), ("bce", "classification"),
     ("cross_entropy", "multilabel"), ("focal", "regression"), ("bce", "regression")],
)
def test_check_loss_refuses_a_loss_that_does_not_fit(loss: str, kind: str) -> None:
    with pytest.raises(TunesmithError) as caught:
        check_loss(loss, kind)
    assert caught.value.field == "train.loss"
    assert loss in caught.value.problem and kind in caught.value.problem
    assert caught.value.fix is not None


@pytest.mark.parametrize(
    ("loss", "kind"),
    [("cross_entropy", "classification"), ("focal", "classification"), ("bce", "multilabel"),
     ("mse", "regression"), ("huber", "regression")],
)
def test_check_loss_accepts_the_losses_of_each_task(loss: str, kind: str) -> None:
    check_loss(loss, kind)


def test_a_config_with_mse_for_classification_fails_at_prepare(
    text_config: Callable[..., Path],
) -> None:
    from tunesmith import api
    from tunesmith.config import load_config

    path = text_config()
    with pytest.raises(TunesmithError) as caught:
        api.prepare(load_config(path, ["train.loss=mse"]))
    assert (caught.value.field, caught.value.file) == ("train.loss", str(path))
    assert caught.value.fix is not None and "cross_entropy or focal" in caught.value.fix


# ----------------------------------------------------------------------------------------------
# metrics


def f1_by_hand(truth: np.ndarray, predicted: np.ndarray) -> float:
    tp = int(((truth == 1) & (predicted == 1)).sum())
    fp = int(((truth == 0) & (predicted == 1)).sum())
    fn = int(((truth == 1) & (predicted == 0)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def test_classification_accuracy_and_macro_f1() -> None:
    logits = np.array([[3, 1, 0], [0, 2, 1], [1, 0, 0], [0, 1, 2], [2, 1, 0], [0, 3, 1]], float)
    targets = np.array([0, 1, 2, 2, 1, 1])
    # Predicted 0, 1, 0, 2, 0, 1: four right of six.
    # Class 0: tp 1, fp 2, fn 0 -> F1 0.5; class 1: tp 2, fp 0, fn 1 -> 0.8; class 2: tp 1,
    # fp 0, fn 1 -> 2/3.
    metrics = task_metrics("classification", logits, targets)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    onehot = lambda v: (v[:, None] == np.arange(3)).astype(int)  # noqa: E731
    truth, predicted = onehot(targets), onehot(logits.argmax(1))
    assert metrics["macro_f1"] == pytest.approx(
        np.mean([f1_by_hand(truth[:, c], predicted[:, c]) for c in range(3)]))


def test_classification_macro_f1_counts_a_class_never_predicted_as_zero() -> None:
    logits = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    targets = np.array([0, 0, 1, 1])  # predicted 0, 0, 0, 1
    metrics = task_metrics("classification", logits, targets)
    assert metrics["accuracy"] == 0.75
    assert metrics["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    constant = task_metrics("classification", np.tile([1.0, 0.0], (4, 1)), targets)
    assert constant["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2)


def test_classification_metrics_agree_with_scikit_learn_on_random_parts() -> None:
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(0)
    for rows, classes in [(7, 2), (50, 3), (200, 10), (5, 10)]:  # the last misses most classes
        logits = rng.normal(size=(rows, classes))
        targets = rng.integers(0, max(2, classes // 3), size=rows)
        predicted = logits.argmax(1)
        metrics = task_metrics("classification", logits, targets)
        assert metrics["accuracy"] == pytest.approx(accuracy_score(targets, predicted))
        assert metrics["macro_f1"] == pytest.approx(
            f1_score(targets, predicted, average="macro", zero_division=0))


def test_multilabel_f1_thresholds_logits_at_zero() -> None:
    logits = np.array([[2.0, -1.0, 0.0], [0.5, 0.1, -3.0], [-0.2, 1.0, 4.0], [-1.0, -1.0, 0.3]])
    targets = np.array([[1, 0, 1], [1, 0, 0], [0, 1, 1], [0, 1, 1]], dtype=float)
    predicted = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 1]])  # 0.0 is not positive
    truth = targets.astype(int)
    # Micro: tp 5, fp 1, fn 2 over every cell.
    metrics = task_metrics("multilabel", logits, targets)
    assert metrics["micro_f1"] == pytest.approx(2 * 5 / (2 * 5 + 1 + 2))
    assert metrics["micro_f1"] == pytest.approx(f1_by_hand(truth.ravel(), predicted.ravel()))
    per_label = [f1_by_hand(truth[:, j], predicted[:, j]) for j in range(3)]
    assert per_label == pytest.approx([1.0, 0.5, 0.8])
    assert metrics["macro_f1"] == pytest.approx(np.mean(per_label))
    assert metrics["subset_accuracy"] == pytest.approx(1 / 4)  # only row 2 exactly right
    assert objective_for("multilabel").metric == "micro_f1"


def test_regression_metrics_against_numpy() -> None:
    predictions = np.array([[2.5], [0.0], [2.0], [8.0], [4.5]])
    targets = np.array([3.0, -0.5, 2.0, 7.0, 5.0])
    errors = predictions.ravel() - targets
    metrics = task_metrics("regression", predictions, targets)
    assert metrics["rmse"] == pytest.approx(np.sqrt(np.mean(errors**2)))
    assert metrics["rmse"] == pytest.approx(math.sqrt((0.25 * 3 + 0 + 1) / 5))
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(errors)))
    assert metrics["mae"] == pytest.approx((0.5 * 3 + 0 + 1) / 5)
    r2 = 1 - np.sum(errors**2) / np.sum((targets - targets.mean()) ** 2)
    assert metrics["r2"] == pytest.approx(r2)
    assert 0.9 < metrics["r2"] < 1.0


# ----------------------------------------------------------------------------------------------
# baselines and the objective


def majority_baseline(kind: str, train: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """The majority baseline's test metrics, as the run's evaluation computes them."""
    classes = train.shape[1] if kind == "multilabel" else int(max(train.max(), test.max())) + 1
    outputs = majority(kind, Parts(train, test, test, train, classes)).test
    return task_metrics(kind, outputs, test)


def test_majority_baseline_for_classification() -> None:
    train = np.array([0, 1, 1, 2, 1, 0])
    test = np.array([1, 1, 0, 2, 1])
    assert majority_baseline("classification", train, test)["accuracy"] == pytest.approx(3 / 5)


def test_majority_baseline_for_multilabel_predicts_each_usual_label() -> None:
    train = np.array([[1, 0, 1], [1, 0, 0], [1, 1, 1], [0, 0, 1]], dtype=float)  # usual: 1, 0, 1
    test = np.array([[1, 0, 1], [0, 1, 1], [1, 0, 0]], dtype=float)
    # Predicted [1, 0, 1] for every row: tp 4, fp 2, fn 1; per label F1 0.8, 0, 0.8.
    baseline = majority_baseline("multilabel", train, test)
    assert baseline["micro_f1"] == pytest.approx(8 / 11)
    assert baseline["macro_f1"] == pytest.approx((0.8 + 0.0 + 0.8) / 3)
    assert baseline["subset_accuracy"] == pytest.approx(1 / 3)


def test_majority_baseline_for_regression_predicts_the_training_mean() -> None:
    train = np.array([1.0, 2.0, 3.0, 6.0])  # mean 3
    test = np.array([2.0, 4.0, 5.0])  # mean 11/3: the training mean is off, so R² < 0
    baseline = majority_baseline("regression", train, test)
    assert baseline["rmse"] == pytest.approx(math.sqrt((1 + 1 + 4) / 3))
    assert baseline["mae"] == pytest.approx((1 + 1 + 2) / 3)
    total = sum((v - 11 / 3) ** 2 for v in test)
    assert baseline["r2"] == pytest.approx(1 - 6 / total)
    assert baseline["r2"] < 0


def test_objective_directions() -> None:
    rmse = objective_for("regression")
    assert (rmse.metric, rmse.greater_is_better, rmse.direction) == ("rmse", False, "minimize")
    assert rmse.better(1.0, 2.0) and not rmse.better(2.0, 1.0) and not rmse.better(1.0, 1.0)
    assert rmse.better(1e9, None)  # anything beats nothing yet
    accuracy = objective_for("classification")
    assert (accuracy.metric, accuracy.direction) == ("accuracy", "maximize")
    assert accuracy.better(0.9, 0.8) and not accuracy.better(0.8, 0.9)
    assert not accuracy.better(0.8, 0.8)  # a tie keeps the earlier epoch
    scores = rmse.score(np.array([[1.0], [3.0]]), np.array([1.0, 1.0]))
    assert scores["rmse"] == pytest.approx(math.sqrt(2.0))
