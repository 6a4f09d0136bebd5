"""A backbone and a head: the model every strategy fine-tunes."""

from __future__ import annotations

import torch
from torch import nn

from tunesmith.models.backbone import Backbone


class Classifier(nn.Module):
    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.backbone(inputs))
        return logits
