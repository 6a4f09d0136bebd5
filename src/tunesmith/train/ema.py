"""An exponential moving average of the weights, evaluated and kept in place of the raw weights.

Fine-tuning on a few thousand rows makes the weights wander from step to step; their running
average sits in a flatter, better-generalizing spot (the idea behind Polyak averaging, SWA and
model soups) and costs one fused update per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class WeightAverage:
    """The average of `model`'s floating-point weights and buffers, but those named in `skip`
    (weights that do not train: their average is themselves)."""

    def __init__(
        self, model: nn.Module, *, decay: float, skip: frozenset[str] = frozenset()
    ) -> None:
        self.decay = decay
        self.updates = 0
        self.tensors = [
            tensor
            for name, tensor in model.state_dict().items()
            if tensor.is_floating_point() and name not in skip
        ]
        self.shadow = [t.detach().clone() for t in self.tensors]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current weights.

        Until `1 / (1 - decay)` updates have been seen this is the plain mean of every update so
        far; from then on an exponential average over about that many recent steps. So a short
        run still averages over a useful stretch instead of being anchored to its first steps.
        """
        self.updates += 1
        decay = min(self.decay, self.updates / (self.updates + 1))
        # `tensors` are the state dict's views of the live weights: already detached.
        torch._foreach_lerp_(self.shadow, self.tensors, 1.0 - decay)

    @torch.no_grad()
    def load(self, shadow: dict[str, torch.Tensor], *, updates: int) -> None:
        """The average a checkpoint saved (`ema.0`, `ema.1`, ... in `shadow` order)."""
        for index, tensor in enumerate(self.shadow):
            tensor.copy_(shadow[f"ema.{index}"])
        self.updates = updates

    @contextlib.contextmanager
    @torch.no_grad()
    def applied(self) -> Iterator[None]:
        """Swap the averaged weights into the model for the duration of the block."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def _swap(self) -> None:
        for live, average in zip(self.tensors, self.shadow, strict=True):
            held = live.detach().clone()
            live.copy_(average)
            average.copy_(held)
