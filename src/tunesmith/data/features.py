"""Encoded tabular rows as batches, and the label tensor every collate function builds.

Targets arrive as class indices (classification), 0/1 vectors (multilabel) or numbers
(regression); `stack_targets` gives the tensor each loss reads: int64 indices, float32 0/1
vectors, or float64 numbers (the regression head's output: float32 would round a target near 1e9
to a multiple of 64).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


def stack_targets(targets: Sequence[Any]) -> torch.Tensor:
    values = np.asarray(targets)
    if np.issubdtype(values.dtype, np.integer):
        return torch.as_tensor(values, dtype=torch.long)
    return torch.as_tensor(values, dtype=torch.float64 if values.ndim == 1 else torch.float32)


class FeatureRows(Dataset[tuple[np.ndarray, Any]]):
    """Rows of a (n, features) float matrix with their targets."""

    def __init__(self, features: np.ndarray, targets: Sequence[Any]) -> None:
        self.features = np.ascontiguousarray(features, dtype=np.float32)
        self.targets = list(targets)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> tuple[np.ndarray, Any]:
        return self.features[index], self.targets[index]


def feature_collate(items: list[tuple[np.ndarray, Any]]) -> dict[str, torch.Tensor]:
    return {
        "features": torch.from_numpy(np.stack([row for row, _ in items])),
        "labels": stack_targets([target for _, target in items]),
    }
