"""One training run: setup -> (train an epoch -> evaluate on val -> keep the best) x epochs.

The loop runs on Accelerate, so the same code serves one CPU, one GPU or many processes. It keeps
the weights that scored best on validation (never just the last), writes them atomically to the
trial folder, and logs one JSON line per epoch. A search talks to it only through `Reporter`.

A time budget fits the schedule to the time: after a few steps the loop knows how long a step
and an evaluation take, shortens the plan so that the run with its evaluations ends inside the
budget, and the learning-rate schedule decays to zero at the new last step (the last epoch may
then be a partial one).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from tunesmith.console import console, progress
from tunesmith.evaluate import collect_logits, objective_for
from tunesmith.io import append_jsonl, atomic_write
from tunesmith.models.inputs import EvalBatches
from tunesmith.models.losses import LossSettings, make_loss
from tunesmith.train.ema import WeightAverage
from tunesmith.train.optim import Plan, make_optimizer, make_scheduler, parameter_groups
from tunesmith.train.precision import default_device, resolve_precision

# A time budget re-fits the plan after these steps, from the step time measured so far.
REFIT_AT = frozenset({8, 32, 128, 512, 2048, 8192, 32768})
EVAL_COST = 1 / 3  # an example evaluated costs about a third of one trained (forward only)


@dataclass(frozen=True)
class TrainSettings:
    lr: float
    head_lr: float
    weight_decay: float
    epochs: int
    batch_size: int
    warmup: float
    grad_clip: float | None
    precision: str
    seed: int
    loss: LossSettings = field(default_factory=lambda: LossSettings("cross_entropy"))
    kind: str = "classification"  # what the labels are: classification, multilabel, regression
    optimizer: str = "adamw"
    momentum: float = 0.9
    schedule: str = "cosine"
    accumulate: int = 1  # batches whose gradients are summed into one optimizer step
    patience: int | None = None  # evaluations without a better score before stopping
    layer_decay: float = 1.0
    ema_decay: float | None = None
    time_budget: float | None = None  # seconds for this run, evaluations included
    stage: str = "train"  # the name logged with each epoch and given to the checkpoint

    def with_changes(self, **changes: Any) -> TrainSettings:
        return replace(self, **changes)


class Reporter(Protocol):
    """What a search sees of a run: the validation objective after each epoch."""

    def report(self, value: float, step: int) -> None: ...

    def should_prune(self) -> bool: ...


class EpochHook(Protocol):
    """Something done before each epoch (gradual unfreezing), by composition."""

    def __call__(self, epoch: int, epochs: int) -> None: ...


@dataclass
class TrialResult:
    best_epoch: int
    best_val: dict[str, float]
    precision: str
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    stopped: str | None = None  # "pruned" or "time budget" when the run ended early
    wall_s: float = 0.0

    @property
    def train_samples_per_s(self) -> float:
        rates = [epoch["train_samples_per_s"] for epoch in self.history]
        return float(np.mean(rates)) if rates else 0.0


@dataclass
class _Best:
    score: float | None = None
    epoch: int = -1
    metrics: dict[str, float] = field(default_factory=dict)
    state: dict[str, torch.Tensor] | None = None


@dataclass
class _Clock:
    """The time budget: when the run must end, and what training steps and evaluations cost."""

    deadline: float | None
    step_s: float = 0.0  # time of the steps timed so far (the run's first step is not)
    timed_steps: int = 0
    epoch_extra_s: float | None = None  # per epoch beyond its steps: evaluation, logging

    def left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.perf_counter()


def train_trial(
    model: torch.nn.Module,
    train_loader: DataLoader[Any],
    val_batches: EvalBatches,
    settings: TrainSettings,
    trial_dir: Path,
    *,
    reporter: Reporter | None = None,
    before_epoch: EpochHook | None = None,
) -> TrialResult:
    """Train `model` in place; on return it holds the best-on-validation weights."""
    started = time.perf_counter()
    set_seed(settings.seed)
    precision = resolve_precision(settings.precision, default_device())
    # Accelerate keeps its mixed-precision setting process-wide; each trial may choose its own.
    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no")
    groups = parameter_groups(
        model,  # type: ignore[arg-type]
        lr=settings.lr,
        head_lr=settings.head_lr,
        weight_decay=settings.weight_decay,
        layer_decay=settings.layer_decay,
    )
    optimizer = make_optimizer(settings.optimizer, groups, momentum=settings.momentum)
    steps_per_epoch = math.ceil(len(train_loader) / settings.accumulate)
    plan = Plan(settings.epochs * steps_per_epoch, settings.warmup)
    scheduler = make_scheduler(optimizer, plan, settings.schedule)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    loss_fn = make_loss(settings.loss).to(accelerator.device)
    objective = objective_for(settings.kind)
    clock = _Clock(None if settings.time_budget is None else started + settings.time_budget)

    average = (
        WeightAverage(accelerator.unwrap_model(model), decay=settings.ema_decay)
        if settings.ema_decay
        else None
    )
    best = _Best()
    result = TrialResult(best_epoch=-1, best_val={}, precision=precision)
    epoch = 0
    stale = 0  # evaluations since the best one
    while result.steps < plan.total_steps:
        epoch_started, step_s_before = time.perf_counter(), clock.step_s
        epochs = math.ceil(plan.total_steps / steps_per_epoch)
        if before_epoch is not None:
            before_epoch(epoch, epochs)
        train_stats = _train_epoch(
            model, train_loader, optimizer, scheduler, loss_fn, accelerator, settings, epoch,
            average, plan=plan, result=result, clock=clock, val_rows=len(val_batches.order),
        )
        epochs = math.ceil(plan.total_steps / steps_per_epoch)  # a time budget may cut it
        # With weight averaging on, the averaged weights are the ones evaluated and kept.
        with average.applied() if average else contextlib.nullcontext():
            val = _evaluate(
                model, val_batches, accelerator, loss_fn, settings.kind,
                quiet=epochs > MAX_EPOCH_LINES,
            )
            score = val[objective.metric]
            stale += 1
            if objective.better(score, best.score):
                stale = 0
                best = _keep_best(
                    accelerator.unwrap_model(model), val, objective.metric, epoch + 1,
                    trial_dir / _checkpoint_name(settings.stage),
                )
        record = {
            "stage": settings.stage,
            "epoch": epoch + 1,
            "step": result.steps,
            **train_stats,
            **{f"val_{k}": v for k, v in val.items()},
        }
        result.history.append(record)
        append_jsonl(trial_dir / "metrics.jsonl", record)
        if _shown(epoch, epochs):
            console.print(
                f"{settings.stage} epoch {epoch + 1}/{epochs}: "
                f"train loss {train_stats['train_loss']:.4f}, val loss {val['loss']:.4f}, "
                f"val {objective.metric} {score:.4f}"
                + (" (best)" if best.epoch == epoch + 1 else "")
            )
        epoch += 1
        extra = time.perf_counter() - epoch_started - (clock.step_s - step_s_before)
        clock.epoch_extra_s = max(extra, clock.epoch_extra_s or 0.0)  # the safe side
        if reporter is not None:
            reporter.report(score, result.steps)
            if reporter.should_prune():
                result.stopped = "pruned"
                break
        if clock.left() <= 0:
            result.stopped = "time budget"
            break
        if settings.patience is not None and stale >= settings.patience:
            result.stopped = "early stopping"
            console.print(
                f"{settings.stage}: no better val {objective.metric} in {stale} evaluations; "
                f"stopping (best epoch {best.epoch})"
            )
            break

    if result.stopped is None and plan.total_steps < plan.requested_steps:
        result.stopped = "time budget"  # the schedule was shortened to fit
    unwrapped = accelerator.unwrap_model(model)
    if best.state is not None:
        unwrapped.load_state_dict(best.state)
    result.best_epoch, result.best_val = best.epoch, best.metrics
    result.wall_s = time.perf_counter() - started
    accelerator.free_memory()
    return result


MAX_EPOCH_LINES = 20


def _shown(epoch: int, epochs: int) -> bool:
    """Every epoch's line for a short run; about MAX_EPOCH_LINES of a long one (a probe)."""
    every = max(1, math.ceil(epochs / MAX_EPOCH_LINES))
    return epochs <= MAX_EPOCH_LINES or (epoch + 1) % every == 0 or epoch + 1 == epochs


