"""Classification heads: depth, width, activation, initialization and dropout are plain values."""

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


def make_head(
    in_features: int,
    num_outputs: int,
    *,
    layers: int,
    hidden: int,
    activation: str,
    init: str,
    dropout: float,
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
    return nn.Sequential(*blocks)
