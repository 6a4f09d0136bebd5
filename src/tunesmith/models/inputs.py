"""Turning examples into the batches a backbone reads, preprocessed as the backbone defines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from tunesmith.config import AugmentConfig
from tunesmith.data.augment import batch_mixer, collate_with, image_transform
from tunesmith.data.images import ImageFiles, image_collate
from tunesmith.data.sources import Examples
from tunesmith.data.text import LengthGroupedSampler, TokenizedTexts, pad_collate, sorted_batches
from tunesmith.models.backbone import Backbone
from tunesmith.models.hf import HFTextBackbone


@dataclass(frozen=True)
class EvalBatches:
    """Batches in an order chosen for speed; `order[k]` is the row the k-th output belongs to."""

    loader: DataLoader[Any]
    order: list[int]


NO_AUGMENTATION = AugmentConfig(preset="none")


def _dataset(
    backbone: Backbone,
    inputs: Sequence[str],
    targets: Sequence[int],
    *,
    train: bool,
    augment: AugmentConfig = NO_AUGMENTATION,
) -> Any:
    if isinstance(backbone, HFTextBackbone):
        return TokenizedTexts(backbone.tokenize(list(inputs)), targets)
    spec = backbone.preprocessing()
    preset = "none" if augment.preset == "auto" else augment.preset
    transform = image_transform(
        spec["size"], spec["mean"], spec["std"], train=train, preset=preset, flip=augment.flip
    )
    return ImageFiles(inputs, targets, transform)


def _collate(backbone: Backbone) -> Any:
    return pad_collate(backbone.pad_id) if isinstance(backbone, HFTextBackbone) else image_collate


def train_batches(
    backbone: Backbone,
    part: Examples,
    targets: Sequence[int],
    *,
    batch_size: int,
    seed: int,
    augment: AugmentConfig = NO_AUGMENTATION,
    classes: int = 0,
) -> DataLoader[Any]:
    """Shuffled training batches; texts are grouped by length so padding stays small, images are
    augmented as `augment` says (MixUp/CutMix on whole batches, into soft labels)."""
    dataset = _dataset(backbone, part.inputs, targets, train=True, augment=augment)
    if isinstance(dataset, TokenizedTexts):
        sampler = LengthGroupedSampler(dataset.lengths, batch_size, seed=seed)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=_collate(backbone))
    mixer = batch_mixer(classes, mixup=augment.mixup, cutmix=augment.cutmix)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        collate_fn=collate_with(_collate(backbone), mixer),
        drop_last=len(dataset) > batch_size,
    )


def eval_batches(
    backbone: Backbone,
    inputs: Sequence[str],
    targets: Sequence[int] | None = None,
    *,
    batch_size: int,
) -> EvalBatches:
    """Batches for evaluation or prediction, without augmentation; texts sorted by length."""
    labels = list(targets) if targets is not None else [0] * len(inputs)
    dataset = _dataset(backbone, inputs, labels, train=False)
    if isinstance(dataset, TokenizedTexts):
        batches = sorted_batches(dataset.lengths, batch_size)
        loader = DataLoader(dataset, batch_sampler=batches, collate_fn=_collate(backbone))
        return EvalBatches(loader, [row for batch in batches for row in batch])
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=_collate(backbone)
    )
    return EvalBatches(loader, list(range(len(dataset))))
