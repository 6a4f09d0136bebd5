"""Image augmentation for fine-tuning: per-image presets and batch-level MixUp / CutMix.

Per-image work runs on uint8 tensors (the fast path of `torchvision.transforms.v2`); whole
batches are then scaled to float and normalized with the backbone's statistics. The transforms
draw from torch's global generator; in training, `ImageFiles` seeds it for each example from the
example's `Draw` (`tunesmith.data.order`), and the mixing collate for each batch from its first
example's seed, so an epoch's augmentation depends on the seed and the epoch alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from tunesmith.data.order import drawing_from

Preset = Literal["none", "light", "medium", "strong"]
PRESETS: tuple[Preset, ...] = ("none", "light", "medium", "strong")

Transform = Callable[[Image.Image], torch.Tensor]
Batch = dict[str, torch.Tensor]
BatchMixer = Callable[[Batch], Batch]
Collate = Callable[[list[Any]], Batch]

# timm samples crops from 8% of the image upwards, which suits ImageNet-sized photos; on the small
# images typical of fine-tuning sets (often upscaled from 32-64 px) such crops tend to miss the
# object and upscale a few pixels into blur. A third of the area keeps the object in view.
CROP_SCALE = (0.35, 1.0)
ROTATION_DEGREES = 15.0
JITTER = 0.3
ERASING_P = 0.25


class ImagePipeline:
    """An image transform split where a batch can take over: `per_image` turns a PIL image into
    a tensor (uint8, unless a random step must follow normalization), `per_batch` turns a stack
    of those into the normalized float batch a model reads. Scaling and normalizing a batch in
    one call gives the same numbers as per image (the same element-wise operations) in a fraction
    of the time. Called on one image, it is the whole transform. A module-level class, so that
    DataLoader can pickle it into worker processes."""

    def __init__(self, per_image: Transform, per_batch: Callable[[torch.Tensor], torch.Tensor]):
        self.per_image = per_image
        self.per_batch = per_batch

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.per_batch(self.per_image(image).unsqueeze(0)).squeeze(0)


def image_transform(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    train: bool,
    preset: Preset = "light",
    flip: bool = True,
) -> ImagePipeline:
    """PIL image (RGB or L) -> float32 (len(mean), size, size) tensor normalized with mean/std.

    Evaluation is always a deterministic resize, whatever the preset, so validation and test
    metrics do not depend on the augmentation chosen for training. `flip` exists because mirroring
    changes the meaning of some images (digits, text, medical laterality).
    """
    _check_stats(mean, std)
    if preset not in PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; expected one of {PRESETS}")
    augment = train and preset != "none"
    normalize = v2.Compose(
        [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    )
    if not augment:
        return ImagePipeline(Resized(size, len(mean)), normalize)
    on_uint8 = v2.Compose(
        [
            v2.PILToTensor(),
            _match_channels(len(mean)),
            *_augmentations(size, preset, flip=flip, fill=_mean_fill(mean)),
        ]
    )
    if preset == "strong":  # erasing draws per image, after normalization
        return ImagePipeline(v2.Compose([on_uint8, normalize, *_erasing()]), _unchanged)
    return ImagePipeline(on_uint8, normalize)


class Resized:
    """Evaluation's per-image part: decoded pixels with the backbone's channels, resized to
    (size, size), as uint8. Functional calls, not a `v2.Compose`, whose per-call bookkeeping
    costs as much again on small images."""

    def __init__(self, size: int, channels: int) -> None:
        self.size = size
        self.channels = _match_channels(channels)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        pixels: torch.Tensor = self.channels(F.pil_to_tensor(image))
        resized: torch.Tensor = F.resize(pixels, [self.size, self.size], antialias=True)
        return resized


def _unchanged(batch: torch.Tensor) -> torch.Tensor:
    return batch


def _check_stats(mean: Sequence[float], std: Sequence[float]) -> None:
    if len(mean) != len(std) or len(mean) not in (1, 3):
        raise ValueError(
            f"mean and std must both have 1 or 3 channels, got {len(mean)} and {len(std)}"
        )


def _match_channels(channels: int) -> v2.Transform:
    """Give the image as many channels as the backbone's statistics (grayscale <-> RGB)."""
    return v2.RGB() if channels == 3 else v2.Grayscale(num_output_channels=1)


def _mean_fill(mean: Sequence[float]) -> list[int]:
    # Areas uncovered by rotations and shears are filled with the dataset mean, so after
    # normalization they are zero, like the patches RandomErasing blanks out, instead of a
    # black border the model could learn to look for.
    return [round(channel * 255) for channel in mean]


def _augmentations(size: int, preset: Preset, *, flip: bool, fill: list[int]) -> list[v2.Transform]:
    """The random uint8 steps of a training preset (every preset but "none" starts with "light")."""
    steps: list[v2.Transform] = [v2.RandomResizedCrop(size, scale=CROP_SCALE, antialias=True)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if preset == "medium":
        steps += [
            v2.RandomRotation(
                ROTATION_DEGREES, interpolation=InterpolationMode.BILINEAR, fill=fill
            ),
            v2.ColorJitter(brightness=JITTER, contrast=JITTER, saturation=JITTER),
        ]
    if preset == "strong":
        steps.append(v2.TrivialAugmentWide(interpolation=InterpolationMode.BILINEAR, fill=fill))
    return steps


def _erasing() -> list[v2.Transform]:
    # After normalization, so the erased patch (value 0) is the mean colour rather than black.
    return [v2.RandomErasing(p=ERASING_P, value=0)]


class PairMixer:
    """Mixes a collated batch's pixels and turns its labels into (B, num_classes) probabilities.

    Samples are paired with their neighbour in the batch, so the loader must shuffle.
    """

    def __init__(self, mix: v2.Transform) -> None:
        self.mix = mix

    def __call__(self, batch: Batch) -> Batch:
        pixels, labels = self.mix(batch["pixel_values"], batch["labels"])
        return {**batch, "pixel_values": pixels, "labels": labels}


def batch_mixer(num_classes: int, *, mixup: float, cutmix: float) -> BatchMixer | None:
    """MixUp and/or CutMix with the given Beta alphas (one picked at random per batch when both
    are positive); None when both are 0."""
    if mixup < 0 or cutmix < 0:
        raise ValueError(f"mixup and cutmix alphas must be >= 0, got {mixup} and {cutmix}")
    mixes: list[v2.Transform] = []
    if mixup > 0:
        mixes.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
    if cutmix > 0:
        mixes.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
    if not mixes:
        return None
    return PairMixer(mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes))


MIX_SALT = 0x5DEECE66D  # a batch's mixing seed: its first example's seed, salted


class MixingCollate:
    """`collate` followed by `mixer`: a module-level class, not a closure, so that DataLoader can
    pickle it into worker processes. The mix draws from the seed of the batch's first example
    (third in each item) when it has one."""

    def __init__(self, collate: Collate, mixer: BatchMixer) -> None:
        self.collate = collate
        self.mixer = mixer

    def __call__(self, items: list[Any]) -> Batch:
        seed = items[0][2] if len(items[0]) > 2 else None
        with drawing_from(None if seed is None else seed ^ MIX_SALT):
            return self.mixer(self.collate(items))


def collate_with(collate: Collate, mixer: BatchMixer | None) -> Collate:
    """The training collate: `collate` itself when there is nothing to mix."""
    return collate if mixer is None else MixingCollate(collate, mixer)
