"""The dataset-aware recipe: every `auto` in a config resolved from the data and the backbone.

The search (a later stage) starts from this recipe as its first trial. The values follow
published practice: for text encoders, AdamW at 1e-4 to 5e-5 with 10% warm-up and more epochs for
small sets (BERT, Sentence-Transformers fine-tuning); for images, in the spirit of BiT-HyperRule,
a zero-initialized head, training length by dataset size and a resolution chosen from the images'
own size; low-rank adapters at a learning rate several times that of full fine-tuning (LoRA,
QLoRA); networks from scratch (tables, small images) trained longer at 1e-3.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

from tunesmith.config import Config, HeadConfig, PeftConfig, ScratchConfig, TrainConfig
from tunesmith.data.sources import Modality
from tunesmith.data.split import config_method
from tunesmith.errors import TunesmithError
from tunesmith.models.losses import DEFAULT_LOSS, LossSettings, check_loss
from tunesmith.models.registry import parse_spec
from tunesmith.models.scratch import ScratchShape
from tunesmith.models.strategies import AdapterSettings, Strategy
from tunesmith.train import StrategyPlan, TrainSettings
from tunesmith.train.precision import default_device, resolve_precision


@dataclass(frozen=True)
class DataProfile:
    """What the recipe looks at: how much data, what labels, how big the inputs are."""

    modality: Modality
    train_rows: int
    classes: int
    kind: str = "classification"  # classification, multilabel or regression
    median_image_side: int | None = None
    in_features: int | None = None  # tables: width of the encoded features
    imbalance: float | None = None  # the largest class's training rows over the smallest's
    median_text_chars: int | None = None
    source_format: str = "csv"  # what the data turned out to be, for the resolved config
    split_method: str = "stratified"

    @property
    def task(self) -> str:
        return f"{self.modality}-{self.kind}"

    @property
    def outputs(self) -> int:
        """What the head emits: one logit per class, or one number."""
        return 1 if self.kind == "regression" else self.classes


def is_scratch(config: Config) -> bool:
    return config.model.backbone.startswith("scratch:")


def starts_random(config: Config) -> bool:
    """Whether the network starts from random weights: a network from scratch, or a timm or
    torchvision network named without a weights file (tunesmith downloads nothing)."""
    spec = parse_spec(config.model.backbone)
    return spec.source == "scratch" or (
        spec.source in ("timm", "torchvision") and "weights" not in spec.options
    )


def takes_adapters(config: Config) -> bool:
    """Whether adapter strategies (LoRA, DoRA, LoHa) apply: they adapt pretrained layers, which
    a network from scratch has none of, and a user's own module declares with `?weights=FILE`
    (the search tries adapters there only; asked for, they apply to any of the user's modules,
    which may load pretrained weights themselves)."""
    spec = parse_spec(config.model.backbone)
    return spec.source != "scratch" and (spec.source != "python" or "weights" in spec.options)


def image_size(profile: DataProfile, pretrained_size: int) -> int:
    """Small images are upsampled (about 2x, at least 64 px) so the backbone's 32x downsampling
    still leaves a spatial map to pool; larger ones use the backbone's pretrained resolution.
    Cost grows with the square of the side, so no more than that."""
    side = profile.median_image_side or pretrained_size
    return min(pretrained_size, max(64, 32 * round(2 * side / 32)))


def scratch_image_size(profile: DataProfile) -> int:
    """A network from scratch learns at the images' own size (a multiple of 8, 16 to 128)."""
    side = profile.median_image_side or 32
    return min(128, max(16, 8 * round(side / 8)))


