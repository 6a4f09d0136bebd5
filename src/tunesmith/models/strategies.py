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

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from tunesmith.errors import TunesmithError
from tunesmith.io import shareable
from tunesmith.models.backbone import Backbone, adaptable_layers, unadaptable, unwrapped
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


def check_fits_backbone(
    strategy: Strategy, backbone: Backbone, *, targets: list[str] | None = None
) -> None:
    """A strategy that cannot apply to this backbone is a config error before training starts.
    `targets` are the layers an adapter strategy wraps (`model.peft.targets`; None: auto)."""
    blocks = len(backbone.blocks())
    if strategy.name == "freeze" and strategy.frozen_blocks > blocks:
        raise TunesmithError(
            f"freeze:{strategy.frozen_blocks} freezes more blocks than the backbone has ({blocks})",
            field="model.strategy",
            fix=f"use freeze:K with K from 0 to {blocks} (linear-probe freezes everything)",
        )
    if not strategy.adapter:
        return
    if targets is not None:
        check_adapter_targets(backbone, targets, method=strategy.name)
    elif not backbone.adapter_targets():
        raise TunesmithError(
            f"{strategy} finds no linear or channel-mixing convolution layers to adapt in "
            f"{type(backbone.network).__name__}",
            field="model.strategy",
            fix="use full, freeze:K or lp-ft for this backbone",
        )


def check_adapter_targets(backbone: Backbone, targets: list[str], *, method: str) -> None:
    """Each name in `targets` must match (as PEFT matches: the whole module name or its end after
    a dot) at least one layer of the backbone, and only layers an adapter can wrap."""
    network = unwrapped(backbone.network)
    why_not = unadaptable(network)
    missing: list[str] = []
    refused: list[str] = []
    for target in targets:
        matched = [name for name in why_not if name == target or name.endswith(f".{target}")]
        reasons = [(name, why_not[name]) for name in matched if why_not[name] is not None]
        if not matched:
            missing.append(target)
        elif reasons:
            name, why = reasons[0]
            refused.append(f"{target} ({name}: {why})")
    if targets and not missing and not refused:
        return
    problems = [] if targets else ["an empty list adapts no layer"]
    if missing:
        problems.append(f"names layers the backbone lacks: {', '.join(missing[:4])}")
    if refused:
        problems.append(f"names layers {method} cannot wrap: {'; '.join(refused[:4])}")
    raise TunesmithError(
        "; it also ".join(problems),
        field="model.peft.targets",
        fix=f"list layers {method} can wrap, the linear and channel-mixing convolution layers of "
        f"{type(network).__name__} (e.g. {', '.join(_layer_names(network)) or 'none'}), or set "
        "model.peft.targets to auto (those of every block but the first)",
    )


def _layer_names(network: nn.Module, count: int = 6) -> list[str]:
    """The first `count` distinct short names of the network's adaptable layers (`query`,
    `downsample.0`), as model.peft.targets may give them."""
    names: list[str] = []
    for name in adaptable_layers(network):
        parts = name.split(".")
        short = ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]
        if short not in names:
            names.append(short)
    return names[:count]


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
    check_fits_backbone(Strategy(settings.method), backbone, targets=settings.targets)
    targets = backbone.adapter_targets() if settings.targets is None else settings.targets
    backbone.network = get_peft_model(backbone.network, _peft_config(settings, targets))
    # The backbone's own weights stay as pretrained, and so do its batch norms' statistics:
    # the adapter saved alone, loaded onto the base model, then gives the model trained.
    model.frozen = batch_norms([backbone.network])
    return targets


def batch_norms(modules: Iterable[nn.Module]) -> list[nn.Module]:
    """The normalizations with running statistics in `modules` (and their submodules): what
    eval mode keeps as they are while the rest trains."""
    return [inner for module in modules for inner in module.modules()
            if isinstance(inner, nn.modules.batchnorm._NormBase)]


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
        shareable(staging)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def merge_adapter(model: TaskModel) -> None:
    """Fold the adapters into the weights they adapt: a plain network, the same outputs."""
    if has_adapter(model):
        network: nn.Module = model.backbone.network.merge_and_unload()  # type: ignore[operator]
        model.backbone.network = network