def _checkpoint_name(stage: str) -> str:
    return "best.safetensors" if stage == "train" else f"best-{stage}.safetensors"


def _micro_batches(
    loader: DataLoader[Any], accumulate: int, plan: Plan, result: TrialResult
) -> Iterator[tuple[Any, int, bool]]:
    """(batch, batches in its optimizer step, whether it ends that step), until the plan's last
    step. An epoch's last step may sum fewer batches than `accumulate`."""
    batches = len(loader)
    for index, batch in enumerate(loader):
        if result.steps >= plan.total_steps:
            return
        group_start = index - index % accumulate
        in_group = min(accumulate, batches - group_start)
        yield batch, in_group, index - group_start == in_group - 1


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
    *,
    plan: Plan,
    result: TrialResult,
    clock: _Clock,
    val_rows: int,
) -> dict[str, float]:
    model.train()
    set_epoch = getattr(loader.batch_sampler, "set_epoch", None)
    if callable(set_epoch):  # a new batch order each epoch, reproducible from the seed
        set_epoch(epoch)
    losses: list[float] = []
    seen = 0
    started = time.perf_counter()
    epochs = math.ceil(plan.total_steps / math.ceil(len(loader) / settings.accumulate))
    with progress(quiet=epochs > MAX_EPOCH_LINES) as bar:
        rows = len(loader.dataset)  # type: ignore[arg-type]
        task = bar.add_task(f"{settings.stage} epoch {epoch + 1}", total=rows, status="")
        mark = time.perf_counter()
        for batch, in_group, ends_step in _micro_batches(loader, settings.accumulate, plan, result):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            targets = batch.pop("labels")
            # Between a step's batches, processes need not average gradients (DDP's no_sync).
            with contextlib.nullcontext() if ends_step else accelerator.no_sync(model):
                with accelerator.autocast():
                    loss = loss_fn(model(batch).float(), targets)
                accelerator.backward(loss / in_group)
            losses.append(loss.item())
            seen += len(targets)
            bar.update(task, advance=len(targets), status=f"loss {np.mean(losses[-50:]):.4f}")
            if not ends_step:
                continue
            if settings.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if average is not None:
                average.update()
            result.steps += 1
            now = time.perf_counter()
            if result.steps > 1:  # the first step picks kernels: slower than the rest
                clock.step_s += now - mark
                clock.timed_steps += 1
            mark = now
            if clock.deadline is not None:
                _fit_plan(plan, clock, result.steps, batch_size=len(targets) * in_group,
                          steps_per_epoch=math.ceil(len(loader) / settings.accumulate),
                          val_rows=val_rows)
    elapsed = time.perf_counter() - started
    return {
        "train_loss": float(np.mean(losses)) if losses else float("nan"),
        "train_samples_per_s": seen / elapsed if elapsed > 0 else 0.0,
        "lr": float(scheduler.get_last_lr()[0]),
    }


