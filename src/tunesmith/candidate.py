"""One candidate of a run: a config prepared for training (its data read and split, its
backbone loaded, every `auto` resolved from the data's profile), its model built, trained as one
trial, and scored on a part of the data. Every stage the run drives starts from a `Prepared`.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import PartialState
from accelerate.utils import set_seed

from tunesmith.config import (
    Config,
    config_from_dict,
    deep_merge,
    load_config,
    parse_overrides,
)
from tunesmith.console import console
from tunesmith.data import TaskData, load_task_data
from tunesmith.data.sources import Examples
from tunesmith.errors import TunesmithError
from tunesmith.evaluate import collect_logits, objective_for
from tunesmith.io import write_text
from tunesmith.models import Backbone, TaskModel, absolute_spec, build_backbone, make_head
from tunesmith.models.ensemble import Ensemble
from tunesmith.models.hf import HFTextBackbone
from tunesmith.models.inputs import EvalBatches, Inputs, eval_batches, train_batches
from tunesmith.models.losses import balanced_weights
from tunesmith.models.registry import parse_spec, source_modalities
from tunesmith.models.scratch import ScratchShape
from tunesmith.models.strategies import Strategy, check_adapter_targets, check_fits_backbone
from tunesmith.search import (
    DataProfile,
    check_fits,
    image_size,
    is_scratch,
    resolve,
    scratch_image_size,
    scratch_shape,
    strategy_plan,
    train_settings,
)
from tunesmith.search.folds import fold_count
from tunesmith.train import Batches, TrialResult, fine_tune
from tunesmith.train.checkpoint import Checkpoint
from tunesmith.train.loop import Reporter
from tunesmith.train.precision import autocast_for

EVAL_BATCH_SIZE = 64


@dataclass
class Prepared:
    config: Config  # resolved: no `auto` left
    data: TaskData
    backbone: Backbone
    profile: DataProfile

    @property
    def kind(self) -> str:
        return self.data.spec.kind

    def inputs(self, part: Examples) -> Inputs:
        """What the backbone reads for `part`: texts, image paths or encoded feature rows."""
        if self.data.tabular is not None and part.features is not None:
            return self.data.tabular.transform(part.features)
        return part.inputs

    def target_scale(self) -> tuple[float, float] | None:
        """Regression: the training targets' mean and std, which the head's output is scaled by."""
        if self.kind != "regression":
            return None
        targets = np.asarray(self.data.targets(self.data.train), dtype=np.float64)
        std = float(targets.std())
        return float(targets.mean()), std if std > 0 else 1.0


def as_config(config: Config | str | Path, overrides: list[str] | str | None) -> Config:
    """A config given as one, or read from its file, with `overrides` (`key=value`, or a list
    of them) laid over it."""
    if isinstance(overrides, str):  # one override, not a list of its characters
        overrides = [overrides]
    if not isinstance(config, Config):
        return load_config(config, overrides)
    if not overrides:
        return config
    raw = deep_merge(config.model_dump(mode="json", exclude_unset=True),
                     parse_overrides(overrides))
    return config_from_dict(raw, source=config.source, base_dir=config.base_dir)


def prepare(config: Config, *, data: TaskData | None = None) -> Prepared:
    """Read and split the data (or take `data`, read for the same data section), load the
    backbone and resolve every `auto` in the config."""
    with naming_the_config(config):
        return _prepare(config, data)


@contextlib.contextmanager
def naming_the_config(config: Config) -> Iterator[None]:
    """A problem with a config value (an error naming no file) points at the config file."""
    try:
        yield
    except TunesmithError as error:
        if error.file is None:
            raise TunesmithError(
                error.problem, file=config.source, field=error.field, fix=error.fix
            ) from None
        raise


def _prepare(config: Config, data: TaskData | None = None) -> Prepared:
    data = data if data is not None else load_task_data(config)
    _check_modality(data, config)
    profile = DataProfile(
        modality=data.modality,
        train_rows=len(data.train),
        classes=len(data.classes),
        kind=data.spec.kind,
        median_image_side=data.median_image_side,
        in_features=len(data.tabular.feature_names) if data.tabular else None,
        source_format=data.report.parts["train"].source.format,
        split_method=data.splits["method"],
        imbalance=_imbalance(data),
        median_text_chars=int(np.median([len(str(t)) for t in data.train.inputs]))
        if data.modality == "text" and len(data.train) else None,
    )
    check_fits(config, profile)
    shape = scratch_shape(config, profile) if is_scratch(config) else None
    backbone = _backbone(config, profile, shape)
    backbone.image_mode = config.data.clean.image_mode
    if isinstance(backbone, HFTextBackbone) and _given(config.data.max_length) is None:
        backbone.max_length = backbone.length_for(data.train.inputs)
    check_strategy_fits(config, backbone)
    resolved = resolve(
        config,
        profile,
        num_features=backbone.num_features,
        preprocessing=backbone.preprocessing(),
        backbone=absolute_spec(config.model.backbone, config.path),
        shape=shape,
    )
    # Folds are a search's (its trials train on each); a run of the recipe alone validates on
    # the val part, and its config.yaml says so rather than the folds a search would have used.
    from tunesmith.searching import searches  # the search runs candidates: it imports this module

    search = resolved.search.model_copy(
        update={"folds": fold_count(config, data) if searches(config) else 1})
    return Prepared(resolved.updated(search=search), data, backbone, profile)


def check_strategy_fits(config: Config, backbone: Backbone) -> None:
    """The strategy and its adapter settings against the backbone, before training starts.

    `model.peft` applies to the adapter strategies alone: given with another strategy, the
    recipe would drop it. A search keeps it for the trials that draw an adapter strategy, and a
    trial's config cannot tell a strategy the search drew from one the user fixed, so a config
    that searches is not held to this.
    """
    from tunesmith.searching import searches  # the search runs candidates: it imports this module

    strategy = Strategy.parse("full" if config.model.strategy == "auto" else config.model.strategy)
    peft = config.model.peft
    given = {key: value for key, value in (peft.model_dump() if peft else {}).items()
             if value != "auto"}
    if given and not strategy.adapter and not searches(config):
        shown = ", ".join(f"model.peft.{key}={value}" for key, value in given.items())
        chosen = "auto (full)" if config.model.strategy == "auto" else config.model.strategy
        raise TunesmithError(
            f"{shown} is set, but model.strategy {chosen} trains no adapter",
            field="model.peft",
            fix="set model.strategy to lora, dora or loha, or remove model.peft",
        )
    targets = peft.targets if peft is not None and peft.targets != "auto" else None
    if config.model.strategy != "auto":
        check_fits_backbone(strategy, backbone, targets=targets)
    elif targets is not None:  # a search may draw an adapter strategy: its layers must exist
        check_adapter_targets(backbone, targets, method="an adapter")


def _imbalance(data: TaskData) -> float | None:
    counts = label_counts(data.train, data.spec.kind)
    if not counts:
        return None
    return round(max(counts.values()) / max(1, min(counts.values())), 2)


def _backbone(config: Config, profile: DataProfile, shape: ScratchShape | None) -> Backbone:
    given_size = _given(config.data.image_size)
    if given_size is None and shape is not None and profile.modality == "image":
        given_size = scratch_image_size(profile)
    # A network from scratch (or a user's module) is initialized as it is built: by the seed.
    set_seed(config.seed)
    backbone = build_backbone(
        config.model.backbone,
        modality=profile.modality,
        resolve=config.path,
        max_length=_given(config.data.max_length),
        image_size=given_size,
        in_features=profile.in_features,
        shape=shape,
        trust_remote_code=config.model.trust_remote_code,
        search=config.base_dir,
    )
    # Convolutional backbones take any size: small images are upsampled about 2x rather than
    # to the pretrained size. Transformers with position embeddings need the size they know.
    if given_size is None and getattr(backbone, "resizable", False):
        stats = backbone.pretrained_stats()  # type: ignore[operator]
        backbone.image_size = image_size(profile, stats["pretrained_size"])  # type: ignore[assignment]
    return backbone


def _check_modality(data: TaskData, config: Config) -> None:
    """A table without the text column, given a text backbone: say which column is missing."""
    spec = parse_spec(config.model.backbone)
    reads = source_modalities(spec, config.path)
    if data.modality != "tabular" or config.task != "auto" or "tabular" in reads:
        return
    train = data.report.parts["train"]
    if "text" in reads:
        raise TunesmithError(
            f"column {config.data.text_column!r} not found; the file has columns {train.columns}, "
            "so it reads as a table of features, but the backbone reads text",
            file=train.source.path,
            field="data.text_column",
            fix="set data.text_column to the column that holds the text, or use scratch:mlp for "
            "a table",
        )


def _given(value: int | str | None) -> int | None:
    """A size the user set, or None where the recipe decides."""
    return value if isinstance(value, int) else None


def task_model(prepared: Prepared) -> TaskModel:
    """The backbone with a new head, initialized from the config's seed."""
    set_seed(prepared.config.seed)  # the head's initialization is part of what the seed fixes
    return TaskModel(prepared.backbone, make_head(**head_spec(prepared)))


