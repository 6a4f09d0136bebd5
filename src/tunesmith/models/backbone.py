"""The surface every backbone source offers, whatever library it comes from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.data.sources import Modality


class Backbone(nn.Module):
    """A pretrained network that maps a batch of inputs to one pooled embedding per example.

    Subclasses set `num_features` and `modality`, and implement `forward`, `preprocessing` (how raw
    inputs become tensors, derived from the model, never from flags) and `save_architecture`
    (what a bundle needs to rebuild the network without the original weights files).
    """

    num_features: int
    modality: Modality

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def preprocessing(self) -> dict[str, Any]:
        raise NotImplementedError

    def save_architecture(self, folder: Path) -> dict[str, Any]:
        """Write what rebuilding needs into `folder`; return the JSON-able description."""
        raise NotImplementedError
