"""`timm:NAME?weights=FILE`: a timm image model with weights from a local file.

The file is read without running code: safetensors, or a PyTorch state dict loaded with
`weights_only=True`. Its keys must match the architecture, except the classifier, which is replaced.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch

from tunesmith.errors import TunesmithError
from tunesmith.models.backbone import Backbone
from tunesmith.models.depthwise import use_fast_depthwise
from tunesmith.models.weights import load_weights

TIMM_WEIGHTS = "timm.safetensors"


class TimmBackbone(Backbone):
    modality = "image"

    def __init__(self, model: torch.nn.Module, name: str, *, image_size: int) -> None:
        super().__init__()
        # Channels-last lets oneDNN/cuDNN pick their fast convolution kernels: EfficientNet-Lite0
        # trained about 30% faster at 96 px on a 2-core CPU. Harmless for non-convolutional models.
        self.network = model.to(memory_format=torch.channels_last)
        use_fast_depthwise(self.network)  # EfficientNet's late depthwise layers: see depthwise.py
        self.name = name
        self.image_size = image_size
        self.num_features = int(model.num_features)  # type: ignore[arg-type]

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        pixels = inputs["pixel_values"].contiguous(memory_format=torch.channels_last)
        return self.network(pixels)  # type: ignore[no-any-return]

    @property
    def resizable(self) -> bool:
        """Convolutional networks take any input size; ViTs need the one they were built for."""
        return not getattr(self.network, "pretrained_cfg", {}).get("fixed_input_size", False)

    def pretrained_stats(self) -> dict[str, Any]:
        from timm.data.config import resolve_model_data_config

        data_config = resolve_model_data_config(self.network)
        return {
            "mean": list(data_config["mean"]),
            "std": list(data_config["std"]),
            "pretrained_size": int(data_config["input_size"][-1]),
        }

    def preprocessing(self) -> dict[str, Any]:
        stats = self.pretrained_stats()
        return {
            "kind": "image",
            "size": self.image_size,
            "mean": stats["mean"],
            "std": stats["std"],
        }

    def save_architecture(self, folder: Path) -> dict[str, Any]:
        return {"source": "timm", "name": self.name, "image_size": self.image_size}

    def save_native(self, folder: Path) -> dict[str, str]:
        """`timm.safetensors`: the network's weights, which `timm.create_model(name,
        num_classes=0)` loads as they are (its pooled features; the head is tunesmith's)."""
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in self.network.state_dict().items()},
                  str(folder / TIMM_WEIGHTS))
        return {"library": "timm", "file": TIMM_WEIGHTS, "model": self.name,
                "load": f"timm.create_model({self.name!r}, num_classes=0).load_state_dict("
                        f"safetensors.torch.load_file('{TIMM_WEIGHTS}'))"}


def create(name: str, *, field: str) -> torch.nn.Module:
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        raise TunesmithError(
            f"timm has no model named {name!r}"
            + (f"; closest: {', '.join(close)}" if close else ""),
            field=field,
            fix="use a name from timm.list_models()",
        )
    # num_classes=0 makes the model return pooled features: tunesmith adds its own head.
    return timm.create_model(name, pretrained=False, num_classes=0)


def load_timm_weights(model: torch.nn.Module, path: Path, *, name: str, field: str) -> None:
    """Load `path` into the headless `model`, ignoring only the old classifier's keys."""
    classifier = getattr(model, "default_cfg", {}).get("classifier", "classifier")
    load_weights(
        model, path, field=field, ignore=[f"{classifier}."], architecture=f"timm's {name}"
    )


def load_pretrained(
    name: str, weights: Path | None, *, field: str, image_size: int | None
) -> TimmBackbone:
    model = create(name, field=field)
    if weights is not None:
        load_timm_weights(model, weights, name=name, field=field)
    backbone = TimmBackbone(model, name, image_size=0)
    backbone.image_size = image_size or backbone.pretrained_stats()["pretrained_size"]
    return backbone


def rebuild(folder: Path, info: dict[str, Any]) -> TimmBackbone:
    model = create(str(info["name"]), field="backbone")
    return TimmBackbone(model, str(info["name"]), image_size=int(info["image_size"]))
