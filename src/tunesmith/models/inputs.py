"""Turning examples into the batches a backbone reads, preprocessed as the backbone defines.

A backbone's `preprocessing()["kind"]` says what it reads: `tokenizer` (texts, tokenized once,
padded per batch and grouped by length), `image` (files, decoded and transformed on access) or
`features` (encoded table rows, a float matrix).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tunesmith.config import AugmentConfig
from tunesmith.data.augment import batch_mixer, collate_with, image_transform
from tunesmith.data.features import FeatureRows, feature_collate
from tunesmith.data.images import ImageFiles
from tunesmith.data.order import ShuffledBatches, loader_generator
from tunesmith.data.text import LengthGroupedSampler, TokenizedTexts, pad_collate, sorted_batches
from tunesmith.models.backbone import Backbone
from tunesmith.models.hf import HFTextBackbone

# Inputs: texts or image paths (a list of str; images in memory from Python's predict), or
# encoded table rows (a float matrix).
Inputs = Sequence[str] | Sequence[str | Image.Image] | np.ndarray


@dataclass(frozen=True)
class EvalBatches:
    """Batches in an order chosen for speed; `order[k]` is the row the k-th output belongs to."""

    loader: DataLoader[Any]
    order: list[int]


NO_AUGMENTATION = AugmentConfig(preset="none")


def _dataset(
    backbone: Backbone,
    inputs: Inputs,
    targets: Sequence[Any],
    *,
    train: bool,
    augment: AugmentConfig = NO_AUGMENTATION,
) -> Any:
    if isinstance(backbone, HFTextBackbone):
        return TokenizedTexts(backbone.tokenize([str(text) for text in inputs]), targets)
    spec = backbone.preprocessing()
    if spec["kind"] == "features":
        return FeatureRows(np.asarray(inputs, dtype=np.float32), targets)
    preset = "none" if augment.preset == "auto" else augment.preset
    transform = image_transform(
        spec["size"], spec["mean"], spec["std"], train=train, preset=preset, flip=augment.flip
    )
    # Paths, or (from Python's predict) images in memory as they are.
    return ImageFiles([path if isinstance(path, Image.Image) else str(path) for path in inputs],
                      targets, transform, backbone.image_mode)


def _collate(backbone: Backbone, dataset: Any) -> Any:
    if isinstance(dataset, TokenizedTexts):
        assert isinstance(backbone, HFTextBackbone)
        return pad_collate(backbone.pad_id)
    return feature_collate if isinstance(dataset, FeatureRows) else dataset.collate


def train_batches(
    backbone: Backbone,
    inputs: Inputs,
    targets: Sequence[Any],
    *,
    batch_size: int,
    seed: int,
    augment: AugmentConfig = NO_AUGMENTATION,
    mix_classes: int = 0,
    workers: int = 0,
) -> DataLoader[Any]:
    """Shuffled training batches in an order resumable mid-epoch (`tunesmith.data.order`); texts
    are grouped by length so padding stays small, images are augmented as `augment` says
    (MixUp/CutMix on whole batches into soft labels, when `mix_classes` says how many classes
    there are to mix). `workers` processes decode and augment images ahead of the training
    step; each example's random draws come from its `Draw`, so they change nothing in what is
    trained."""
    dataset = _dataset(backbone, inputs, targets, train=True, augment=augment)
    collate = _collate(backbone, dataset)
    if isinstance(dataset, TokenizedTexts):
        sampler = LengthGroupedSampler(dataset.lengths, batch_size, seed=seed)
        return DataLoader(
            dataset, batch_sampler=sampler, collate_fn=collate, generator=loader_generator(seed)
        )
    mixer = (
        batch_mixer(mix_classes, mixup=augment.mixup, cutmix=augment.cutmix)
        if mix_classes and isinstance(dataset, ImageFiles)
        else None
    )
    drop_last = len(dataset) > batch_size
    order = ShuffledBatches(len(dataset), batch_size, seed=seed, drop_last=drop_last)
    return DataLoader(
        dataset, batch_sampler=order, collate_fn=collate_with(collate, mixer),
        generator=loader_generator(seed), **_worker_options(dataset, workers, persistent=True),
    )


def eval_batches(
    backbone: Backbone,
    inputs: Inputs,
    targets: Sequence[Any] | None = None,
    *,
    batch_size: int,
    workers: int = 0,
) -> EvalBatches:
    """Batches for evaluation or prediction, without augmentation; texts sorted by length."""
    labels = list(targets) if targets is not None else [0] * len(inputs)
    dataset = _dataset(backbone, inputs, labels, train=False)
    collate = _collate(backbone, dataset)
    if isinstance(dataset, TokenizedTexts):
        batches = sorted_batches(dataset.lengths, batch_size)
        loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate)
        return EvalBatches(loader, [row for batch in batches for row in batch])
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=collate,
        **_worker_options(dataset, workers, persistent=False),
    )
    return EvalBatches(loader, list(range(len(dataset))))


def _worker_options(dataset: Any, workers: int, *, persistent: bool) -> dict[str, Any]:
    """DataLoader worker settings: only images are worth loading in other processes (token ids
    and feature rows are already in memory, and a worker would only copy them). Training workers
    persist across epochs; evaluation ones live for one pass."""
    if workers == 0 or not isinstance(dataset, ImageFiles):
        return {}
    return {"num_workers": workers, "persistent_workers": persistent, "prefetch_factor": 4,
            "pin_memory": torch.cuda.is_available()}
