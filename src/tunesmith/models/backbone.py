"""The surface every backbone source offers, whatever library it comes from.

A backbone wraps one library network (`self.network`: a transformers model, a timm or torchvision
model, a user's module, a from-scratch MLP or CNN) and maps a batch of inputs to one pooled
embedding per example. The fine-tuning strategies see a backbone only through this surface:
`blocks()` orders its parameters from input to output (layer-wise learning rates, freezing the
bottom K blocks, gradual unfreezing), `adapter_targets()` names the layers a PEFT adapter wraps,
and `save_architecture` with its source's `rebuild` round-trips it through a bundle.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.data.sources import Modality
from tunesmith.models.blocks import Block, ordered_blocks

# Layers a low-rank adapter can wrap: every linear layer, and convolutions that mix channels
# (a depthwise convolution has one input channel per filter: no rank to reduce).
ADAPTABLE = (nn.Linear, nn.Conv2d)


class Backbone(nn.Module):
    """Subclasses set `num_features`, `modality` and `network`, and implement `forward`,
    `preprocessing` (how raw inputs become tensors, derived from the model, never from flags) and
    `save_architecture` (what rebuilding needs without the original weights files)."""

    num_features: int
    modality: Modality
    network: nn.Module
    # Images are decoded to this mode (`data.clean.image_mode`: "L" drops colour) before the
    # preprocessing gives them the channels the network reads; the config's, or the bundle's.
    image_mode: str = "RGB"

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def preprocessing(self) -> dict[str, Any]:
        raise NotImplementedError

    def save_architecture(self, folder: Path) -> dict[str, Any]:
        """Write what rebuilding needs into `folder`; return the JSON-able description."""
        raise NotImplementedError

    def save_native(self, folder: Path) -> dict[str, str] | None:
        """Write the fine-tuned network in its library's own format into `folder`, for people who
        load it without tunesmith; None where there is none (the bundle alone)."""
        return None

    def blocks(self) -> list[Block]:
        """The network's parameters cut into blocks, from the input to the output. Adapters sit
        inside the layers they wrap, so an adapted network is cut as the network it wraps: each
        adapter trains in the block of its layer, at that block's learning rate."""
        return ordered_blocks(unwrapped(self.network))

    def adapter_targets(self) -> list[str]:
        """Names (inside `network`) of the layers a low-rank adapter wraps: the linear layers and
        channel-mixing convolutions of every block but the first (the embeddings or stem, whose
        input is the raw tokens or pixels)."""
        network = unwrapped(self.network)
        inside = {id(module) for block in self.blocks()[1:] for module in block.modules}
        return [
            name
            for name, module in adaptable_layers(network).items()
            if _within(module, name, inside, network)
        ]


def unwrapped(network: nn.Module) -> nn.Module:
    """The network a PEFT model wraps, or `network` itself."""
    # No PEFT import here: a network can only be a PeftModel once PEFT has been imported.
    peft = sys.modules.get("peft")
    if peft is not None and isinstance(network, peft.PeftModel):
        base: nn.Module = network.get_base_model()
        return base
    return network


def adaptable_layers(network: nn.Module) -> dict[str, nn.Module]:
    """Every layer of `network` a low-rank adapter can wrap, by name."""
    modules = dict(network.named_modules())
    return {name: modules[name] for name, why in unadaptable(network).items() if why is None}


def unadaptable(network: nn.Module) -> dict[str, str | None]:
    """Every module of `network` by name, with why an adapter cannot wrap it (None where it can:
    a linear layer, or a convolution that mixes channels, that the network calls)."""
    # MultiheadAttention reads its out_proj's weight without calling the layer: an adapter
    # wrapped around it would never run.
    uncalled = {
        id(module.out_proj)
        for module in network.modules()
        if isinstance(module, nn.MultiheadAttention)
    }
    return {name: _why_not(module, uncalled) for name, module in network.named_modules() if name}


def _why_not(module: nn.Module, uncalled: set[int]) -> str | None:
    if id(module) in uncalled:
        return "the output projection of a MultiheadAttention, which never calls it"
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        return f"a Conv2d with groups={module.groups}, not a convolution over all channels"
    if isinstance(module, ADAPTABLE):
        return None
    if next(module.children(), None) is not None:
        return f"{type(module).__name__}, a container of other layers"
    return type(module).__name__


def _within(module: nn.Module, name: str, blocks: set[int], network: nn.Module) -> bool:
    """Whether `module` (called `name` in `network`) lies inside one of the block modules."""
    parts = name.split(".")
    current = network
    for part in parts:
        current = getattr(current, part)
        if id(current) in blocks:
            return True
    return id(module) in blocks
