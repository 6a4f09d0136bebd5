"""Running a model over batches to collect its outputs in the rows' original order."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from tunesmith.models.heads import full_precision
from tunesmith.models.inputs import EvalBatches


@torch.inference_mode()
def collect_logits(
    model: nn.Module,
    batches: EvalBatches,
    *,
    device: torch.device | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) as arrays (float32 logits, or a regression's float64 numbers; int or
    float labels), row i belonging to input i."""
    was_training = model.training
    model.eval()
    logits: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for batch in _on_device(batches.loader, device):
        targets = batch.pop("labels")
        with autocast():
            output = model(batch)
        logits.append(full_precision(output).cpu())
        labels.append(targets.cpu())
        if on_batch is not None:
            on_batch(len(targets))
    model.train(was_training)
    stacked = torch.cat(logits).numpy()
    stacked_labels = torch.cat(labels).numpy()
    restore = np.empty(len(batches.order), dtype=int)
    restore[np.asarray(batches.order)] = np.arange(len(batches.order))
    return stacked[restore], stacked_labels[restore]


def _on_device(loader: Any, device: torch.device | None) -> Iterator[dict[str, torch.Tensor]]:
    for batch in loader:
        yield {k: v.to(device) for k, v in batch.items()} if device is not None else dict(batch)
