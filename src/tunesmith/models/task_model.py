"""The model every strategy fine-tunes: a backbone and a head, seen as blocks of depth.

`depth_groups()` lists the parameters from the input to the output, the head last: the
optimizer gives each block its learning rate from it (layer-wise decay), and freezing works on
it. A frozen block also stays in eval mode while the rest trains, so its batch-norm statistics
and dropout behave as in the pretrained network.
"""

from __future__ import annotations

import torch
from torch import nn

from tunesmith.models.backbone import Backbone
from tunesmith.models.blocks import Block

HEAD_BLOCK = "head"  # the name of the head's block (and its optimizer groups')


def head_block(head: nn.Module) -> Block:
    named = tuple((f"head.{name}", parameter) for name, parameter in head.named_parameters())
    return Block(HEAD_BLOCK, named, (head,))


class TaskModel(nn.Module):
    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.frozen: list[nn.Module] = []  # a plain list: not registered as submodules
        self.fixed: list[nn.Parameter] = []  # never trained, whichever blocks are
        self.fixed_modules: list[nn.Module] = []  # their batch norms: kept in eval mode

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        output: torch.Tensor = self.head(self.backbone(inputs))
        return output

    def depth_groups(self) -> list[Block]:
        return [*self.backbone.blocks(), head_block(self.head)]

    def train(self, mode: bool = True) -> TaskModel:
        super().train(mode)
        for module in [*self.frozen, *self.fixed_modules]:  # batch norms keep their statistics
            module.eval()
        return self


class ProbeModel(nn.Module):
    """The head alone, on backbone features computed once (`{"features": (n, D)}` batches)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        output: torch.Tensor = self.head(inputs["features"])
        return output

    def depth_groups(self) -> list[Block]:
        return [head_block(self.head)]
