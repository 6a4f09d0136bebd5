"""Image examples: decoded, converted to one mode and transformed on access."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from tunesmith.data.augment import Transform
from tunesmith.data.features import stack_targets
from tunesmith.data.image_scan import open_image, scan_images
from tunesmith.errors import DataError


def check_images(paths: Sequence[str], *, field: str) -> None:
    """Fail on the first image that cannot be decoded, naming it."""
    scan = scan_images(paths)
    if not scan.readable.all():
        first = int((~scan.readable).argmax())
        raise DataError(
            f"cannot read the image: {scan.errors[first]}",
            file=scan.paths[first],
            field=field,
            fix="replace or remove this file",
        )


class ImageFiles(Dataset[tuple[torch.Tensor, Any]]):
    def __init__(
        self, paths: Sequence[str], targets: Sequence[Any], transform: Transform, mode: str = "RGB"
    ) -> None:
        self.paths = list(paths)
        self.targets = list(targets)
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        return self.transform(open_image(self.paths[index], self.mode)), self.targets[index]


def image_collate(items: list[tuple[torch.Tensor, Any]]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([pixels for pixels, _ in items]),
        "labels": stack_targets([target for _, target in items]),
    }
