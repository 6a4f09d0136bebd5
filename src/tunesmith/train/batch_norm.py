"""Batch-norm statistics recomputed with the weights that are evaluated ("precise BN").

A batch norm normalizes by its batch's statistics in training and by running averages of them in
evaluation. While the weights move slowly (fine-tuning a pretrained network) the running averages
follow them. A network from random weights moves fast: the averages then describe the weights of
many steps ago, and evaluation can collapse (a MobileNetV3-Small from random weights, 3 epochs of
1,500 digits: validation loss 2.3026, one class for every row, at a training loss of 2.08; with the
statistics recomputed, validation loss 2.07). So before each evaluation the statistics are
recomputed from the last few hundred training rows, passed again through the weights evaluated
(the averaged ones, when a weight average is kept, as SWA does), in training mode without
gradients. See Wu and Johnson, "Rethinking 'Batch' in BatchNorm" (2021).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch norms that keep running statistics."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


class RecentBatches:
    """The inputs of the last training batches, `rows` rows in all or a little more."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.batches: deque[Batch] = deque()
        self.held = 0

    def add(self, batch: Batch) -> None:
        size = len(next(iter(batch.values())))
        self.batches.append({name: tensor.detach() for name, tensor in batch.items()})
        self.held += size
        while self.held - len(next(iter(self.batches[0].values()))) >= self.rows:
            self.held -= len(next(iter(self.batches.popleft().values())))


@torch.no_grad()
def recompute_statistics(
    model: nn.Module, recent: RecentBatches,
    autocast: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
) -> int:
    """Replace the running statistics of the batch norms that train (a frozen block's stay as
    they are) with those of `recent` under the model's current weights; returns how many were
    replaced. The model is left in the mode it was in."""
    if not recent.batches:
        return 0
    was_training = model.training
    model.train()  # a TaskModel keeps its frozen blocks in evaluation mode
    norms = [norm for norm in batch_norms(model) if norm.training]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches passed
    try:
        for batch in recent.batches:
            with autocast():
                model(batch)
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        model.train(was_training)
    return len(norms)