def _steps_per_epoch(profile: DataProfile, batch_size: int) -> int:
    return -(-profile.train_rows // batch_size)  # ceiling division


def _epochs(profile: DataProfile, *, scratch: bool, batch_size: int) -> int:
    rows = profile.train_rows
    if scratch:  # about 3,000 steps: small tables need many passes, large ones few
        return min(200, max(10, math.ceil(3_000 / _steps_per_epoch(profile, batch_size))))
    if profile.modality == "text":
        return 6 if rows <= 2_000 else 4 if rows <= 20_000 else 3 if rows <= 100_000 else 2
    return 12 if rows <= 2_000 else 8 if rows <= 20_000 else 5 if rows <= 100_000 else 3


def probe_epochs(profile: DataProfile, batch_size: int) -> int:
    """About 1,500 steps of the head alone on cached features (cheap: no backbone pass)."""
    return min(100, max(10, math.ceil(1_500 / _steps_per_epoch(profile, batch_size))))


# SGD steps by the gradient itself where Adam divides it by its running size, so the same model
# needs a far larger rate. One epoch of MiniLM on Rotten Tomatoes (the sentiment example; val
# accuracy): SGD 0.74 at AdamW's 1e-4, 0.77 at 1e-2, 0.81 at 3e-2 (AdamW 0.81), 0.77 at 0.1.
# EfficientNet-Lite0 on the digits, four epochs: SGD 0.52 at AdamW's 1e-3, 0.90 at 3e-2, 0.28 at
# 0.1 (AdamW 0.98). The small tables' MLPs score alike with SGD from 1e-3 to 0.3 (wine's
# validation loss falls from 0.12 at 1e-3 to 0.002 at 3e-2).
SGD_RATE_SCALE: dict[Modality, float] = {"text": 300.0, "image": 30.0, "tabular": 30.0}


def rate_scale(optimizer: str, modality: Modality) -> float:
    """What `optimizer`'s learning rates are, times AdamW's."""
    return SGD_RATE_SCALE[modality] if optimizer == "sgd" else 1.0


def recipe_optimizer(config: Config) -> str:
    return "adamw" if config.train.optimizer == "auto" else str(config.train.optimizer)


def _learning_rate(config: Config, profile: DataProfile, strategy: Strategy) -> float:
    """The body's rate for the config's optimizer."""
    return _adamw_rate(config, profile, strategy) * rate_scale(recipe_optimizer(config),
                                                               profile.modality)


def _adamw_rate(config: Config, profile: DataProfile, strategy: Strategy) -> float:
    if is_scratch(config):
        return 2e-3 if profile.modality == "image" else 1e-3
    text = profile.modality == "text"
    if strategy.adapter:
        return 5e-4 if text else 2e-3
    base = 1e-4 if text else 1e-3
    # LP-FT fine-tunes from a trained head: a lower rate keeps the features from distorting.
    return base / 2 if strategy.name == "lp-ft" else base


def _train_defaults(config: Config, profile: DataProfile, strategy: Strategy) -> dict[str, Any]:
    scratch = is_scratch(config)
    text = profile.modality == "text"
    batch_size = 16 if text else 64 if profile.modality == "image" else (
        32 if profile.train_rows < 5_000 else 128
    )
    if isinstance(config.train.batch_size, int):
        batch_size = config.train.batch_size
    smoothing = 0.1 if profile.modality == "image" and profile.kind == "classification" else 0.0
    optimizer = recipe_optimizer(config)
    lr = _learning_rate(config, profile, strategy)
    new_head_lr = 1e-3 * rate_scale(optimizer, profile.modality)
    return {
        "optimizer": optimizer,
        "lr": lr,
        # A network from scratch is one network: its last layer trains at the rate of the rest
        # (the user's or a trial's train.lr when given).
        "head_lr": new_head_lr if not scratch else (
            config.train.lr if isinstance(config.train.lr, float) else lr),
        "weight_decay": 0.01 if not scratch else 1e-4,
        "layer_decay": 1.0,
        "batch_size": batch_size,
        "epochs": _epochs(profile, scratch=scratch, batch_size=batch_size),
        "warmup": 0.3 if config.train.schedule == "one-cycle" else 0.1 if text else 0.05,
        "schedule": "cosine",
        "loss": DEFAULT_LOSS[profile.kind],
        "label_smoothing": smoothing,
        "class_weights": "none",
        "probe_epochs": probe_epochs(profile, 64),
        "probe_lr": new_head_lr,
        "patience": SCRATCH_PATIENCE if scratch else None,
    }


# A network from scratch trains for about 3,000 steps (at most 200 epochs) and on a small table
# peaks long before (breast cancer's best epoch is 26 of 200; wine's validation accuracy is 1.0
# from epoch 30 on, its loss lowest at 198): stopping 20 evaluations after the best scores the
# same on validation and test in less time (3.6 s to 1.0 s, 1.5 s to 1.1 s, with fp32 below).
SCRATCH_PATIENCE = 20


def _precision(config: Config, profile: DataProfile) -> str:
    """A table's MLP multiplies matrices of a batch by a few hundred units: too small for bf16's
    matrix units to pay for the casts around every layer (a 32-row step of a 256-wide MLP takes
    3.8 ms under bf16 autocast here, 2.3 ms in fp32), so `auto` trains it in fp32."""
    if config.train.precision == "auto" and is_scratch(config) and profile.modality == "tabular":
        return "fp32"
    return resolve_precision(config.train.precision, default_device())


def loader_workers(modality: str) -> int:
    """Images are decoded and augmented in other processes when there are cores to spare: one
    worker per four cores, at least one and at most 4, the rest left to the training step's
    threads (on 2 cores one worker trains EfficientNet-Lite0 on 64 px digits 17% faster than
    none, two 15% slower). Texts and tables are in memory already."""
    cores = os.cpu_count() or 1
    if modality != "image" or cores < 2:
        return 0
    return min(4, max(1, cores // 4))


# Training rows whose batch-norm statistics replace the running ones before each evaluation of a
# network from random weights (train/batch_norm.py); a few hundred are enough (Wu and Johnson).
PRECISE_BN_ROWS = 512


def precise_bn_rows(config: Config) -> int:
    """The training rows whose batch-norm statistics are recomputed before each evaluation: for
    an image network from random weights, whose running statistics lag far behind its weights in
    a run of a few epochs (a MobileNetV3-Small on the digits predicted one class after 2 epochs).
    A table's MLP trains for hundreds of short epochs, in which they keep up; recomputing them at
    every epoch cut the breast-cancer search's trials in its 2 minutes from 31 to 11."""
    return PRECISE_BN_ROWS if config.task.startswith("image") and starts_random(config) else 0


def ema_decay(train_rows: int, batch_size: int) -> float:
    """A weight average over about the last epoch of steps."""
    steps_per_epoch = -(-train_rows // batch_size)  # ceiling division
    return round(1.0 - 1.0 / max(10, steps_per_epoch), 5)


def _head_defaults(config: Config, profile: DataProfile, num_features: int) -> dict[str, Any]:
    # A linear head: with a few thousand rows, extra head layers add parameters the data cannot
    # pin down; the backbone is being fine-tuned anyway (and a scratch MLP is the hidden layers).
    # Zero-initialized (BiT-HyperRule) on images and text: every seed then starts from the same
    # weights, as the runs of a model soup do, so the recipe's replicates average in weight space
    # (on Rotten Tomatoes with MiniLM, four seeds' uniform soup scored 0.821 on test with a zero
    # head, 0.807 with Xavier heads, which do not average; single runs 0.813 and 0.808). A table's
    # scratch MLP starts from random hidden layers anyway: its head keeps Xavier's.
    zero = profile.modality != "tabular" or profile.kind == "regression"
    return {
        "layers": 0,
        "hidden": min(512, num_features),
        "activation": "gelu",
        "init": "zeros" if zero else "xavier_uniform",
        "dropout": 0.1,
    }


def scratch_shape(config: Config, profile: DataProfile) -> ScratchShape:
    """The structure of a from-scratch network, sized to the data: an MLP about twice as wide as
    its encoded input (64 to 512 units), deeper for more rows; a 3-stage CNN of 32 channels."""
    given = config.model.scratch or ScratchConfig()
    width = min(512, max(64, 2 ** math.ceil(math.log2(max(1, 2 * (profile.in_features or 32))))))
    defaults = {
        "depth": 3 if profile.modality == "tabular" and profile.train_rows > 10_000 else
        2 if profile.modality == "tabular" else 3,
        "width": width,
        "channels": 32,
        "kernel_size": 3,
        "groups": 1,
        "activation": "relu",
        "norm": "batch",
        "dropout": 0.1 if profile.modality == "tabular" else 0.0,
        "init": "kaiming_normal",
    }
    return ScratchShape(**_fill(given, defaults))


def augment_preset(profile: DataProfile) -> str:
    """Random resized crops and flips for images (BiT-HyperRule trains every set with them);
    nothing for text and tables, which have no such transform."""
    return "light" if profile.modality == "image" else "none"


MIXUP_ROWS = 20_000  # BiT-HyperRule: MixUp (alpha 0.1) only for sets at least this large


def mixup_alpha(profile: DataProfile) -> float:
    images = profile.modality == "image" and profile.kind == "classification"
    return 0.1 if images and profile.train_rows >= MIXUP_ROWS else 0.0


def _fill(section: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    values = section.model_dump()
    return {
        key: defaults[key] if value == "auto" and key in defaults else value
        for key, value in values.items()
    }


def _peft_defaults(profile: DataProfile) -> dict[str, Any]:
    return {"r": 8, "alpha": 16, "dropout": 0.1 if profile.modality == "text" else 0.0}


def check_fits(config: Config, profile: DataProfile) -> None:
    """Settings that cannot train this task are config errors before anything loads."""
    if config.train.loss != "auto":
        check_loss(config.train.loss, profile.kind)
    augment = config.data.augment
    if (augment.mixup or augment.cutmix) and profile.kind != "classification":
        raise TunesmithError(
            f"MixUp and CutMix mix class labels; this is a {profile.kind} task",
            field="data.augment.mixup" if augment.mixup else "data.augment.cutmix",
            fix="set data.augment.mixup and data.augment.cutmix to 0",
        )
    if profile.modality != "image":  # they were accepted, recorded as used, and ignored
        given = {"data.augment.mixup": augment.mixup, "data.augment.cutmix": augment.cutmix,
                 "data.augment.preset": augment.preset not in ("auto", "none")}
        for field, used in given.items():
            if used:
                raise TunesmithError(
                    f"{field} augments images; this is a {profile.modality} task",
                    field=field, fix=f"remove {field} (texts and tables are not augmented)")
    if config.train.class_weights == "balanced" and profile.kind == "regression":
        raise TunesmithError(
            "class weights balance the classes of a classification; this is a regression task",
            field="train.class_weights",
            fix="remove train.class_weights (or set it to none)",
        )
    smoothing = config.train.label_smoothing
    if smoothing != "auto" and float(smoothing) > 0 and profile.kind != "classification":
        raise TunesmithError(
            f"label smoothing spreads a share of one class's probability over the others; "
            f"this is a {profile.kind} task, trained without it",
            field="train.label_smoothing",
            fix="remove train.label_smoothing (or set it to 0)",
        )
    strategy = Strategy.parse(config.model.strategy) if config.model.strategy != "auto" else None
    if strategy is not None and strategy.adapter and is_scratch(config):
        raise TunesmithError(
            f"{strategy} adapts pretrained weights; {config.model.backbone} has none to keep",
            field="model.strategy",
            fix="use full (or freeze:K) for networks from scratch",
        )


def resolve(
    config: Config,
    profile: DataProfile,
    *,
    num_features: int,
    preprocessing: dict[str, Any],
    backbone: str,
    shape: ScratchShape | None = None,
) -> Config:
    """`config` with every `auto` replaced by the recipe's value."""
    strategy = Strategy.parse("full" if config.model.strategy == "auto" else config.model.strategy)
    train = _fill(config.train, _train_defaults(config, profile, strategy))
    train["precision"] = _precision(config, profile)
    if train["ema"] == "auto":  # a network from random weights moves too far to be averaged
        train["ema"] = None if starts_random(config) else ema_decay(
            profile.train_rows, int(train["batch_size"]))
    if train["workers"] == "auto":
        train["workers"] = loader_workers(profile.modality)
    head = _fill(config.model.head, _head_defaults(config, profile, num_features))
    given = config.data
    data = given.model_copy(
        update={
            "train": config.path(given.train),
            "test": config.path(given.test) if given.test else None,
            "val": config.path(given.val) if given.val else None,
            "format": profile.source_format,
            "split": given.split.model_copy(update={"method": config_method(profile.split_method)}),
            "clean": given.clean.resolved(profile.modality),
            "augment": given.augment.model_copy(
                update={
                    "preset": augment_preset(profile)
                    if given.augment.preset == "auto"
                    else given.augment.preset,
                    "mixup": given.augment.mixup
                    if "mixup" in given.augment.model_fields_set
                    else mixup_alpha(profile),
                }
            ),
            # Each modality has its own input size; the others do not apply.
            "max_length": preprocessing.get("max_length"),
            "image_size": preprocessing.get("size"),
        }
    )
    model = config.model.model_copy(
        update={
            "backbone": backbone,
            "head": HeadConfig(**head),
            "strategy": str(strategy),
            "scratch": ScratchConfig(**asdict(shape)) if shape else None,
            "peft": PeftConfig(**_fill(config.model.peft or PeftConfig(), _peft_defaults(profile)))
            if strategy.adapter
            else None,
            "freeze_embeddings": profile.modality == "text"
            if config.model.freeze_embeddings == "auto"
            else config.model.freeze_embeddings,
        }
    )
    return config.updated(task=profile.task, data=data, model=model, train=TrainConfig(**train))


def _resolved(config: Config) -> TrainConfig:
    train = config.train
    auto = [key for key, value in train.model_dump().items() if value == "auto"]
    if auto:
        raise ValueError(f"train settings need a resolved config; auto: {auto}")
    return train


def train_settings(
    config: Config,
    *,
    kind: str,
    loss_weights: tuple[float, ...] | None = None,
    target_std: float = 1.0,
) -> TrainSettings:
    """The resolved config's training values, as the training loop takes them."""
    train = _resolved(config)
    loss = LossSettings(
        name=str(train.loss),
        label_smoothing=float(train.label_smoothing) if kind == "classification" else 0.0,
        focal_gamma=train.focal_gamma,
        weights=loss_weights if train.class_weights == "balanced" else None,
        target_std=target_std,
    )
    return TrainSettings(
        lr=float(train.lr),
        head_lr=float(train.head_lr),
        weight_decay=float(train.weight_decay),
        epochs=int(train.epochs),
        batch_size=int(train.batch_size),
        warmup=float(train.warmup),
        grad_clip=train.grad_clip,
        precision=train.precision,
        seed=config.seed,
        loss=loss,
        kind=kind,
        optimizer=str(train.optimizer),
        momentum=train.momentum,
        schedule=str(train.schedule),
        accumulate=train.accumulate,
        patience=None if train.patience is None else int(train.patience),
        layer_decay=float(train.layer_decay),
        ema_decay=None if train.ema is None else float(train.ema),
        precise_bn_rows=precise_bn_rows(config),
        time_budget=train.time_budget,
        checkpoint_steps=train.checkpoint_steps,
        log_to=train.log_to,
        workers=int(train.workers),
        compile=train.compile,
    )


def strategy_plan(config: Config, settings: TrainSettings) -> StrategyPlan:
    """The resolved strategy with the settings of its probe stage and adapter."""
    strategy = Strategy.parse(config.model.strategy)
    train = _resolved(config)
    probe = None
    if strategy.probes:
        probe = settings.with_changes(
            lr=float(train.probe_lr),
            head_lr=float(train.probe_lr),
            epochs=int(train.probe_epochs),
            batch_size=64,
            warmup=0.0,
            layer_decay=1.0,
            ema_decay=None,
            schedule="cosine",
            accumulate=1,
            patience=None,
            compile=False,  # a head on cached features: nothing worth compiling
        )
    adapter = None
    if strategy.adapter:
        peft = config.model.peft
        assert peft is not None, "a resolved adapter strategy has its peft section"
        adapter = AdapterSettings(
            method=strategy.name,
            r=int(peft.r),
            alpha=int(peft.alpha),
            dropout=float(peft.dropout),
            targets=None if peft.targets == "auto" else list(peft.targets),
        )
    return StrategyPlan(strategy, probe=probe, adapter=adapter,
                        freeze_embeddings=config.model.freeze_embeddings is True)
