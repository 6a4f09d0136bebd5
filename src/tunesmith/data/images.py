"""Image examples: decoded, converted to RGB and transformed on access."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import v2

from tunesmith.errors import TunesmithError

Transform = Callable[[Image.Image], torch.Tensor]


def open_rgb(path: str | Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def check_images(paths: Sequence[str], *, field: str) -> None:
    """Fail on the first image that cannot be decoded, naming it."""
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
        except (OSError, UnidentifiedImageError, SyntaxError) as error:
            raise TunesmithError(
                f"cannot read the image: {error}",
                file=path,
                field=field,
                fix="replace or remove this file",
            ) from None


def image_transform(
    size: int, mean: Sequence[float], std: Sequence[float], *, train: bool
) -> Transform:
    """Resize to `size`, scale to [0, 1] and normalize with the backbone's pretrained statistics.

    Training adds a mild random resized crop; flips are left out because they change the meaning of
    many images (digits, text, medical laterality).
    """
    resize: list[v2.Transform] = (
        [v2.RandomResizedCrop(size, scale=(0.85, 1.0), ratio=(0.9, 1.1), antialias=True)]
        if train
        else [v2.Resize((size, size), antialias=True)]
    )
    transform: Transform = v2.Compose(
        [
            v2.PILToTensor(),
            *resize,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )
    return transform


class ImageFiles(Dataset[tuple[torch.Tensor, int]]):
    def __init__(self, paths: Sequence[str], targets: Sequence[int], transform: Transform) -> None:
        self.paths = list(paths)
        self.targets = list(targets)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(open_rgb(self.paths[index])), self.targets[index]


def image_collate(items: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([pixels for pixels, _ in items]),
        "labels": torch.tensor([target for _, target in items], dtype=torch.long),
    }


def median_side(paths: Sequence[str], *, sample: int = 256) -> int:
    """The median of max(width, height) over an evenly spaced sample of the images."""
    step = max(1, len(paths) // sample)
    sides = []
    for path in paths[::step]:
        with Image.open(path) as image:
            sides.append(max(image.size))
    return int(sorted(sides)[len(sides) // 2])
