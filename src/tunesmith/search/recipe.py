"""The dataset-aware recipe: every `auto` in a config resolved from the data and the backbone.

The search (a later stage) starts from this recipe as its first trial; for now it is the whole plan.
The values follow published practice: for text encoders, AdamW at 1e-4 to 5e-5 with 10% warm-up
and more epochs for small sets (BERT, Sentence-Transformers fine-tuning); for images, in the spirit
of BiT-HyperRule, a zero-initialized head, training length by dataset size and a resolution chosen
from the images' own size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunesmith.config import Config, HeadConfig, TrainConfig
from tunesmith.data.sources import Modality
from tunesmith.train import TrainSettings
from tunesmith.train.precision import default_device, resolve_precision


@dataclass(frozen=True)
class DataProfile:
    """What the recipe looks at: how much data, how many classes, how big the inputs are."""

    modality: Modality
    train_rows: int
    classes: int
    median_image_side: int | None = None
    source_format: str = "csv"  # what the data turned out to be, for the resolved config
    split_method: str = "stratified"


def image_size(profile: DataProfile, pretrained_size: int) -> int:
    """Small images are upsampled (about 2x, at least 64 px) so the backbone's 32x downsampling
    still leaves a spatial map to pool; larger ones use the backbone's pretrained resolution.
    Cost grows with the square of the side, so no more than that."""
    side = profile.median_image_side or pretrained_size
    return min(pretrained_size, max(64, 32 * round(2 * side / 32)))


def _epochs(profile: DataProfile) -> int:
    rows = profile.train_rows
    if profile.modality == "text":
        return 6 if rows <= 2_000 else 4 if rows <= 20_000 else 3 if rows <= 100_000 else 2
    return 12 if rows <= 2_000 else 8 if rows <= 20_000 else 5 if rows <= 100_000 else 3


def _train_defaults(profile: DataProfile) -> dict[str, Any]:
    if profile.modality == "text":
        return {
            "optimizer": "adamw",
            "lr": 1e-4,
            "head_lr": 1e-3,
            "weight_decay": 0.01,
            "batch_size": 16,
            "warmup": 0.1,
            "label_smoothing": 0.0,
        }
    return {
        "optimizer": "adamw",
        "lr": 1e-3,
        "head_lr": 1e-3,
        "weight_decay": 0.01,
        "batch_size": 64,
        "warmup": 0.05,
        "label_smoothing": 0.1,
    }


def ema_decay(train_rows: int, batch_size: int) -> float:
    """A weight average over about the last epoch of steps."""
    steps_per_epoch = -(-train_rows // batch_size)  # ceiling division
    return round(1.0 - 1.0 / max(10, steps_per_epoch), 5)


def _head_defaults(profile: DataProfile, num_features: int) -> dict[str, Any]:
    # A linear head: with a few thousand rows, extra head layers add parameters the data cannot
    # pin down; the backbone is being fine-tuned anyway.
    return {
        "layers": 0,
        "hidden": min(512, num_features),
        "activation": "gelu",
        "init": "zeros" if profile.modality == "image" else "xavier_uniform",
        "dropout": 0.1,
    }


def augment_preset(profile: DataProfile) -> str:
    """Random resized crops and flips for images (BiT-HyperRule trains every set with them);
    nothing for text and tables, which have no such transform."""
    return "light" if profile.modality == "image" else "none"


def _fill(section: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    values = section.model_dump()
    return {
        key: defaults[key] if value == "auto" and key in defaults else value
        for key, value in values.items()
    }


def resolve(
    config: Config,
    profile: DataProfile,
    *,
    num_features: int,
    preprocessing: dict[str, Any],
    backbone: str,
) -> Config:
    """`config` with every `auto` replaced by the recipe's value."""
    train = _fill(config.train, {**_train_defaults(profile), "epochs": _epochs(profile)})
    train["precision"] = resolve_precision(config.train.precision, default_device())
    if train["ema"] == "auto":
        train["ema"] = ema_decay(profile.train_rows, int(train["batch_size"]))
    head = _fill(config.model.head, _head_defaults(profile, num_features))
    given = config.data
    data = given.model_copy(
        update={
            "train": config.path(given.train),
            "test": config.path(given.test) if given.test else None,
            "val": config.path(given.val) if given.val else None,
            "format": profile.source_format,
            "split": given.split.model_copy(update={"method": profile.split_method}),
            "clean": given.clean.model_copy(
                update={"impute": "median" if given.clean.impute == "auto" else given.clean.impute}
            ),
            "augment": given.augment.model_copy(
                update={
                    "preset": augment_preset(profile)
                    if given.augment.preset == "auto"
                    else given.augment.preset
                }
            ),
            # Each modality has its own input size; the other one does not apply.
            "max_length": preprocessing.get("max_length"),
            "image_size": preprocessing.get("size"),
        }
    )
    model = config.model.model_copy(
        update={
            "backbone": backbone,
            "head": HeadConfig(**head),
            "strategy": "full" if config.model.strategy == "auto" else config.model.strategy,
        }
    )
    task = "text-classification" if profile.modality == "text" else "image-classification"
    return config.updated(task=task, data=data, model=model, train=TrainConfig(**train))


def train_settings(config: Config) -> TrainSettings:
    """The resolved config's training values, as the training loop takes them."""
    train = config.train
    values = [
        train.lr,
        train.head_lr,
        train.weight_decay,
        train.epochs,
        train.batch_size,
        train.warmup,
        train.label_smoothing,
        train.ema,
    ]
    if any(value == "auto" for value in values):
        raise ValueError("train_settings needs a resolved config")
    return TrainSettings(
        lr=float(train.lr),
        head_lr=float(train.head_lr),
        weight_decay=float(train.weight_decay),
        epochs=int(train.epochs),
        batch_size=int(train.batch_size),
        warmup=float(train.warmup),
        grad_clip=train.grad_clip,
        label_smoothing=float(train.label_smoothing),
        precision=train.precision,
        seed=config.seed,
        ema_decay=None if train.ema is None else float(train.ema),
    )
