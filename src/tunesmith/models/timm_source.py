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


class TimmBackbone(Backbone):
    modality = "image"

    def __init__(self, model: torch.nn.Module, name: str, *, image_size: int) -> None:
        super().__init__()
        # Channels-last lets oneDNN/cuDNN pick their fast convolution kernels: EfficientNet-Lite0
        # trained about 30% faster at 96 px on a 2-core CPU. Harmless for non-convolutional models.
        self.model = model.to(memory_format=torch.channels_last)
        self.name = name
        self.image_size = image_size
        self.num_features = int(model.num_features)  # type: ignore[arg-type]

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        pixels = inputs["pixel_values"].contiguous(memory_format=torch.channels_last)
        return self.model(pixels)  # type: ignore[no-any-return]

    def pretrained_stats(self) -> dict[str, Any]:
        from timm.data.config import resolve_model_data_config

        data_config = resolve_model_data_config(self.model)
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


def read_state_dict(path: Path, *, field: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise TunesmithError(
            "weights file not found",
            file=path,
            field=field,
            fix="set ?weights= to an existing .safetensors or .pth file",
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError or RuntimeError with a long text
        raise TunesmithError(
            "the weights file is not a plain state dict (loading it would have to run code): "
            f"{str(error).splitlines()[0]}",
            file=path,
            field=field,
            fix="save the weights as safetensors or as torch.save(model.state_dict(), file)",
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TunesmithError(
            "the weights file does not hold a state dict of tensors",
            file=path,
            field=field,
            fix="save it with torch.save(model.state_dict(), file)",
        )
    return state


def load_weights(model: torch.nn.Module, path: Path, *, field: str) -> None:
    """Load `path` into the headless `model`, ignoring only the old classifier's keys."""
    state = read_state_dict(path, field=field)
    expected = model.state_dict()
    unexpected = [key for key in state if key not in expected]
    classifier = getattr(model, "default_cfg", {}).get("classifier", "classifier")
    unexpected = [key for key in unexpected if not key.startswith(f"{classifier}.")]
    missing = [key for key in expected if key not in state]
    wrong_shape = [
        key for key in expected if key in state and state[key].shape != expected[key].shape
    ]
    if missing or unexpected or wrong_shape:
        details = "; ".join(
            f"{label} ({len(keys)}): {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}"
            for label, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("wrong shapes", wrong_shape),
            )
            if keys
        )
        raise TunesmithError(
            f"the weights do not match the architecture: {details}",
            file=path,
            field=field,
            fix="use weights saved from this exact timm architecture (or convert them first)",
        )
    model.load_state_dict({key: state[key] for key in expected})


def load_pretrained(
    name: str, weights: Path | None, *, field: str, image_size: int | None
) -> TimmBackbone:
    model = create(name, field=field)
    if weights is not None:
        load_weights(model, weights, field=field)
    backbone = TimmBackbone(model, name, image_size=0)
    backbone.image_size = image_size or backbone.pretrained_stats()["pretrained_size"]
    return backbone


def rebuild(info: dict[str, Any]) -> TimmBackbone:
    model = create(str(info["name"]), field="backbone")
    return TimmBackbone(model, str(info["name"]), image_size=int(info["image_size"]))
