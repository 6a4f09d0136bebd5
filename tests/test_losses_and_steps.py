"""Focal loss with label smoothing, and the loss a step logs under gradient accumulation."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import logged
from test_train import feature_loader, mlp_model
from tunesmith.models.inputs import EvalBatches
from tunesmith.models.losses import FocalLoss, LossSettings, make_loss
from tunesmith.train import train_trial
from tunesmith.train.loop import TrainSettings

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-0.5, 1.5, 0.0], [0.0, 0.0, 3.0]])
TARGETS = torch.tensor([0, 2, 1, 0])


def test_focal_loss_takes_label_smoothing() -> None:
    """train.label_smoothing was dropped for train.loss: focal (the same run with 0.3 and 0
    trained bit-identically), although `auto` resolves it to 0.1 for images."""
    eps = 0.3
    loss = make_loss(LossSettings("focal", focal_gamma=0.0, label_smoothing=eps))
    assert isinstance(loss, FocalLoss)
    p = F.softmax(LOGITS, dim=-1).tolist()
    # gamma 0 is the cross-entropy, smoothed the same way: (1 - eps) CE + eps mean_k(-log p_k)
    by_hand = sum((1 - eps) * -math.log(p[i][t]) + eps * sum(-math.log(q) for q in p[i]) / 3
                  for i, t in enumerate(TARGETS.tolist())) / len(p)
    smoothed = F.cross_entropy(LOGITS, TARGETS, label_smoothing=eps).item()
    assert smoothed == pytest.approx(by_hand, rel=1e-6)
    assert loss(LOGITS, TARGETS).item() == pytest.approx(smoothed, rel=1e-6)
    # gamma 2 by hand: every class's term weighted by its smoothed target
    rows = [
        sum(((1 - eps) * (k == t) + eps / 3) * (1 - p[i][k]) ** 2 * -math.log(p[i][k])
            for k in range(3))
        for i, t in enumerate(TARGETS.tolist())
    ]
    two = make_loss(LossSettings("focal", focal_gamma=2.0, label_smoothing=eps))
    assert two(LOGITS, TARGETS).item() == pytest.approx(sum(rows) / len(rows), rel=1e-6)
    plain = make_loss(LossSettings("focal", focal_gamma=2.0))
    assert plain(LOGITS, TARGETS).item() < two(LOGITS, TARGETS).item() - 0.1


def test_a_logged_step_loss_is_the_mean_over_its_accumulated_batches(tmp_path: Path) -> None:
    """With train.accumulate, metrics.jsonl logged the loss of a step's last batch alone."""
    val = EvalBatches(feature_loader(32, 32), list(range(32)))
    base = TrainSettings(lr=0.05, head_lr=0.05, weight_decay=0.0, epochs=2, batch_size=16,
                         warmup=0.0, grad_clip=None, precision="fp32", seed=0, optimizer="sgd",
                         momentum=0.0)
    train_trial(mlp_model(), feature_loader(64, 16), val, base, tmp_path / "whole")
    train_trial(mlp_model(), feature_loader(64, 8), val, replace(base, accumulate=2),
                tmp_path / "halves")
    whole = [line["loss"] for line in logged(tmp_path / "whole", "step")]
    halves = [line["loss"] for line in logged(tmp_path / "halves", "step")]
    assert len(whole) == len(halves) == 2 * 4
    # Two halves of 8 rows at the same weights: their mean loss is the 16-row batch's.
    assert halves == pytest.approx(whole, rel=1e-5)
    assert max(whole) - min(whole) > 0.01  # the losses change from step to step