def head_spec(prepared: Prepared) -> dict[str, Any]:
    head = prepared.config.model.head
    return {
        "in_features": prepared.backbone.num_features,
        "num_outputs": prepared.profile.outputs,
        "layers": int(head.layers),
        "hidden": int(head.hidden),
        "activation": str(head.activation),
        "init": str(head.init),
        "dropout": float(head.dropout),
        "target_scale": prepared.target_scale(),
    }


def label_counts(part: Examples, kind: str) -> dict[str, int]:
    if kind == "regression":
        return {}
    labels = [name for names in part.labels for name in names] if kind == "multilabel" else (
        part.labels
    )
    return dict(Counter(labels).most_common())


def batches_for(prepared: Prepared, batch_size: int, seed: int, workers: int = 0) -> Batches:
    """Training, validation and (lazily) un-augmented training batches of the prepared data,
    images loaded by `workers` processes."""
    data, backbone = prepared.data, prepared.backbone
    train_inputs = prepared.inputs(data.train)
    train_targets = data.targets(data.train)
    train = train_batches(
        backbone,
        train_inputs,
        train_targets,
        batch_size=batch_size,
        seed=seed,
        augment=prepared.config.data.augment,
        mix_classes=len(data.classes) if prepared.kind == "classification" else 0,
        workers=workers,
    )
    val = eval_batches(
        backbone, prepared.inputs(data.val), data.targets(data.val), batch_size=EVAL_BATCH_SIZE,
        workers=workers,
    )
    return Batches(
        train=train,
        val=val,
        plain_train=lambda: eval_batches(
            backbone, train_inputs, train_targets, batch_size=EVAL_BATCH_SIZE, workers=workers
        ),
        plain_sample=lambda rows: plain_sample(prepared, rows, workers=workers),
    )


