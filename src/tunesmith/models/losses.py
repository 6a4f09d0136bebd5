"""Losses for each kind of label, and the check that a loss fits the task.

| loss | task | options |
|---|---|---|
| cross_entropy | classification | label smoothing, class weights |
| focal | classification | gamma (Lin et al. 2017), label smoothing, class weights (rare classes) |
| bce | multilabel | pos_weight per class (negatives / positives when balanced) |
| mse, huber | regression | targets scaled by the training targets' standard deviation |

Soft targets (MixUp and CutMix mix one-hot labels) go through the same cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.errors import TunesmithError

LOSSES_FOR = {
    "classification": ("cross_entropy", "focal"),
    "multilabel": ("bce",),
    "regression": ("mse", "huber"),
}
DEFAULT_LOSS = {"classification": "cross_entropy", "multilabel": "bce", "regression": "mse"}


@dataclass(frozen=True)
class LossSettings:
    name: str
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    weights: tuple[float, ...] | None = None  # per class: class weights, or BCE pos_weight
    target_std: float = 1.0  # regression: the errors are measured in training-target stds


def check_loss(loss: str, kind: str) -> None:
    """A loss that cannot train this kind of label is a config error, not a crash mid-run."""
    if loss not in LOSSES_FOR[kind]:
        raise TunesmithError(
            f"train.loss {loss} does not fit a {kind} task",
            field="train.loss",
            fix=f"use {' or '.join(LOSSES_FOR[kind])} (or auto) for {kind}",
        )


def balanced_weights(kind: str, targets: np.ndarray, classes: int) -> tuple[float, ...]:
    """Classification: n / (k * count) per class (scikit-learn's `balanced`), so every class
    weighs as much in total. Multilabel: negatives / positives per class, BCE's pos_weight."""
    if kind == "multilabel":
        positives = targets.sum(axis=0)
        negatives = len(targets) - positives
        return tuple(float(n / max(p, 1.0)) for n, p in zip(negatives, positives, strict=True))
    counts = np.bincount(targets.astype(int), minlength=classes).astype(float)
    return tuple(float(len(targets) / (classes * max(c, 1.0))) for c in counts)


class FocalLoss(nn.Module):
    """-(1 - p_t)^gamma log p_t, averaged: easy examples count less, so rare, hard ones count.

    Label smoothing mixes the targets with the uniform distribution as cross-entropy's does
    (soft targets too), so gamma 0 is the smoothed cross-entropy."""

    weight: torch.Tensor | None

    def __init__(
        self, gamma: float, weight: torch.Tensor | None, *, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=-1)
        classes = logits.shape[-1]
        soft = targets if targets.is_floating_point() else F.one_hot(targets, classes)
        soft = soft.to(log_p.dtype)
        if self.label_smoothing:
            soft = soft * (1.0 - self.label_smoothing) + self.label_smoothing / classes
        focal = (1.0 - log_p.exp()) ** self.gamma * log_p
        if self.weight is not None:
            focal = focal * self.weight
        return -(soft * focal).sum(-1).mean()


class ScaledRegressionLoss(nn.Module):
    """MSE or Huber on predictions and targets divided by the training targets' std: the same
    learning rate then suits a target in cents and one in millions."""

    def __init__(self, name: str, std: float) -> None:
        super().__init__()
        self.name = name
        self.std = std

    def forward(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        predictions = predictions.reshape(targets.shape) / self.std
        scaled = targets.to(predictions.dtype) / self.std
        if self.name == "huber":
            return F.huber_loss(predictions, scaled)
        return F.mse_loss(predictions, scaled)


def make_loss(settings: LossSettings) -> nn.Module:
    weights = torch.tensor(settings.weights, dtype=torch.float32) if settings.weights else None
    if settings.name == "cross_entropy":
        return nn.CrossEntropyLoss(weight=weights, label_smoothing=settings.label_smoothing)
    if settings.name == "focal":
        return FocalLoss(settings.focal_gamma, weights, label_smoothing=settings.label_smoothing)
    if settings.name == "bce":
        return nn.BCEWithLogitsLoss(pos_weight=weights)
    return ScaledRegressionLoss(settings.name, settings.target_std)
