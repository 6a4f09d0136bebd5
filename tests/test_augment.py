"""Augmentation presets and batch mixing, checked on tiny images made here."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from tunesmith.data.augment import (
    PRESETS,
    MixingCollate,
    Preset,
    _augmentations,
    _mean_fill,
    batch_mixer,
    collate_with,
    image_transform,
)
from tunesmith.data.images import ImageFiles
from tunesmith.data.order import Draw, drawing_from

SIZE = 24
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
NUM_CLASSES = 5


def textured_image(side: int = 40) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), "RGB")


def left_bright_image(side: int = 40) -> Image.Image:
    pixels = np.zeros((side, side, 3), dtype=np.uint8)
    pixels[:, : side // 2] = 255
    return Image.fromarray(pixels, "RGB")


def constant_batch(batch_size: int = 4) -> dict[str, torch.Tensor]:
    """Sample i is the constant image i + 1 with label i, so any mixing shows in the pixels."""
    values = torch.arange(1, batch_size + 1, dtype=torch.float32)
    return {
        "pixel_values": values.view(-1, 1, 1, 1).expand(-1, 3, 8, 8).clone(),
        "labels": torch.arange(batch_size),
    }


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("preset", PRESETS)
def test_output_shape_and_dtype(preset: Preset, train: bool) -> None:
    torch.manual_seed(0)
    pixels = image_transform(SIZE, MEAN, STD, train=train, preset=preset)(textured_image())
    assert pixels.shape == (3, SIZE, SIZE)
    assert pixels.dtype == torch.float32


def test_eval_is_deterministic_and_ignores_the_preset() -> None:
    image = textured_image()
    reference = image_transform(SIZE, MEAN, STD, train=False, preset="none")(image)
    for seed, preset in enumerate(PRESETS):
        torch.manual_seed(seed)
        evaluated = image_transform(SIZE, MEAN, STD, train=False, preset=preset)(image)
        assert torch.equal(evaluated, reference)
    torch.manual_seed(1)
    assert torch.equal(
        image_transform(SIZE, MEAN, STD, train=True, preset="none")(image), reference
    )


def right_minus_left(pixels: torch.Tensor) -> float:
    half = pixels.shape[-1] // 2
    return float(pixels[..., half:].mean() - pixels[..., :half].mean())


@pytest.mark.parametrize("flip", [False, True])
def test_flip_only_when_allowed(flip: bool) -> None:
    image = left_bright_image()
    light = image_transform(SIZE, MEAN, STD, train=True, preset="light", flip=flip)
    torch.manual_seed(0)
    differences = [right_minus_left(light(image)) for _ in range(50)]
    brighter_right = sum(difference > 0 for difference in differences)
    if flip:
        assert 5 <= brighter_right <= 45
    else:
        assert brighter_right == 0


@pytest.mark.parametrize("train", [False, True])
def test_normalization_of_a_constant_image(train: bool) -> None:
    rgb = (100, 150, 200)
    image = Image.new("RGB", (37, 29), rgb)
    torch.manual_seed(0)
    pixels = image_transform(SIZE, MEAN, STD, train=train, preset="light")(image)
    expected = torch.tensor([(v / 255 - m) / s for v, m, s in zip(rgb, MEAN, STD, strict=True)])
    assert torch.allclose(pixels, expected.view(3, 1, 1).expand_as(pixels), atol=1e-5)


@pytest.mark.parametrize("preset", ["medium", "strong"])
def test_heavier_presets_change_pixels_beyond_light(preset: Preset) -> None:
    """Same seed -> same crop and flip as "light", so any difference comes from the extra steps."""
    image = textured_image()
    light = image_transform(SIZE, MEAN, STD, train=True, preset="light")
    heavier = image_transform(SIZE, MEAN, STD, train=True, preset=preset)
    changed = 0
    for seed in range(10):
        torch.manual_seed(seed)
        light_pixels = light(image)
        torch.manual_seed(seed)
        changed += not torch.equal(heavier(image), light_pixels)
    assert changed >= 8


@pytest.mark.parametrize("preset", PRESETS)
def test_grayscale_input_with_rgb_statistics(preset: Preset) -> None:
    gray = Image.fromarray(np.asarray(textured_image())[..., 0], "L")
    torch.manual_seed(0)
    pixels = image_transform(SIZE, MEAN, STD, train=False, preset=preset)(gray)
    assert pixels.shape == (3, SIZE, SIZE)
    # Repeated channels, normalized with each channel's own statistics.
    unscaled = pixels * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    assert torch.allclose(unscaled[0], unscaled[1], atol=1e-5)
    torch.manual_seed(0)
    trained = image_transform(SIZE, MEAN, STD, train=True, preset=preset)(gray)
    assert trained.shape == (3, SIZE, SIZE)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_single_channel_statistics(mode: str) -> None:
    image = Image.new(mode, (30, 30), 128 if mode == "L" else (128, 128, 128))
    torch.manual_seed(0)
    pixels = image_transform(SIZE, [0.5], [0.25], train=True, preset="strong")(image)
    assert pixels.shape == (1, SIZE, SIZE)
    eval_pixels = image_transform(SIZE, [0.5], [0.25], train=False)(image)
    # torchvision's uint8 RGB -> L conversion truncates, so allow one grey level.
    one_level = 1 / 255 / 0.25 + 1e-5
    expected = torch.full_like(eval_pixels, (128 / 255 - 0.5) / 0.25)
    assert torch.allclose(eval_pixels, expected, atol=one_level if mode == "RGB" else 1e-5)


def test_rejects_mismatched_statistics_and_unknown_presets() -> None:
    with pytest.raises(ValueError, match="1 or 3 channels"):
        image_transform(SIZE, MEAN, [0.2], train=True)
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        image_transform(SIZE, MEAN, STD, train=True, preset="wild")  # type: ignore[arg-type]


def mixup_lam(batch: dict[str, torch.Tensor], mixed: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-row weight of the row's own image, read back from the constant pixels."""
    own = batch["pixel_values"][:, 0, 0, 0]
    neighbour = own.roll(1, 0)
    return (mixed["pixel_values"][:, 0, 0, 0] - neighbour) / (own - neighbour)


