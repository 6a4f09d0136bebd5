"""Which parameters a fine-tuning strategy trains, and adapters through PEFT.

| strategy | what trains |
|---|---|
| full | every weight |
| linear-probe | the head alone, on backbone features computed once (the backbone is frozen) |
| lp-ft | a linear probe first, then every weight from the probed head (Kumar et al. 2022) |
| gradual-unfreeze | the head, then one more block from the top at each stage (ULMFiT) |
| freeze:K | all but the bottom K blocks of the backbone |
| lora, dora, loha | low-rank adapters on the backbone's layers, and the head (PEFT) |

This module only decides what is trainable; how the stages run is the train stage's business.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from tunesmith.errors import TunesmithError
from tunesmith.models.backbone import Backbone
from tunesmith.models.task_model import TaskModel

PEFT_METHODS = ("lora", "dora", "loha")


@dataclass(frozen=True)
class Strategy:
    name: str
    frozen_blocks: int = 0  # freeze:K

    @classmethod
    def parse(cls, value: str) -> Strategy:
        name, _, count = value.partition(":")
        if name == "freeze":
            return cls("freeze", int(count))
        return cls(value)

    @property
    def probes(self) -> bool:
        """Trains a head on cached features first (the whole of linear-probe)."""
        return self.name in ("linear-probe", "lp-ft")

    @property
    def fine_tunes(self) -> bool:
        """Trains backbone weights or adapters (everything but the linear probe)."""
        return self.name != "linear-probe"

    @property
    def adapter(self) -> bool:
        return self.name in PEFT_METHODS

    def __str__(self) -> str:
        return f"freeze:{self.frozen_blocks}" if self.name == "freeze" else self.name


def check_fits_backbone(strategy: Strategy, backbone: Backbone) -> None:
    """A strategy that cannot apply to this backbone is a config error before training starts."""
    blocks = len(backbone.blocks())
    if strategy.name == "freeze" and strategy.frozen_blocks > blocks:
        raise TunesmithError(
            f"freeze:{strategy.frozen_blocks} freezes more blocks than the backbone has ({blocks})",
            field="model.strategy",
            fix=f"use freeze:K with K from 0 to {blocks} (linear-probe freezes everything)",
        )
    if strategy.adapter and not backbone.adapter_targets():
        raise TunesmithError(
            f"{strategy} finds no linear or channel-mixing convolution layers to adapt in "
            f"{type(backbone.network).__name__}",
            field="model.strategy",
            fix="use full, freeze:K or lp-ft for this backbone",
        )


def set_trainable(model: TaskModel, blocks: list[Any], trainable: bool) -> None:
    for block in blocks:
        for _, parameter in block.parameters:
            parameter.requires_grad_(trainable)


def freeze_bottom(model: TaskModel, count: int) -> None:
    """The bottom `count` backbone blocks frozen (and in eval mode), everything above trained
    but the model's `fixed` parameters."""
    blocks = model.backbone.blocks()
    check_fits_backbone(Strategy("freeze", count), model.backbone)
    set_trainable(model, blocks[:count], False)
    set_trainable(model, blocks[count:], True)
    for parameter in model.fixed:
        parameter.requires_grad_(False)
    model.frozen = [module for block in blocks[:count] for module in block.modules]


def train_top(model: TaskModel, count: int) -> None:
    """Only the top `count` backbone blocks (and the head) trained: a gradual-unfreezing stage."""
    blocks = model.backbone.blocks()
    freeze_bottom(model, max(0, len(blocks) - count))


def unfreeze_all(model: TaskModel) -> None:
    freeze_bottom(model, 0)


def freeze_backbone(model: TaskModel) -> None:
    freeze_bottom(model, len(model.backbone.blocks()))


@dataclass(frozen=True)
class AdapterSettings:
    method: str  # lora | dora | loha
    r: int
    alpha: int
    dropout: float
    targets: list[str] | None = None  # None: the backbone's own adapter_targets()


def _peft_config(settings: AdapterSettings, targets: list[str]) -> Any:
    from peft import LoHaConfig, LoraConfig

    if settings.method == "loha":
        return LoHaConfig(
            r=settings.r,
            alpha=settings.alpha,
            module_dropout=settings.dropout,
            target_modules=targets,
        )
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        use_dora=settings.method == "dora",
    )


def add_adapter(model: TaskModel, settings: AdapterSettings) -> list[str]:
    """Wrap the backbone's network with adapters; only they (and the head) stay trainable.
    Returns the names of the wrapped layers."""
    from peft import get_peft_model

    backbone = model.backbone
    targets = settings.targets or backbone.adapter_targets()
    known = {name for name, _ in backbone.network.named_modules()}
    unknown = [name for name in targets if name not in known and not _suffix_of(name, known)]
    if not targets or unknown:
        raise TunesmithError(
            f"no layers to adapt in {type(backbone.network).__name__}"
            if not targets
            else f"model.peft.targets names layers the backbone lacks: {unknown[:4]}",
            field="model.peft.targets",
            fix="leave model.peft.targets at auto (every linear and channel-mixing convolution "
            "layer), or list module names of the backbone",
        )
    backbone.network = get_peft_model(backbone.network, _peft_config(settings, targets))
    model.frozen = []
    return targets


def _suffix_of(name: str, known: set[str]) -> bool:
    return any(candidate.endswith(f".{name}") for candidate in known)


def has_adapter(model: TaskModel) -> bool:
    from peft import PeftModel

    return isinstance(model.backbone.network, PeftModel)


def save_adapter(model: TaskModel, folder: Path) -> None:
    """The adapter alone (adapter_config.json, adapter_model.safetensors), as PEFT loads it onto
    the base model again; written to a temporary folder and renamed into place."""
    import shutil
    import tempfile

    if not has_adapter(model):
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        model.backbone.network.save_pretrained(str(staging))  # type: ignore[operator]
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def merge_adapter(model: TaskModel) -> None:
    """Fold the adapters into the weights they adapt: a plain network, the same outputs."""
    if has_adapter(model):
        network: nn.Module = model.backbone.network.merge_and_unload()  # type: ignore[operator]
        model.backbone.network = network
