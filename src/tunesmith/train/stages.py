"""A fine-tuning strategy as the training stages it runs.

    linear-probe       probe
    lp-ft              probe -> fine-tune everything (the head starts probed; one learning rate)
    full, freeze:K     fine-tune (the bottom K blocks frozen)
    gradual-unfreeze   fine-tune, one more block from the top trainable each epoch
    lora, dora, loha   fine-tune adapters and head -> save the adapter alone (PEFT's format, in
                       the trial folder) -> merge it into the weights (a plain network)

The probe computes the frozen backbone's features for the training and validation rows once
(without augmentation) and trains the head alone on them, so it takes seconds, not the minutes
of a forward pass through the backbone per epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from tunesmith.console import console
from tunesmith.data.features import FeatureRows, feature_collate
from tunesmith.data.order import ShuffledBatches, loader_generator
from tunesmith.evaluate import collect_logits
from tunesmith.models.inputs import EvalBatches
from tunesmith.models.strategies import (
    AdapterSettings,
    Strategy,
    add_adapter,
    batch_norms,
    freeze_backbone,
    freeze_bottom,
    merge_adapter,
    save_adapter,
    train_top,
)
from tunesmith.models.task_model import ProbeModel, TaskModel
from tunesmith.train.checkpoint import Checkpoint
from tunesmith.train.loop import Reporter, TrainSettings, TrialResult, train_trial
from tunesmith.train.precision import autocast_for, default_device, resolve_precision

FEATURE_BATCH = 128
ADAPTER_FOLDER = "adapter"  # the trained adapter alone, as PEFT saves it


@dataclass(frozen=True)
class Batches:
    """The batches a strategy may need; `plain_train` (the training rows without augmentation,
    for the probe's features) is built only when a strategy asks for it."""

    train: DataLoader[Any]
    val: EvalBatches
    plain_train: Callable[[], EvalBatches]
    plain_sample: Callable[[int], EvalBatches]  # a seeded sample of that many training rows


@dataclass(frozen=True)
class StrategyPlan:
    strategy: Strategy
    probe: TrainSettings | None = None  # the probe stage (linear-probe, lp-ft)
    adapter: AdapterSettings | None = None  # lora, dora, loha
    # The first block (a text encoder's token and position embeddings) stays as pretrained
    # whatever else trains. The token table is half of a small encoder's weights: its dense
    # gradient, clipping, AdamW update and weight average, and the input gradient of the first
    # layer, cost a sixth of each MiniLM step on a CPU, for an accuracy change within noise
    # (Lee et al. 2019, "What would Elsa do? Freezing layers during transformer fine-tuning").
    freeze_embeddings: bool = False


class GradualUnfreeze:
    """Before epoch e of E: the top round(N * e / (E - 1)) of the N backbone blocks trainable,
    so the first epoch trains the head alone and the last one every block."""

    def __init__(self, model: TaskModel) -> None:
        self.model = model
        self.blocks = len(model.backbone.blocks())

    def __call__(self, epoch: int, epochs: int) -> None:
        top = self.blocks if epochs <= 1 else round(self.blocks * epoch / (epochs - 1))
        train_top(self.model, top)


def fine_tune(
    model: TaskModel,
    batches: Batches,
    settings: TrainSettings,
    plan: StrategyPlan,
    trial_dir: Path,
    *,
    reporter: Reporter | None = None,
    resume: Checkpoint | None = None,
) -> TrialResult:
    """Run the strategy's stages on `model` in place; returns the last stage's result, its wall
    time that of every stage. `resume` continues from a checkpoint of one of the stages (the
    stages before it are done: their result is in the checkpoint's weights)."""
    strategy = plan.strategy
    started = time.perf_counter()
    resumed_stage = resume.state["stage"] if resume is not None else None
    # What the resumed stage had run before its checkpoint (an earlier stage's time is lost).
    before = float(resume.state["spent_s"]) if resume is not None else 0.0
    if strategy.probes and resumed_stage != "train":
        assert plan.probe is not None
        probed = train_probe(
            model,
            batches,
            plan.probe.with_changes(time_budget=settings.time_budget),
            trial_dir,
            reporter=reporter if not strategy.fine_tunes else None,
            resume=resume,
        )
        resume = None
        if not strategy.fine_tunes:
            freeze_bottom(model, 0)  # the returned model is a plain one, every weight trainable
            probed.wall_s = before + time.perf_counter() - started  # the features' pass too
            return probed
    if strategy.name == "lp-ft":
        # The probed head is already good, so it moves at the backbone's rate instead of the
        # high rate of a head from scratch, which would distort the pretrained features.
        settings = settings.with_changes(head_lr=settings.lr, time_budget=_left(settings, started))
    before_epoch = fine_tuned_weights(model, plan)
    result = train_trial(
        model, batches.train, batches.val, settings, trial_dir,
        reporter=reporter, before_epoch=before_epoch, resume=resume,
        statistics=batches.plain_sample(settings.precise_bn_rows)
        if settings.precise_bn_rows else None,
    )
    if strategy.adapter:
        save_adapter(model, trial_dir / ADAPTER_FOLDER)
        merge_adapter(model)
    model.fixed, model.fixed_modules = [], []
    freeze_bottom(model, 0)  # the returned model is a plain one, every weight trainable
    result.wall_s = before + time.perf_counter() - started  # every stage
    return result


def fine_tuned_weights(model: TaskModel, plan: StrategyPlan) -> GradualUnfreeze | None:
    """Make what the strategy's fine-tuning stage trains trainable, and nothing else: the
    backbone above the frozen blocks, or the adapters, with the head; without the embeddings
    when they stay fixed. Returns gradual unfreezing's step before each epoch (until its first
    call every block trains)."""
    strategy = plan.strategy
    if plan.freeze_embeddings:  # its weights, and an image stem's batch-norm statistics (its
        # dropout trains on, as it did)
        first = model.backbone.blocks()[0]
        model.fixed = [parameter for _, parameter in first.parameters]
        model.fixed_modules = batch_norms(first.modules)
    if strategy.name == "gradual-unfreeze":
        return GradualUnfreeze(model)
    if strategy.name == "freeze":
        freeze_bottom(model, strategy.frozen_blocks)
    elif strategy.adapter:
        assert plan.adapter is not None
        targets = add_adapter(model, plan.adapter)
        console.print(f"{strategy}: adapters on {len(targets)} layers")
    else:
        freeze_bottom(model, 0)
    return None


def swept_stage(model: TaskModel, settings: TrainSettings, plan: StrategyPlan) -> TrainSettings:
    """`model` set up as the strategy's last stage trains it, and that stage's settings: what
    the learning-rate range test sweeps (the probe's head alone for linear-probe; lp-ft's
    fine-tune, whose head moves at the backbone's rate)."""
    strategy = plan.strategy
    if strategy.probes and not strategy.fine_tunes:
        assert plan.probe is not None
        freeze_backbone(model)
        return plan.probe
    fine_tuned_weights(model, plan)
    return settings.with_changes(head_lr=settings.lr) if strategy.name == "lp-ft" else settings


def _left(settings: TrainSettings, started: float) -> float | None:
    if settings.time_budget is None:
        return None
    return max(1.0, settings.time_budget - (time.perf_counter() - started))


def backbone_features(
    model: TaskModel, batches: EvalBatches, *, precision: str
) -> tuple[np.ndarray, np.ndarray]:
    """(features, targets) of every row, in row order, from the backbone in eval mode."""
    device = next(model.parameters()).device
    return collect_logits(
        model.backbone, batches, device=device, autocast=autocast_for(precision, device)
    )


def train_probe(
    model: TaskModel,
    batches: Batches,
    settings: TrainSettings,
    trial_dir: Path,
    *,
    reporter: Reporter | None = None,
    resume: Checkpoint | None = None,
) -> TrialResult:
    """Train `model.head` on the frozen backbone's cached features."""
    freeze_backbone(model)
    precision = resolve_precision(settings.precision, default_device())
    started = time.perf_counter()
    train_x, train_y = backbone_features(model, batches.plain_train(), precision=precision)
    val_x, val_y = backbone_features(model, batches.val, precision=precision)
    console.print(
        f"probe: features of {len(train_x)} + {len(val_x)} rows in "
        f"{time.perf_counter() - started:.1f} s"
    )
    order = ShuffledBatches(
        len(train_x), settings.batch_size, seed=settings.seed,
        drop_last=len(train_x) > settings.batch_size,
    )
    train = DataLoader(
        FeatureRows(train_x, list(train_y)), batch_sampler=order, collate_fn=feature_collate,
        generator=loader_generator(settings.seed),
    )
    val_loader = DataLoader(
        FeatureRows(val_x, list(val_y)), batch_size=FEATURE_BATCH, collate_fn=feature_collate
    )
    val = EvalBatches(val_loader, list(range(len(val_x))))
    probe = ProbeModel(model.head)
    budget = None if settings.time_budget is None else max(
        1.0, settings.time_budget - (time.perf_counter() - started)
    )
    return train_trial(
        probe, train, val, settings.with_changes(stage="probe", time_budget=budget,
                                                 ema_decay=None), trial_dir, reporter=reporter,
        resume=resume,
    )
