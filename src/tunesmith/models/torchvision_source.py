"""`torchvision:NAME?weights=FILE`: a torchvision classification model with local weights.

The architecture comes from `torchvision.models.get_model(NAME)`; its last linear layer (the
ImageNet classifier: `fc`, `classifier[-1]`, `heads.head`) is replaced by the identity, so the
network returns the pooled features tunesmith's head reads. Input size and normalization come
from the model's registered pretrained weights entry (read from torchvision's metadata; nothing
is downloaded).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.errors import TunesmithError
from tunesmith.models.backbone import Backbone
from tunesmith.models.depthwise import use_fast_depthwise
from tunesmith.models.weights import load_weights

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "pretrained_size": 224}

# Built as torchvision builds them to load its pretrained weights. Left to themselves they add
# auxiliary classifiers, which those weights do not hold (torchvision drops them after loading) and
# which make the training-mode forward return a tuple of logits instead of features.
# `transform_input`: the weights were ported from TensorFlow and expect pixels in [-1, 1]; the
# network derives those from the ImageNet-normalized input. `init_weights` keeps their long-standing
# initialization for runs without weights (left unset, torchvision warns that it will change).
BUILD_OPTIONS: dict[str, dict[str, Any]] = {
    name: {"aux_logits": False, "transform_input": True, "init_weights": True}
    for name in ("googlenet", "inception_v3")
}


class TorchvisionBackbone(Backbone):
    modality = "image"

    def __init__(self, network: nn.Module, name: str, *, num_features: int, image_size: int):
        super().__init__()
        # Channels-last lets oneDNN/cuDNN pick their fast convolution kernels.
        self.network = network.to(memory_format=torch.channels_last)
        use_fast_depthwise(self.network)  # EfficientNet's late depthwise layers: see depthwise.py
        self.name = name
        self.num_features = num_features
        self.image_size = image_size

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        pixels = inputs["pixel_values"].contiguous(memory_format=torch.channels_last)
        return self.network(pixels).flatten(1)  # type: ignore[no-any-return]

    @property
    def resizable(self) -> bool:
        """Convolutional networks take any input size; vision transformers need theirs."""
        return not self.name.startswith(("vit_", "swin_", "maxvit_"))

    def pretrained_stats(self) -> dict[str, Any]:
        return pretrained_stats(self.name)

    def preprocessing(self) -> dict[str, Any]:
        stats = self.pretrained_stats()
        return {"kind": "image", "size": self.image_size, "mean": stats["mean"],
                "std": stats["std"]}

    def save_architecture(self, folder: Path) -> dict[str, Any]:
        return {"source": "torchvision", "name": self.name, "image_size": self.image_size}


def pretrained_stats(name: str) -> dict[str, Any]:
    """Mean, std and crop size of the model's default pretrained weights entry."""
    from torchvision.models import get_model_weights

    try:
        transforms = get_model_weights(name).DEFAULT.transforms()
    except (ValueError, AttributeError, TypeError):
        return dict(IMAGENET)
    return {
        "mean": [float(v) for v in transforms.mean],
        "std": [float(v) for v in transforms.std],
        "pretrained_size": int(transforms.crop_size[0]),
    }


def _headless(network: nn.Module, name: str, field: str) -> tuple[nn.Module, int, str]:
    """`network` with its last linear layer replaced by the identity, that layer's input width,
    and its name (whose keys a checkpoint may hold and loading ignores)."""
    last = None
    for module_name, module in network.named_modules():
        if isinstance(module, nn.Linear):
            last = (module_name, module)
    if last is None:
        raise TunesmithError(
            f"torchvision's {name} has no linear classifier to replace (it classifies with a "
            "convolution)",
            field=field,
            fix="use a model with a linear classifier (resnet*, efficientnet_*, mobilenet_*, "
            "convnext_*, regnet_*, vit_*, swin_*)",
        )
    module_name, linear = last
    parent_name, _, attribute = module_name.rpartition(".")
    parent = network.get_submodule(parent_name) if parent_name else network
    setattr(parent, attribute, nn.Identity())
    return network, int(linear.in_features), module_name


def create(name: str, *, field: str) -> tuple[nn.Module, int, str]:
    from torchvision.models import get_model, list_models

    available = list_models()
    if name not in available:
        close = difflib.get_close_matches(name, available, n=5, cutoff=0.6)
        raise TunesmithError(
            f"torchvision has no model named {name!r}"
            + (f"; closest: {', '.join(close)}" if close else ""),
            field=field,
            fix="use a name from torchvision.models.list_models()",
        )
    return _headless(get_model(name, weights=None, **BUILD_OPTIONS.get(name, {})), name, field)


def load_pretrained(
    name: str, weights: Path | None, *, field: str, image_size: int | None
) -> TorchvisionBackbone:
    network, features, classifier = create(name, field=field)
    if weights is not None:
        load_weights(
            network,
            weights,
            field=field,
            ignore=[f"{classifier}."],
            architecture=f"torchvision's {name}",
        )
    size = image_size or pretrained_stats(name)["pretrained_size"]
    return TorchvisionBackbone(network, name, num_features=features, image_size=size)


def rebuild(folder: Path, info: dict[str, Any]) -> TorchvisionBackbone:
    name = str(info["name"])
    network, features, _ = create(name, field="backbone")
    return TorchvisionBackbone(
        network, name, num_features=features, image_size=int(info["image_size"])
    )
