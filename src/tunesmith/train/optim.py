"""Optimizer and learning-rate schedule for one training run."""

from __future__ import annotations

import math

import torch
from torch import nn

from tunesmith.models.classifier import Classifier


def _no_decay(name: str, parameter: nn.Parameter) -> bool:
    # Biases and normalization scales are not weights to shrink (as in BERT and timm recipes).
    return parameter.ndim <= 1 or name.endswith(".bias")


def parameter_groups(
    model: Classifier, *, lr: float, head_lr: float, weight_decay: float
) -> list[dict[str, object]]:
    """Backbone and head groups, each split by whether weight decay applies.

    The head starts from scratch, so it gets its own (usually higher) learning rate.
    """
    groups: list[dict[str, object]] = []
    for part, part_lr in ((model.backbone, lr), (model.head, head_lr)):
        named = [(n, p) for n, p in part.named_parameters() if p.requires_grad]
        decay = [p for n, p in named if not _no_decay(n, p)]
        plain = [p for n, p in named if _no_decay(n, p)]
        groups += [
            {"params": decay, "lr": part_lr, "weight_decay": weight_decay},
            {"params": plain, "lr": part_lr, "weight_decay": 0.0},
        ]
    return [group for group in groups if group["params"]]


def adamw(
    model: Classifier, *, lr: float, head_lr: float, weight_decay: float
) -> torch.optim.AdamW:
    groups = parameter_groups(model, lr=lr, head_lr=head_lr, weight_decay=weight_decay)
    # The fused kernel updates every tensor in one pass: on a 2-core CPU it cut MiniLM's optimizer
    # step from about 150 ms to 30 ms (a quarter of the whole step) against the foreach default.
    return torch.optim.AdamW(groups, lr=lr, fused=True)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0, then cosine decay to 0 at the last step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
