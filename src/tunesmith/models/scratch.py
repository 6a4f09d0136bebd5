"""`scratch:mlp` and `scratch:cnn`: networks trained from random initialization.

For users with no pretrained model: an MLP for tables (or any flat features) and a small CNN for
images. Every structural knob is a plain value (`model.scratch`), so the search can choose it:

- MLP: `depth` blocks of linear -> normalization -> activation -> dropout, each `width` wide;
- CNN: a stem convolution to `channels`, then `depth` stages that halve the resolution and double
  the channels (up to 8x), each a `kernel_size` convolution split into `groups` (a grouped
  convolution; 1 is a plain one) -> batch norm -> activation, then global average pooling.

Each block is one module, so the blocks the fine-tuning strategies see are the network's layers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from tunesmith.data.sources import Modality
from tunesmith.errors import TunesmithError
from tunesmith.models.backbone import Backbone
from tunesmith.models.heads import ACTIVATIONS, initialize

Norm = Literal["batch", "layer", "none"]
CNN_MEAN, CNN_STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]  # no pretraining: centre [0, 1] on 0
MAX_CHANNEL_GROWTH = 8


@dataclass(frozen=True)
class ScratchShape:
    """The resolved structure of a from-scratch network."""

    depth: int
    width: int  # MLP: units per layer
    channels: int  # CNN: channels after the stem
    kernel_size: int
    groups: int
    activation: str
    norm: Norm
    dropout: float
    init: str


def _norm_1d(norm: Norm, width: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm1d(width)
    return nn.LayerNorm(width) if norm == "layer" else nn.Identity()


class MLPBlock(nn.Module):
    def __init__(self, in_width: int, width: int, shape: ScratchShape) -> None:
        super().__init__()
        self.linear = nn.Linear(in_width, width)
        initialize(self.linear, shape.init)
        self.norm = _norm_1d(shape.norm, width)
        self.activation = ACTIVATIONS[shape.activation]()
        self.dropout = nn.Dropout(shape.dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.activation(self.norm(self.linear(features))))  # type: ignore[no-any-return]


class ConvBlock(nn.Module):
    def __init__(
        self, in_channels: int, channels: int, shape: ScratchShape, *, stride: int, groups: int
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            channels,
            shape.kernel_size,
            stride=stride,
            padding=shape.kernel_size // 2,
            groups=groups,
            bias=shape.norm == "none",
        )
        if shape.init != "default":
            (nn.init.kaiming_normal_ if "kaiming" in shape.init else nn.init.xavier_uniform_)(
                self.conv.weight
            )
        self.norm: nn.Module = nn.BatchNorm2d(channels) if shape.norm != "none" else nn.Identity()
        self.activation = ACTIVATIONS[shape.activation]()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.conv(pixels)))  # type: ignore[no-any-return]


def build_mlp(in_features: int, shape: ScratchShape) -> nn.Sequential:
    blocks: list[nn.Module] = []
    width = in_features
    for _ in range(shape.depth):
        blocks.append(MLPBlock(width, shape.width, shape))
        width = shape.width
    return nn.Sequential(*blocks)


def _stage_groups(in_channels: int, channels: int, groups: int) -> int:
    """The largest group count up to `groups` that divides both channel counts."""
    for candidate in range(min(groups, in_channels, channels), 0, -1):
        if in_channels % candidate == 0 and channels % candidate == 0:
            return candidate
    return 1


def build_cnn(shape: ScratchShape) -> nn.Sequential:
    blocks: list[nn.Module] = [ConvBlock(3, shape.channels, shape, stride=1, groups=1)]
    channels = shape.channels
    for stage in range(shape.depth):
        wider = shape.channels * min(2 ** (stage + 1), MAX_CHANNEL_GROWTH)
        groups = _stage_groups(channels, wider, shape.groups)
        blocks.append(ConvBlock(channels, wider, shape, stride=2, groups=groups))
        channels = wider
    blocks += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*blocks)


class ScratchNetwork(Backbone):
    def __init__(
        self,
        kind: Literal["mlp", "cnn"],
        shape: ScratchShape,
        *,
        in_features: int | None = None,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.shape = shape
        self.in_features = in_features
        self.image_size = image_size
        if kind == "mlp":
            assert in_features is not None
            self.modality: Modality = "tabular"
            self.network = build_mlp(in_features, shape)
            self.num_features = shape.width if shape.depth else in_features
        else:
            self.modality = "image"
            self.network = build_cnn(shape).to(memory_format=torch.channels_last)
            self.num_features = shape.channels * min(2**shape.depth, MAX_CHANNEL_GROWTH)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.kind == "mlp":
            return self.network(inputs["features"])  # type: ignore[no-any-return]
        pixels = inputs["pixel_values"].contiguous(memory_format=torch.channels_last)
        return self.network(pixels)  # type: ignore[no-any-return]

    def preprocessing(self) -> dict[str, Any]:
        if self.kind == "mlp":
            return {"kind": "features", "in_features": self.in_features}
        return {"kind": "image", "size": self.image_size, "mean": CNN_MEAN, "std": CNN_STD}

    def save_architecture(self, folder: Path) -> dict[str, Any]:
        return {
            "source": "scratch",
            "kind": self.kind,
            "shape": asdict(self.shape),
            "in_features": self.in_features,
            "image_size": self.image_size,
        }


NETWORKS = ("mlp", "cnn")


def check_network(kind: str, field: str) -> None:
    if kind not in NETWORKS:
        raise TunesmithError(
            f"scratch has no network named {kind!r}",
            field=field,
            fix="use scratch:mlp (tables, flat features) or scratch:cnn (images)",
        )


def create(
    kind: str,
    shape: ScratchShape,
    *,
    field: str,
    in_features: int | None = None,
    image_size: int | None = None,
) -> ScratchNetwork:
    check_network(kind, field)
    if kind == "mlp" and not in_features:
        raise TunesmithError(
            "scratch:mlp reads tabular features, and this task has none",
            field=field,
            fix="use scratch:mlp for tabular tasks, scratch:cnn for images",
        )
    return ScratchNetwork(kind, shape, in_features=in_features, image_size=image_size)  # type: ignore[arg-type]


def rebuild(folder: Path, info: dict[str, Any]) -> ScratchNetwork:
    return create(
        str(info["kind"]),
        ScratchShape(**info["shape"]),
        field="backbone.kind",
        in_features=info.get("in_features"),
        image_size=info.get("image_size"),
    )