def test_mixup_labels_are_the_pixel_weights() -> None:
    mixer = batch_mixer(NUM_CLASSES, mixup=0.4, cutmix=0.0)
    assert mixer is not None
    batch = constant_batch()
    torch.manual_seed(0)
    mixed = mixer(batch)
    lam = mixup_lam(batch, mixed)
    assert torch.allclose(lam, lam[0].expand_as(lam), atol=1e-5)  # one lam per batch
    labels = mixed["labels"]
    assert labels.shape == (4, NUM_CLASSES) and labels.dtype == torch.float32
    assert torch.allclose(labels.sum(dim=1), torch.ones(4))
    rows = torch.arange(4)
    assert torch.allclose(labels[rows, batch["labels"]], lam, atol=1e-5)
    assert torch.allclose(labels[rows, batch["labels"].roll(1, 0)], 1 - lam, atol=1e-5)
    assert torch.equal(batch["labels"], torch.arange(4))  # the input batch is left alone


def test_cutmix_labels_are_the_pasted_area() -> None:
    mixer = batch_mixer(NUM_CLASSES, mixup=0.0, cutmix=1.0)
    assert mixer is not None
    batch = constant_batch()
    for seed in range(5):
        torch.manual_seed(seed)
        mixed = mixer(batch)
        own = batch["pixel_values"][:, :1, :, :]
        own_share = (mixed["pixel_values"][:, :1] == own).float().mean(dim=(1, 2, 3))
        labels = mixed["labels"]
        assert torch.allclose(labels.sum(dim=1), torch.ones(4))
        assert torch.allclose(labels[torch.arange(4), batch["labels"]], own_share, atol=1e-6)


def test_both_mixers_are_chosen_at_random() -> None:
    mixer = batch_mixer(NUM_CLASSES, mixup=1.0, cutmix=1.0)
    assert mixer is not None
    batch = constant_batch()
    kinds = set()
    torch.manual_seed(0)
    for _ in range(20):
        pixels = mixer(batch)["pixel_values"]
        # CutMix only copies existing values; MixUp blends them into new ones.
        kinds.add("cutmix" if torch.isin(pixels, batch["pixel_values"]).all() else "mixup")
    assert kinds == {"cutmix", "mixup"}


def test_no_mixer_when_both_alphas_are_zero() -> None:
    assert batch_mixer(NUM_CLASSES, mixup=0.0, cutmix=0.0) is None
    with pytest.raises(ValueError, match=">= 0"):
        batch_mixer(NUM_CLASSES, mixup=-0.1, cutmix=0.0)


def test_mixing_is_reproducible_under_a_seed() -> None:
    mixer = batch_mixer(NUM_CLASSES, mixup=0.8, cutmix=1.0)
    assert mixer is not None
    batch = {"pixel_values": torch.randn(6, 3, 8, 8), "labels": torch.tensor([0, 1, 2, 3, 4, 0])}
    runs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        runs.append([mixer(batch) for _ in range(3)])
    for first, second in zip(runs[0], runs[1], strict=True):
        assert torch.equal(first["pixel_values"], second["pixel_values"])
        assert torch.equal(first["labels"], second["labels"])
    assert any(
        not torch.equal(first["labels"], other["labels"])
        for first, other in zip(runs[0], runs[2], strict=True)
    )


def test_soft_labels_go_through_cross_entropy_with_label_smoothing() -> None:
    mixer = batch_mixer(NUM_CLASSES, mixup=0.4, cutmix=0.0)
    assert mixer is not None
    batch = constant_batch()
    torch.manual_seed(3)
    mixed = mixer(batch)
    lam = float(mixup_lam(batch, mixed)[0])
    logits = torch.randn(4, NUM_CLASSES)
    loss = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    labels_a, labels_b = batch["labels"], batch["labels"].roll(1, 0)
    manual = lam * loss(logits, labels_a) + (1 - lam) * loss(logits, labels_b)
    assert 0.05 < lam < 0.95  # a real mix, not one of the two sides
    assert torch.allclose(loss(logits, mixed["labels"]), manual, atol=1e-5)


