"""One training run: setup -> (train an epoch -> evaluate on val -> keep the best) x epochs.

The loop runs on Accelerate, so the same code serves one CPU, one GPU or many processes. It keeps
the weights that scored best on validation (never just the last), writes them atomically to the
trial folder, and logs one JSON line per epoch. A search talks to it only through `Reporter`.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from tunesmith.console import console, progress
from tunesmith.evaluate import PRIMARY_METRIC, classification_metrics, collect_logits
from tunesmith.io import append_jsonl, atomic_write
from tunesmith.models.classifier import Classifier
from tunesmith.models.inputs import EvalBatches
from tunesmith.train.ema import WeightAverage
from tunesmith.train.optim import adamw, warmup_cosine
from tunesmith.train.precision import default_device, resolve_precision


@dataclass(frozen=True)
class TrainSettings:
    lr: float
    head_lr: float
    weight_decay: float
    epochs: int
    batch_size: int
    warmup: float
    grad_clip: float | None
    label_smoothing: float
    precision: str
    seed: int
    ema_decay: float | None = None


class Reporter(Protocol):
    """What a search sees of a run: the validation metric after each epoch."""

    def report(self, value: float, step: int) -> None: ...

    def should_prune(self) -> bool: ...


@dataclass
class TrialResult:
    best_epoch: int
    best_val: dict[str, float]
    precision: str
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def train_samples_per_s(self) -> float:
        return float(np.mean([epoch["train_samples_per_s"] for epoch in self.history]))


@dataclass
class _Best:
    score: float = -np.inf
    epoch: int = -1
    metrics: dict[str, float] = field(default_factory=dict)
    state: dict[str, torch.Tensor] | None = None


def train_trial(
    model: Classifier,
    train_loader: DataLoader[Any],
    val_batches: EvalBatches,
    settings: TrainSettings,
    trial_dir: Path,
    *,
    reporter: Reporter | None = None,
) -> TrialResult:
    """Fine-tune `model` in place; on return it holds the best-on-validation weights."""
    set_seed(settings.seed)
    precision = resolve_precision(settings.precision, default_device())
    # Accelerate keeps its mixed-precision setting process-wide; each trial may choose its own.
    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no")
    optimizer = adamw(
        model, lr=settings.lr, head_lr=settings.head_lr, weight_decay=settings.weight_decay
    )
    total_steps = settings.epochs * len(train_loader)
    scheduler = warmup_cosine(
        optimizer, total_steps=total_steps, warmup_steps=round(settings.warmup * total_steps)
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)

    average = (
        WeightAverage(accelerator.unwrap_model(model), decay=settings.ema_decay)
        if settings.ema_decay
        else None
    )
    best = _Best()
    result = TrialResult(best_epoch=-1, best_val={}, precision=precision)
    for epoch in range(settings.epochs):
        train_stats = _train_epoch(
            model,
            train_loader,
            optimizer,
            scheduler,
            loss_fn,
            accelerator,
            settings,
            epoch,
            average,
        )
        # With weight averaging on, the averaged weights are the ones evaluated and kept.
        with average.applied() if average else contextlib.nullcontext():
            val = _evaluate(model, val_batches, accelerator, loss_fn)
            if val[PRIMARY_METRIC] > best.score:
                best = _keep_best(accelerator.unwrap_model(model), val, epoch + 1, trial_dir)
        record = {
            "epoch": epoch + 1,
            "step": (epoch + 1) * len(train_loader),
            **train_stats,
            **{f"val_{k}": v for k, v in val.items()},
        }
        result.history.append(record)
        append_jsonl(trial_dir / "metrics.jsonl", record)
        console.print(
            f"epoch {epoch + 1}/{settings.epochs}: train loss {train_stats['train_loss']:.4f}, "
            f"val loss {val['loss']:.4f}, val {PRIMARY_METRIC} {val[PRIMARY_METRIC]:.4f}"
            + (" (best)" if best.epoch == epoch + 1 else "")
        )
        if reporter is not None:
            reporter.report(val[PRIMARY_METRIC], epoch + 1)
            if reporter.should_prune():
                break

    unwrapped = accelerator.unwrap_model(model)
    if best.state is not None:
        unwrapped.load_state_dict(best.state)
    result.best_epoch, result.best_val = best.epoch, best.metrics
    accelerator.free_memory()
    return result


def _train_epoch(
    model: torch.nn.Module,
    loader: DataLoader[Any],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: torch.nn.Module,
    accelerator: Accelerator,
    settings: TrainSettings,
    epoch: int,
    average: WeightAverage | None,
) -> dict[str, float]:
    model.train()
    set_epoch = getattr(loader.batch_sampler, "set_epoch", None)
    if callable(set_epoch):  # a new batch order each epoch, reproducible from the seed
        set_epoch(epoch)
    losses: list[float] = []
    seen = 0
    started = time.perf_counter()
    with progress() as bar:
        rows = len(loader.dataset)  # type: ignore[arg-type]
        task = bar.add_task(f"epoch {epoch + 1}/{settings.epochs}", total=rows, status="")
        for batch in loader:
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            targets = batch.pop("labels")
            with accelerator.autocast():
                loss = loss_fn(model(batch).float(), targets)
            accelerator.backward(loss)
            if settings.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if average is not None:
                average.update()
            losses.append(loss.item())
            seen += len(targets)
            bar.update(task, advance=len(targets), status=f"loss {np.mean(losses[-50:]):.4f}")
    elapsed = time.perf_counter() - started
    return {
        "train_loss": float(np.mean(losses)),
        "train_samples_per_s": seen / elapsed,
        "lr": float(scheduler.get_last_lr()[0]),
    }


def _evaluate(
    model: torch.nn.Module, batches: EvalBatches, accelerator: Accelerator, loss_fn: torch.nn.Module
) -> dict[str, float]:
    with progress() as bar:
        task = bar.add_task("validate", total=len(batches.order), status="")
        logits, targets = collect_logits(
            model,
            batches,
            device=accelerator.device,
            autocast=accelerator.autocast,
            on_batch=lambda n: bar.update(task, advance=n),
        )
    loss = float(loss_fn(torch.from_numpy(logits), torch.from_numpy(targets)))
    return {"loss": loss, **classification_metrics(logits, targets)}


def _keep_best(
    model: torch.nn.Module, metrics: dict[str, float], epoch: int, trial_dir: Path
) -> _Best:
    from safetensors.torch import save_model

    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    atomic_write(trial_dir / "best.safetensors", lambda tmp: save_model(model, str(tmp)))
    return _Best(metrics[PRIMARY_METRIC], epoch, copy.deepcopy(metrics), state)
