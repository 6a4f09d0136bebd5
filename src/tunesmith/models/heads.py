"""Heads: depth, width, activation, initialization and dropout are plain values.

A head maps the backbone's pooled features to the task's outputs: one logit per class, or one
number for regression. A regression head ends in a fixed affine map to the target's units (the
training targets' mean and std), so the layers before it work at unit scale, and a
zero-initialized head starts by predicting the training mean.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
}

_INITS: dict[str, Callable[[torch.Tensor], object]] = {
    "xavier_uniform": nn.init.xavier_uniform_,
    "xavier_normal": nn.init.xavier_normal_,
    "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
    "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    "orthogonal": nn.init.orthogonal_,
    "zeros": nn.init.zeros_,
}


def initialize(linear: nn.Linear, init: str) -> None:
    """Apply a named initialization to a linear layer's weight; biases start at zero."""
    if init == "default":
        return
    _INITS[init](linear.weight)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


class TargetScale(nn.Module):
    """y = x * std + mean, with mean and std fixed (buffers, saved with the weights), in float64:
    float32 holds about 7 digits, so a target near 1e9 would move in steps of 64 and one past
    3.4e38 would be infinite."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean), dtype=torch.float64))
        self.register_buffer("std", torch.tensor(float(std), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double() * self.std + self.mean


def full_precision(output: torch.Tensor) -> torch.Tensor:
    """A model's output as float32 (from bf16/fp16 autocast), but a regression head's float64
    numbers (TargetScale) as they are."""
    return output if output.dtype == torch.float64 else output.float()


def make_head(
    in_features: int,
    num_outputs: int,
    *,
    layers: int,
    hidden: int,
    activation: str,
    init: str,
    dropout: float,
    target_scale: tuple[float, float] | None = None,
) -> nn.Sequential:
    """`layers` hidden blocks (linear, activation, dropout) then the output layer.

    The output layer of a zero-initialized head (init `zeros`) starts every class at equal odds,
    which BiT found makes transfer more stable; hidden layers then keep a He/Xavier start so that
    gradients still reach them.
    """
    blocks: list[nn.Module] = []
    width = in_features
    for _ in range(layers):
        linear = nn.Linear(width, hidden)
        initialize(linear, "kaiming_normal" if init == "zeros" else init)
        blocks += [linear, ACTIVATIONS[activation](), nn.Dropout(dropout)]
        width = hidden
    if layers == 0 and dropout > 0:
        blocks.append(nn.Dropout(dropout))
    output = nn.Linear(width, num_outputs)
    initialize(output, init)
    blocks.append(output)
    if target_scale is not None:
        blocks.append(TargetScale(*target_scale))
    return nn.Sequential(*blocks)
