"""Turning examples into the batches a backbone reads, preprocessed as the backbone defines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import DataLoader

from tunesmith.data.images import ImageFiles, image_collate, image_transform
from tunesmith.data.sources import Examples
from tunesmith.data.text import LengthGroupedSampler, TokenizedTexts, pad_collate, sorted_batches
from tunesmith.models.backbone import Backbone
from tunesmith.models.hf import HFTextBackbone


@dataclass(frozen=True)
class EvalBatches:
    """Batches in an order chosen for speed; `order[k]` is the row the k-th output belongs to."""

    loader: DataLoader[Any]
    order: list[int]


def _dataset(
    backbone: Backbone, inputs: Sequence[str], targets: Sequence[int], *, train: bool
) -> Any:
    if isinstance(backbone, HFTextBackbone):
        return TokenizedTexts(backbone.tokenize(list(inputs)), targets)
    spec = backbone.preprocessing()
    transform = image_transform(spec["size"], spec["mean"], spec["std"], train=train)
    return ImageFiles(inputs, targets, transform)


def _collate(backbone: Backbone) -> Any:
    return pad_collate(backbone.pad_id) if isinstance(backbone, HFTextBackbone) else image_collate


def train_batches(
    backbone: Backbone, part: Examples, targets: Sequence[int], *, batch_size: int, seed: int
) -> DataLoader[Any]:
    """Shuffled training batches; texts are grouped by length so padding stays small."""
    dataset = _dataset(backbone, part.inputs, targets, train=True)
    if isinstance(dataset, TokenizedTexts):
        sampler = LengthGroupedSampler(dataset.lengths, batch_size, seed=seed)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=_collate(backbone))
    generator = __import__("torch").Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        collate_fn=_collate(backbone),
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