def plain_sample(prepared: Prepared, rows: int, *, workers: int = 0) -> EvalBatches:
    """At most `rows` training rows, a sample seeded by the config's seed, without augmentation
    and in batches as evaluation makes them: what batch norms measure their statistics on."""
    train = prepared.data.train
    chosen = np.random.default_rng(prepared.config.seed).permutation(len(train))
    part = train.subset(sorted(chosen[:rows].tolist()))
    return eval_batches(prepared.backbone, prepared.inputs(part), prepared.data.targets(part),
                        batch_size=EVAL_BATCH_SIZE, workers=workers)


def loss_weights(prepared: Prepared) -> tuple[float, ...] | None:
    if prepared.kind == "regression":
        return None
    targets = np.asarray(prepared.data.targets(prepared.data.train))
    return balanced_weights(prepared.kind, targets, len(prepared.data.classes))


def train_candidate(
    prepared: Prepared,
    trial_dir: Path,
    *,
    reporter: Reporter | None = None,
    time_budget: float | None = None,
    resume: Checkpoint | None = None,
) -> tuple[TaskModel, TrialResult]:
    """Build the prepared config's model and train it: one trial. `time_budget` (seconds), when
    given, caps the config's own."""
    resolved, data = prepared.config, prepared.data
    if PartialState().is_main_process and resume is None:
        write_text(trial_dir / "config.yaml", resolved.to_yaml())
    scale = prepared.target_scale()
    settings = train_settings(
        resolved,
        kind=prepared.kind,
        loss_weights=loss_weights(prepared),
        target_std=scale[1] if scale else 1.0,
    )
    if time_budget is not None:
        own = settings.time_budget
        settings = settings.with_changes(
            time_budget=max(1.0, time_budget if own is None else min(own, time_budget))
        )
    plan = strategy_plan(resolved, settings)
    model = task_model(prepared)
    batches = batches_for(prepared, settings.batch_size, settings.seed, settings.workers)
    console.print(
        f"[bold]training[/] {resolved.model.backbone} ({plan.strategy}) on {len(data.train)} "
        f"rows ({len(data.val)} val, {len(data.test)} test held out)"
    )
    with naming_the_config(resolved):
        result = fine_tune(model, batches, settings, plan, trial_dir, reporter=reporter,
                           resume=resume)
    return model, result


def bundle_inputs(prepared: Prepared) -> dict[str, Any]:
    data = prepared.config.data
    # the training files' format, so that prediction reads files written the same way
    table = {"delimiter": data.delimiter, "encoding": data.encoding}
    if prepared.data.modality == "text":
        return {"text_column": data.text_column, **table}
    if prepared.data.tabular is not None:
        return {"tabular": prepared.data.tabular.to_dict(), **table}
    return {"image_mode": prepared.backbone.image_mode}


def predict_part(
    model: TaskModel | Ensemble, prepared: Prepared, part: Examples, result: TrialResult,
    *, precision: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(outputs, targets) of `model` on a part, computed as it was trained (its precision), or
    in `precision` (fp32: as the bundle predicts)."""
    batches = eval_batches(
        prepared.backbone, prepared.inputs(part), prepared.data.targets(part),
        batch_size=EVAL_BATCH_SIZE,
    )
    device = next(model.parameters()).device
    autocast = autocast_for(precision or result.precision, device)
    return collect_logits(model, batches, device=device, autocast=autocast)


def evaluate_part(
    model: TaskModel | Ensemble, prepared: Prepared, part: Examples, result: TrialResult
) -> dict[str, float]:
    return objective_for(prepared.kind).score(*predict_part(model, prepared, part, result))
