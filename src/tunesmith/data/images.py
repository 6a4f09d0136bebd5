"""Image examples: decoded, converted to one mode and transformed on access, finished per batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from tunesmith.data.augment import ImagePipeline
from tunesmith.data.features import stack_targets
from tunesmith.data.image_scan import DECODE_ERRORS, open_image, scan_images, to_mode, upright
from tunesmith.data.order import drawing_from
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


# An example: its pixels, its target and the seed its random draws came from (None: the global
# generator's), which a batch-level mixer draws its own seed from.
Example = tuple[torch.Tensor, Any, int | None]


class ImageFiles(Dataset[Example]):
    """Images decoded and put through the pipeline's per-image part on access, and through its
    per-batch part by `collate`; a `Draw` index (`tunesmith.data.order`) makes its random
    augmentation a function of the draw's seed."""

    def __init__(
        self,
        paths: Sequence[str | Image.Image],  # files, or images in memory (Python's predict)
        targets: Sequence[Any],
        transform: ImagePipeline,
        mode: str = "RGB",
    ) -> None:
        self.paths = list(paths)
        self.targets = list(targets)
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Example:
        item = self.paths[index]
        if isinstance(item, Image.Image):  # given to predict() in memory: decoded already
            image = to_mode(upright(item), self.mode)
        else:
            try:  # checked when the data was read; a file replaced since, or given to predict()
                image = open_image(item, self.mode)
            except DECODE_ERRORS as error:
                raise DataError(f"cannot read the image: {error}", file=item,
                                fix="remove it from the inputs, or replace it with a readable "
                                "image") from None
        seed: int | None = getattr(index, "seed", None)
        with drawing_from(seed):
            pixels = self.transform.per_image(image)
        return pixels, self.targets[index], seed

    def collate(self, items: list[Example]) -> dict[str, torch.Tensor]:
        return {
            "pixel_values": self.transform.per_batch(torch.stack([item[0] for item in items])),
            "labels": stack_targets([item[1] for item in items]),
        }
