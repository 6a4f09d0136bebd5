"""Batch-norm statistics measured again under the weights that are evaluated.

A batch norm normalizes by its batch's statistics in training and by running averages of them in
evaluation. `recalibrate_norms` measures those again, for two callers:

- A weight soup: the average of the ingredients' running statistics is not the statistics of the
  averaged weights (search/soup.py).
- A network from random weights, before each evaluation ("precise BN"). While the weights move
  slowly (fine-tuning a pretrained network) the running averages follow them. From random weights
  they move fast, the averages describe the weights of many steps ago, and evaluation can
  collapse: a MobileNetV3-Small from random weights, 3 epochs of 1,500 digits, scored validation
  loss 2.3026 (one class for every row) at a training loss of 2.08, and 2.08 with the statistics
  measured again. They are measured on a seeded sample of a few hundred training rows without
  augmentation (the same after a resume), under the weights evaluated (the averaged ones when a
  weight average is kept, as SWA does). See Wu and Johnson, "Rethinking 'Batch' in BatchNorm"
  (2021).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Container, Iterable
from typing import Any

import torch
from torch import nn


@torch.no_grad()
def recalibrate_norms(
    model: nn.Module,
    batches: Callable[[], Iterable[dict[str, torch.Tensor]]],
    *,
    layers: Container[str] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> bool:
    """Estimate the running statistics of the batch-norm layers named in `layers` (None: all)
    again: the mean, over the batches `batches()` makes (their inputs; labels are ignored; a
    batch of one row has no variance and is skipped), of each layer's batch statistics, with
    everything else in eval mode (no dropout, no stochastic depth, the other norms as they are)
    and the forward pass under `autocast`, as the model is evaluated. The weights do not change.
    Returns whether there was any such layer (if not, nothing is run)."""
    norms = [module for name, module in model.named_modules()
             if isinstance(module, nn.modules.batchnorm._BatchNorm)
             and module.track_running_stats and (layers is None or name in layers)]
    if not norms:
        return False
    was_training = model.training
    momenta = [norm.momentum for norm in norms]
    before = [{name: buffer.clone() for name, buffer in norm.named_buffers()} for norm in norms]
    device = next(model.parameters()).device
    measured = False
    try:
        model.eval()
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over all batches, not an exponential one
            norm.train()
        for batch in batches():
            inputs = {name: tensor.to(device) for name, tensor in batch.items()
                      if name != "labels"}
            if len(next(iter(inputs.values()))) > 1:
                with autocast():
                    model(inputs)
                measured = True
    finally:
        for norm, momentum, buffers in zip(norms, momenta, before, strict=True):
            norm.momentum = momentum
            if not measured:  # no batch to measure on: the statistics stay as they were
                for name, buffer in norm.named_buffers():
                    buffer.copy_(buffers[name])
        model.train(was_training)
    return True


def unfrozen_norms(model: nn.Module) -> set[str]:
    """The batch norms (module names) that train: those outside the model's frozen blocks
    (`TaskModel.frozen`), whose statistics stay as they were."""
    frozen = {id(module) for block in getattr(model, "frozen", []) for module in block.modules()}
    return {name for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
            and id(module) not in frozen}