def _fit_plan(
    plan: Plan, clock: _Clock, steps: int, *, batch_size: int, steps_per_epoch: int,
    val_rows: int,
) -> None:
    """Fit the plan to the time left: as many of the requested steps as fit, with the
    evaluation after each epoch (and after the last step) counted in.

    Re-fitted after the steps in REFIT_AT, from the mean step time so far and the longest time
    an epoch took beyond its steps (evaluating, logging; estimated from the step time before the
    first epoch ends); between those points only a step past the deadline ends the run early.
    """
    if clock.left() <= 0:
        plan.total_steps = steps  # out of time: this step is the last
        return
    if steps not in REFIT_AT or not clock.timed_steps:
        return
    step_s = clock.step_s / clock.timed_steps
    eval_s = clock.epoch_extra_s
    if eval_s is None:
        eval_s = step_s / max(1, batch_size) * val_rows * EVAL_COST
    left = clock.left()

    def cost(total: int) -> float:
        evaluations = math.ceil(total / steps_per_epoch) - (steps - 1) // steps_per_epoch
        return (total - steps) * step_s + evaluations * eval_s

    low, high = steps, plan.requested_steps  # the most steps whose cost fits: bisection
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if cost(middle) <= left else (low, middle - 1)
    if low != plan.total_steps:
        if low < plan.requested_steps:
            console.print(
                f"[yellow]time budget: {low} of {plan.requested_steps} steps fit "
                f"({step_s:.3f} s a step); the schedule ends inside it[/]"
            )
        plan.total_steps = low


def _evaluate(
    model: torch.nn.Module,
    batches: EvalBatches,
    accelerator: Accelerator,
    loss_fn: torch.nn.Module,
    kind: str,
    *,
    quiet: bool = False,
) -> dict[str, float]:
    with progress(quiet=quiet) as bar:
        task = bar.add_task("validate", total=len(batches.order), status="")
        outputs, targets = collect_logits(
            model,
            batches,
            device=accelerator.device,
            autocast=accelerator.autocast,
            on_batch=lambda n: bar.update(task, advance=n),
        )
    with torch.no_grad():
        loss = float(
            loss_fn(torch.from_numpy(outputs).to(accelerator.device),
                    torch.from_numpy(targets).to(accelerator.device))
        )
    return {"loss": loss, **objective_for(kind).score(outputs, targets)}


def _keep_best(
    model: torch.nn.Module, metrics: dict[str, float], metric: str, epoch: int, path: Path
) -> _Best:
    from safetensors.torch import save_model

    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_model(model, str(tmp)))
    return _Best(metrics[metric], epoch, copy.deepcopy(metrics), state)