def stack_collate(items: list[tuple[torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([pixels for pixels, _ in items]),
        "labels": torch.tensor([target for _, target in items]),
    }


def test_collate_with_pickles_and_runs_in_a_data_loader() -> None:
    mixer = batch_mixer(NUM_CLASSES, mixup=0.4, cutmix=1.0)
    collate = collate_with(stack_collate, mixer)
    assert isinstance(collate, MixingCollate)
    restored = pickle.loads(pickle.dumps(collate))
    items = [(torch.full((3, 8, 8), float(i)), i % NUM_CLASSES) for i in range(6)]
    torch.manual_seed(0)
    expected = collate(items)
    torch.manual_seed(0)
    assert torch.equal(restored(items)["labels"], expected["labels"])

    loader = DataLoader(items, batch_size=3, collate_fn=collate, num_workers=0)
    batches = list(loader)
    assert [batch["labels"].shape for batch in batches] == [(3, NUM_CLASSES)] * 2
    for batch in batches:
        assert torch.allclose(batch["labels"].sum(dim=1), torch.ones(3))
    assert collate_with(stack_collate, None) is stack_collate


def test_transform_pickles_for_worker_processes() -> None:
    original = image_transform(SIZE, MEAN, STD, train=True, preset="strong")
    restored = pickle.loads(pickle.dumps(original))
    image = textured_image()
    torch.manual_seed(0)
    expected = original(image)
    torch.manual_seed(0)
    assert torch.equal(restored(image), expected)


def whole_transform(mean: tuple[float, ...], std: tuple[float, ...], preset: Preset,
                    *, train: bool) -> v2.Compose:
    """The per-image transform as it was before the float steps moved to the batch: every step,
    image by image."""
    channels = v2.RGB() if len(mean) == 3 else v2.Grayscale(num_output_channels=1)
    steps = (_augmentations(SIZE, preset, flip=True, fill=_mean_fill(mean)) if train
             else [v2.Resize((SIZE, SIZE), antialias=True)])
    return v2.Compose([v2.PILToTensor(), channels, *steps, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(list(mean), list(std))])


@pytest.mark.parametrize(("train", "preset", "stats"), [
    (False, "light", (MEAN, STD)), (False, "none", ((0.5,), (0.25,))),
    (True, "light", (MEAN, STD)), (True, "medium", ((0.5,), (0.25,))),
])
def test_a_batch_finished_at_once_matches_each_image_transformed_whole(
    tmp_path: Path, train: bool, preset: Preset, stats: tuple[tuple[float, ...], ...]
) -> None:
    """The float conversion and normalization run once per batch, for speed; the pixels are
    exactly those of transforming each image whole, augmentation draws included."""
    rng = np.random.default_rng(1)
    paths = []
    for index, side in enumerate((40, 17, 64, 33, 24)):
        path = tmp_path / f"{index}.png"
        Image.fromarray(rng.integers(0, 256, (side, side + index, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    mean, std = stats
    files = ImageFiles(paths, list(range(len(paths))),
                       image_transform(SIZE, mean, std, train=train, preset=preset))
    draws = [Draw(row, seed=100 + row) for row in range(len(paths))]
    batch = files.collate([files[draw] for draw in draws])["pixel_values"]

    reference = whole_transform(mean, std, preset, train=train)
    expected = []
    for draw in draws:
        with drawing_from(draw.seed):
            expected.append(reference(Image.open(paths[draw]).convert("RGB")))
    assert batch.shape == (len(paths), len(mean), SIZE, SIZE)
    assert batch.dtype == torch.float32
    assert torch.equal(batch, torch.stack(expected))
    if train:  # the draws are the examples' own: another seed gives other pixels
        with drawing_from(7):
            assert not torch.equal(reference(Image.open(paths[0]).convert("RGB")), expected[0])


def test_an_image_unreadable_in_a_loader_worker_is_the_same_error_as_without_workers(
    tmp_path: Path
) -> None:
    """A file replaced after the data was read fails in the worker that decodes it. torch
    re-raises a worker's error as `type(message=text)`, which TunesmithError did not take: a
    TypeError traceback (exit 1) where no workers gave the DataError naming the file (exit 2)."""
    from tunesmith.errors import DataError

    paths = []
    for index in range(3):
        path = tmp_path / f"{index}.png"
        Image.fromarray(np.full((8, 8, 3), index, dtype=np.uint8)).save(path)
        paths.append(str(path))
    Path(paths[1]).write_text("not a picture any more")
    files = ImageFiles(paths, [0, 1, 0], image_transform(SIZE, MEAN, STD, train=False,
                                                         preset="none"))
    said = {}
    for workers in (0, 1):
        loader = DataLoader(files, batch_size=1, collate_fn=files.collate, num_workers=workers)
        with pytest.raises(DataError) as caught:
            list(loader)
        said[workers] = caught.value
    assert said[0].message.startswith(f"{paths[1]}: cannot read the image: ")
    assert said[0].message.endswith(
        "\n  fix: remove it from the inputs, or replace it with a readable image")
    assert said[1].message == said[0].message and said[1].problem == said[0].message
