"""One training run: setup -> (train an epoch -> evaluate on val -> keep the best) x epochs.

The loop runs on Accelerate, so the same code serves one CPU, one GPU or many processes. It keeps
the weights that scored best on validation (never just the last), writes them atomically to the
trial folder, logs every step and evaluation (`tunesmith.train.logs`), and writes checkpoints a
killed run resumes from exactly: same weights, optimizer, schedule, random states and place in
the data order (`tunesmith.train.checkpoint`). A search talks to it only through `Reporter`; a
time budget fits the schedule into the time (`tunesmith.train.budget`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import accelerate.accelerator
import accelerate.optimizer
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list, set_seed
from torch.utils.data import DataLoader

from tunesmith.console import console, progress
from tunesmith.errors import TunesmithError
from tunesmith.evaluate import Objective, collect_logits, objective_for
from tunesmith.io import atomic_write, writing
from tunesmith.models.heads import full_precision
from tunesmith.models.inputs import EvalBatches
from tunesmith.models.losses import LossSettings, make_loss
from tunesmith.models.task_model import HEAD_BLOCK
from tunesmith.train import checkpoint as ckpt
from tunesmith.train.batch_norm import recalibrate_norms, unfrozen_norms
from tunesmith.train.budget import Clock, fit_plan
from tunesmith.train.ema import WeightAverage
from tunesmith.train.heap import frozen_heap
from tunesmith.train.logs import RunLog, truncate_log
from tunesmith.train.optim import Plan, make_optimizer, make_scheduler, parameter_groups
from tunesmith.train.precision import default_device, resolve_precision

CHECKPOINT_EVERY_S = 300.0  # a resumable checkpoint at least this often, mid-epoch if need be
# ... and at the end of an epoch once this long has passed since the last one (and at the last
# epoch): a table's epoch can take 20 ms, and a checkpoint after each would cost more than it.
EPOCH_CHECKPOINT_GAP_S = 20.0
MAX_EPOCH_LINES = 20


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
    # Batch-norm statistics measured again before each evaluation on this many training rows (a
    # network from random weights: see train/batch_norm.py); 0 keeps the running ones.
    precise_bn_rows: int = 0
    time_budget: float | None = None  # seconds for this run, evaluations included
    checkpoint_steps: int | None = None  # a checkpoint every this many steps (and every epoch)
    log_to: str = "none"  # or "tensorboard"
    stage: str = "train"  # the name logged with each epoch and given to the checkpoint
    workers: int = 0  # DataLoader worker processes for images
    compile: bool = False  # torch.compile the model before training

    def with_changes(self, **changes: Any) -> TrainSettings:
        return replace(self, **changes)


def _ask_lomo_once() -> None:
    """Accelerate asks importlib whether `lomo_optim` is installed at every optimizer step and
    backward pass: a search of every folder on `sys.path`, about 0.3 ms each time, a tenth of a
    small table's whole step. The answer cannot change while a run runs, so it is asked once."""
    for module in (accelerate.accelerator, accelerate.optimizer):
        probe = getattr(module, "is_lomo_available", None)
        if probe is not None and not hasattr(probe, "cache_info"):
            module.is_lomo_available = functools.cache(probe)


_ask_lomo_once()


class Reporter(Protocol):
    """What a search sees of a run: the validation objective after each epoch."""

    def report(self, value: float, step: int) -> None: ...

    def should_prune(self) -> bool: ...


class EpochHook(Protocol):
    """Something done before each epoch (gradual unfreezing), by composition."""

    def __call__(self, epoch: int, epochs: int) -> None: ...


class Diverged(ValueError):
    """The run's validation loss was not finite before any evaluation was: the weights blew up
    (too high a learning rate). A `ValueError`, so a search fails the trial and goes on; a
    single run says it as the config error it is (`field`: the rate of the stage)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class TrialResult:
    best_epoch: int
    best_val: dict[str, float]
    precision: str
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    stopped: str | None = None  # "pruned", "time budget", "early stopping" or "diverged"
    wall_s: float = 0.0
    resumed_from: int | None = None  # the checkpoint's step, for a resumed run

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
class _Epoch:
    """Where the run is inside the current epoch (a checkpoint may fall in the middle)."""

    index: int = 0
    batches: int = 0  # micro-batches done
    loss_sum: float = 0.0
    seen: int = 0


@dataclass
class _Run:
    """Everything one training run holds while it runs; a checkpoint saves it, a resume
    restores it."""

    settings: TrainSettings
    trial_dir: Path
    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: torch.nn.Module
    objective: Objective
    plan: Plan
    clock: Clock
    log: RunLog
    average: WeightAverage | None
    steps_per_epoch: int
    statistics: EvalBatches | None  # the rows batch norms measure again before each evaluation
    started: float
    best: _Best = field(default_factory=_Best)
    result: TrialResult = field(default_factory=lambda: TrialResult(-1, {}, "fp32"))
    epoch: _Epoch = field(default_factory=_Epoch)
    stale: int = 0  # evaluations since the best one
    spent_before: float = 0.0  # training time of the run before it was resumed
    last_checkpoint: float = 0.0

    @property
    def epochs(self) -> int:
        return math.ceil(self.plan.total_steps / self.steps_per_epoch)


def train_trial(
    model: torch.nn.Module,
    train_loader: DataLoader[Any],
    val_batches: EvalBatches,
    settings: TrainSettings,
    trial_dir: Path,
    *,
    reporter: Reporter | None = None,
    before_epoch: EpochHook | None = None,
    resume: ckpt.Checkpoint | None = None,
    statistics: EvalBatches | None = None,
) -> TrialResult:
    """Train `model` in place; on return it holds the best-on-validation weights. With
    `statistics` (training rows without augmentation), the batch norms that train measure their
    statistics on them again before each evaluation."""
    with frozen_heap():
        run = _setup(model, train_loader, settings, trial_dir, before_epoch, statistics)
        train_loader = run.accelerator.prepare_data_loader(train_loader)
        if resume is not None:
            _restore(run, resume, train_loader)
        try:
            with _memory_hint(settings), _threads_for(model, settings.batch_size):
                _epochs(run, train_loader, val_batches, reporter, before_epoch)
        finally:
            run.log.close()
            # Accelerate's mixed precision patches the model's own forward with autocast: left
            # on, the model went on predicting in bf16 after training, where fp32 was asked (the
            # final scores, against the fp32 bundle), 1e-4 apart on a tiny BERT's logits.
            run.accelerator.unwrap_model(run.model, keep_fp32_wrapper=False,
                                         keep_torch_compile=False)
        return _finish(run)


def _epochs(
    run: _Run,
    train_loader: DataLoader[Any],
    val_batches: EvalBatches,
    reporter: Reporter | None,
    before_epoch: EpochHook | None,
) -> None:
    # A run restored from the checkpoint of its last evaluation may have stopped there already
    # (early stopping, the time budget): it ends where it would have ended unbroken.
    while run.result.stopped is None and run.result.steps < run.plan.total_steps:
        if before_epoch is not None:
            before_epoch(run.epoch.index, run.epochs)
        epoch_started, step_s = time.perf_counter(), run.clock.step_s
        stats = _train_epoch(run, train_loader, len(val_batches.order))
        val = _validate(run, val_batches)
        _end_epoch(run, stats, val)
        extra = time.perf_counter() - epoch_started - (run.clock.step_s - step_s)
        run.clock.epoch_extra_s = max(extra, run.clock.epoch_extra_s or 0.0)  # safe side
        stop = _should_stop(run, val, reporter)
        if stop or run.result.steps >= run.plan.total_steps or _epoch_checkpoint_due(run):
            _checkpoint(run)
        if stop:
            break


OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "not enough memory")


# Below this many FLOPs a training step (6 x parameters x batch), one CPU thread trains faster
# than two: the threads' hand-offs cost more than the products they share. A table's MLP of width
# 64 at batch 32 (1 MFLOP) trained at 24,000 samples/s on one thread against 17,500 on two, and
# many times slower on two when other work held a core; width 512 at batch 32 (54 MFLOP) took
# 1.4 ms a step on one against 2.1 on two, and 4 layers of 256 at batch 128 (160 MFLOP) 3.5 ms
# against 2.1. A GPU trains on its own threads either way.
ONE_THREAD_FLOPS = 1e8


@contextlib.contextmanager
def _threads_for(model: torch.nn.Module, batch_size: int) -> Iterator[None]:
    """One intra-op thread while a small network trains on the CPU (see ONE_THREAD_FLOPS)."""
    flops = 6 * sum(p.numel() for p in model.parameters()) * batch_size
    before = torch.get_num_threads()
    if flops >= ONE_THREAD_FLOPS or before == 1 or torch.cuda.is_available():
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _memory_hint(settings: TrainSettings) -> Iterator[None]:
    """A batch that does not fit in memory, as the config error it is."""
    try:
        yield
    except (RuntimeError, MemoryError) as error:  # torch.OutOfMemoryError is a RuntimeError
        text = str(error).lower()
        if not isinstance(error, MemoryError) and not any(s in text for s in OUT_OF_MEMORY):
            raise
        raise TunesmithError(
            f"a batch of {settings.batch_size} does not fit in memory: "
            f"{str(error).splitlines()[0][:200]}",
            field="train.batch_size",
            fix=f"lower train.batch_size (e.g. {max(1, settings.batch_size // 2)}) and raise "
            f"train.accumulate (e.g. {settings.accumulate * 2}) to keep the effective batch",
        ) from None


# ----------------------------------------------------------------------------------------------
# setup and resume


def make_accelerator(precision: str, *, compile: bool = False) -> Accelerator:
    """One process, or one of many launched by `accelerate launch` / torchrun (gloo on CPUs, NCCL
    on GPUs). Batches are split across processes, so the global batch is `batch_size` however
    many there are and a run matches its single-process twin. With `compile`, `prepare` wraps
    the model in `torch.compile` (inductor), after the data-parallel wrapper."""
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=precision if precision in ("bf16", "fp16") else "no",
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        dynamo_backend="inductor" if compile else "no",
    )


def _plain(run: _Run) -> torch.nn.Module:
    """The model itself, without the data-parallel and compiled wrappers: what is evaluated,
    averaged and saved (its parameter names are the model's own)."""
    model: torch.nn.Module = run.accelerator.unwrap_model(run.model, keep_torch_compile=False)
    return model


def _setup(
    model: torch.nn.Module,
    loader: DataLoader[Any],
    settings: TrainSettings,
    trial_dir: Path,
    before_epoch: EpochHook | None = None,
    statistics: EvalBatches | None = None,
) -> _Run:
    started = time.perf_counter()
    set_seed(settings.seed)
    precision = resolve_precision(settings.precision, default_device())
    # Accelerate keeps its mixed-precision setting process-wide; each trial may choose its own.
    AcceleratorState._reset_state()
    accelerator = make_accelerator(precision, compile=settings.compile)
    groups = parameter_groups(
        model,  # type: ignore[arg-type]
        lr=settings.lr,
        head_lr=settings.head_lr,
        weight_decay=settings.weight_decay,
        layer_decay=settings.layer_decay,
    )
    optimizer = make_optimizer(settings.optimizer, groups, momentum=settings.momentum)
    steps_per_epoch = math.ceil(len(loader) / settings.accumulate)
    plan = Plan(settings.epochs * steps_per_epoch, settings.warmup)
    scheduler = make_scheduler(optimizer, plan, settings.schedule)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if accelerator.num_processes > 1 and before_epoch is not None:
        raise TunesmithError(
            "gradual-unfreeze changes which weights train between epochs, which data-parallel "
            "training across processes does not follow",
            field="model.strategy",
            fix="run gradual-unfreeze in one process, or use full, freeze:K, lp-ft or an adapter",
        )
    average = None
    plain = accelerator.unwrap_model(model, keep_torch_compile=False)
    if settings.ema_decay:
        # Frozen weights are their own average, unless an epoch hook unfreezes them later.
        fixed = frozenset() if before_epoch is not None else frozenset(
            name for name, parameter in plain.named_parameters() if not parameter.requires_grad
        )
        average = WeightAverage(plain, decay=settings.ema_decay, skip=fixed)
    run = _Run(
        settings=settings,
        trial_dir=trial_dir,
        accelerator=accelerator,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        loss_fn=make_loss(settings.loss).to(accelerator.device),
        objective=objective_for(settings.kind),
        plan=plan,
        clock=Clock.start(settings.time_budget),
        log=RunLog(
            trial_dir,
            tensorboard=settings.log_to == "tensorboard",
            enabled=accelerator.is_main_process,
        ),
        average=average,
        steps_per_epoch=steps_per_epoch,
        statistics=statistics if unfrozen_norms(plain) else None,
        started=started,
        last_checkpoint=started,
    )
    run.result.precision = precision
    return run


def _restore(run: _Run, checkpoint: ckpt.Checkpoint, loader: DataLoader[Any]) -> None:
    """Put the run back where the checkpoint left it."""
    state, tensors = checkpoint.state, checkpoint.tensors
    if state["stage"] != run.settings.stage:
        raise ValueError(f"a {state['stage']} checkpoint cannot resume the {run.settings.stage}")
    if run.accelerator.is_main_process:
        truncate_log(run.trial_dir, int(state["log_offset"]))
    model = _plain(run)
    model.load_state_dict(
        {key.removeprefix("model."): value for key, value in tensors.items()
         if key.startswith("model.")}
    )
    try:
        ckpt.load_optimizer_state(run.optimizer, state["optimizer"], tensors)
    except ValueError as error:  # parameter groups cut otherwise (an older tunesmith's blocks)
        raise TunesmithError(
            f"the checkpoint's optimizer state does not fit this model's parameter groups "
            f"({error})", file=checkpoint.folder, field="--resume",
            fix="run without --resume to train this trial afresh") from error
    if run.accelerator.scaler is not None and state.get("scaler"):
        run.accelerator.scaler.load_state_dict(state["scaler"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.average is not None:
        run.average.load({k: v for k, v in tensors.items() if k.startswith("ema.")},
                         updates=int(state["ema_updates"]))
    run.plan.total_steps, run.plan.requested_steps = state["plan"]
    run.spent_before = float(state["spent_s"])
    run.clock = Clock.start(state["time_budget"], spent=run.spent_before)
    best = state["best"]
    weights = checkpoint.best_weights()
    run.best = _Best(best["score"], best["epoch"], best["metrics"], weights)
    run.stale = int(state["stale"])
    run.result.stopped = state.get("stopped")  # absent from checkpoints before it was kept
    run.result.steps = checkpoint.step
    run.result.history = list(state["history"])
    run.result.resumed_from = checkpoint.step
    run.epoch = _Epoch(**state["epoch"])
    _order(loader).skip(run.epoch.batches)
    ckpt.restore_rng(state["rng"], tensors)
    console.print(
        f"{run.settings.stage}: resumed from {checkpoint.folder} (step {checkpoint.step}, epoch "
        f"{run.epoch.index + 1}, {run.epoch.batches} batches in)"
    )


def _order(loader: DataLoader[Any], *, required: bool = True) -> Any:
    """The loader's batch order: resumable (set_epoch, skip) when built by tunesmith; found
    inside the shard Accelerate wraps it in across processes. A plain loader has none: it trains
    but cannot resume mid-epoch."""
    order: Any = loader.batch_sampler
    while order is not None and not hasattr(order, "skip"):
        order = getattr(order, "batch_sampler", None)
    if order is None and required:
        raise ValueError("the training loader's batch order cannot resume mid-epoch")
    return order


# ----------------------------------------------------------------------------------------------
# one epoch


def _micro_batches(run: _Run, loader: DataLoader[Any]) -> Iterator[tuple[Any, int, bool]]:
    """(batch, batches in its optimizer step, whether it ends that step), until the plan's last
    step. An epoch's last step may sum fewer batches than `accumulate`."""
    accumulate, batches = run.settings.accumulate, len(loader)
    for index, batch in enumerate(loader, start=run.epoch.batches):
        if run.result.steps >= run.plan.total_steps:
            return
        group_start = index - index % accumulate
        in_group = min(accumulate, batches - group_start)
        yield batch, in_group, index - group_start == in_group - 1


def _train_epoch(run: _Run, loader: DataLoader[Any], val_rows: int) -> dict[str, float]:
    settings, accelerator, model = run.settings, run.accelerator, run.model
    model.train()
    # Each epoch its own order, from the seed. Accelerate's loader counts its passes and sets that
    # count as the epoch at every pass: told the epoch too, a resumed run's first pass is right.
    if callable(getattr(loader, "set_epoch", None)):
        loader.set_epoch(run.epoch.index)  # type: ignore[attr-defined]
    order = _order(loader, required=False)
    if order is not None:
        order.set_epoch(run.epoch.index)
    started = time.perf_counter()
    seen_before = run.epoch.seen
    step_lr = shown_lr(run.optimizer)  # an epoch without a whole step (a resumed last one)
    with progress(quiet=run.epochs > MAX_EPOCH_LINES) as bar:
        rows = len(loader.dataset)  # type: ignore[arg-type]
        task = bar.add_task(
            f"{settings.stage} epoch {run.epoch.index + 1}", total=rows,
            completed=min(rows, run.epoch.seen), status="",
        )
        mark = time.perf_counter()
        step_loss = 0.0  # the mean of the step's batch losses (its batches weigh alike)
        for batch, in_group, ends_step in _micro_batches(run, loader):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            targets = batch.pop("labels")
            # Between a step's batches, processes need not average gradients (DDP's no_sync).
            with contextlib.nullcontext() if ends_step else accelerator.no_sync(model):
                with accelerator.autocast():
                    loss = run.loss_fn(full_precision(model(batch)), targets)
                accelerator.backward(loss / in_group)
            run.epoch.batches += 1
            value = loss.detach()
            if accelerator.num_processes > 1:  # the loss of the whole batch, not this share
                value = accelerator.reduce(value, reduction="mean")
            batch_loss = float(value.item())  # one device sync a batch
            run.epoch.loss_sum += batch_loss
            step_loss += batch_loss / in_group
            run.epoch.seen += len(targets)
            bar.update(task, advance=len(targets),
                       status=f"loss {run.epoch.loss_sum / run.epoch.batches:.4f}")
            if not ends_step:
                continue
            step_lr = _optimizer_step(run)
            now = time.perf_counter()
            if run.result.steps > 1:  # the first step picks kernels: slower than the rest
                run.clock.time_step(now - mark)
            mark = now
            run.log.step({"stage": settings.stage, "step": run.result.steps,
                          "epoch": run.epoch.index + 1, "loss": step_loss, "lr": step_lr})
            step_loss = 0.0
            fit_plan(run.plan, run.clock, run.result.steps, batch_size=len(targets) * in_group,
                     steps_per_epoch=run.steps_per_epoch,
                     # an evaluation first passes the rows batch norms measure again
                     val_rows=val_rows + (len(run.statistics.order) if run.statistics else 0))
            if accelerator.num_processes > 1 and run.clock.deadline is not None:
                # Each process keeps its own time; all follow the main one's plan.
                run.plan.total_steps = broadcast_object_list([run.plan.total_steps])[0]
            if _checkpoint_due(run):
                _checkpoint(run)
    elapsed = time.perf_counter() - started
    return {
        "train_loss": run.epoch.loss_sum / run.epoch.batches if run.epoch.batches else math.nan,
        "train_samples_per_s": (run.epoch.seen - seen_before) / elapsed if elapsed > 0 else 0.0,
        "lr": step_lr,
    }


def shown_lr(optimizer: torch.optim.Optimizer) -> float:
    """The rate `train.lr` names, as the schedule has it now: the top backbone block's (lower
    blocks train at less under layer decay; the head at `head_lr`), or the head's when the
    backbone does not train."""
    groups = optimizer.param_groups
    body = [group for group in groups if group.get("block") != HEAD_BLOCK]
    return float((body or groups)[-1]["lr"])


def _optimizer_step(run: _Run) -> float:
    """One update; the rate it used (`shown_lr`), before the schedule moves on."""
    if run.settings.grad_clip:
        run.accelerator.clip_grad_norm_(run.model.parameters(), run.settings.grad_clip)
    used = shown_lr(run.optimizer)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.average is not None:
        run.average.update()
    run.result.steps += 1
    return used


# ----------------------------------------------------------------------------------------------
# evaluation, best weights, logging, stopping


def _validate(run: _Run, batches: EvalBatches) -> dict[str, float]:
    """The validation metrics, of the averaged weights when a weight average is kept."""
    with run.average.applied() if run.average else contextlib.nullcontext():
        if (statistics := run.statistics) is not None:  # measured under the weights evaluated
            model = _plain(run)
            recalibrate_norms(model, lambda: statistics.loader, layers=unfrozen_norms(model),
                              autocast=run.accelerator.autocast)
        val = _evaluate(run, batches)
        if _improves(run.objective, val, run.best):
            run.best = _keep_best(run, val)
            run.stale = 0
        else:
            run.stale += 1
    return val


# A tie in the objective is broken by a validation loss lower by more than this fraction (less
# is the noise of a run that has stopped learning, and would hold off early stopping for ever).
LOSS_TIE_BREAK = 1e-3


def _improves(objective: Objective, val: dict[str, float], best: _Best) -> bool:
    """A better validation objective, or the same one at a lower validation loss. On a few
    dozen rows accuracy moves a row at a time and ties for many epochs while the loss still
    falls (breast cancer's 46 validation rows: 0.978 from epoch 7 to 27 as the loss went from
    0.096 to 0.059); the first of the tied epochs is the least trained of them (the recipe
    alone scored 0.912 on test from epoch 7, 0.965 from epoch 26)."""
    score = val[objective.metric]
    if not math.isfinite(val["loss"]):  # outputs of weights that blew up: scored by chance
        return False
    if objective.better(score, best.score):
        return True
    lowest = best.metrics.get("loss", math.inf)
    return score == best.score and val["loss"] < lowest * (1 - LOSS_TIE_BREAK)


def _evaluate(run: _Run, batches: EvalBatches) -> dict[str, float]:
    device = run.accelerator.device
    with progress(quiet=run.epochs > MAX_EPOCH_LINES) as bar:
        task = bar.add_task("validate", total=len(batches.order), status="")
        # Every process scores every row with the plain module: the same score everywhere.
        outputs, targets = collect_logits(
            _plain(run), batches, device=device,
            autocast=run.accelerator.autocast, on_batch=lambda n: bar.update(task, advance=n),
        )
    with torch.no_grad():
        loss = float(
            run.loss_fn(torch.from_numpy(outputs).to(device), torch.from_numpy(targets).to(device))
        )
    return {"loss": loss, **run.objective.score(outputs, targets)}


def best_weights_name(stage: str) -> str:
    return "best.safetensors" if stage == "train" else f"best-{stage}.safetensors"


def _keep_best(run: _Run, metrics: dict[str, float]) -> _Best:
    from safetensors.torch import save_model

    model = _plain(run)
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    if run.accelerator.is_main_process:
        path = run.trial_dir / best_weights_name(run.settings.stage)
        with writing(path):
            atomic_write(path, lambda tmp: save_model(model, str(tmp)))
    return _Best(metrics[run.objective.metric], run.epoch.index + 1, copy.deepcopy(metrics), state)


def _end_epoch(run: _Run, stats: dict[str, float], val: dict[str, float]) -> None:
    record = {
        "event": "epoch",
        "stage": run.settings.stage,
        "epoch": run.epoch.index + 1,
        "step": run.result.steps,
        **stats,
        **{f"val_{k}": v for k, v in val.items()},
    }
    run.result.history.append(record)
    run.log.epoch(record)
    epoch, epochs = run.epoch.index, run.epochs
    every = max(1, math.ceil(epochs / MAX_EPOCH_LINES))
    if epochs <= MAX_EPOCH_LINES or (epoch + 1) % every == 0 or epoch + 1 == epochs:
        console.print(
            f"{run.settings.stage} epoch {epoch + 1}/{epochs}: "
            f"train loss {stats['train_loss']:.4f}, val loss {val['loss']:.4f}, "
            f"val {run.objective.metric} {val[run.objective.metric]:.4f}"
            + (" (best)" if run.best.epoch == epoch + 1 else "")
        )
    run.epoch = _Epoch(index=epoch + 1)


def _should_stop(run: _Run, val: dict[str, float], reporter: Reporter | None) -> bool:
    """Whether the run ends after this evaluation; across processes, as the main one says."""
    stop = _stop_reason(run, val, reporter)
    if run.accelerator.num_processes > 1:
        stop = broadcast_object_list([stop])[0]
    run.result.stopped = stop or run.result.stopped
    return stop is not None


def _stop_reason(run: _Run, val: dict[str, float], reporter: Reporter | None) -> str | None:
    if not math.isfinite(val["loss"]):
        console.print(
            f"[yellow]{run.settings.stage}: the validation loss is {val['loss']}: training "
            "diverged[/]; stopping"
            + (f" (best epoch {run.best.epoch})" if run.best.state is not None else ""))
        return "diverged"
    if reporter is not None:
        reporter.report(val[run.objective.metric], run.result.steps)
        if reporter.should_prune():
            return "pruned"
    if run.clock.left() <= 0:
        return "time budget"
    patience = run.settings.patience
    if patience is not None and run.stale >= patience:
        console.print(
            f"{run.settings.stage}: no better val {run.objective.metric} in {run.stale} "
            f"evaluations; stopping (best epoch {run.best.epoch})"
        )
        return "early stopping"
    return None


def _finish(run: _Run) -> TrialResult:
    result = run.result
    if result.stopped is None and run.plan.total_steps < run.plan.requested_steps:
        result.stopped = "time budget"  # the schedule was shortened to fit
    if run.best.state is not None:
        _plain(run).load_state_dict(run.best.state)
    result.best_epoch, result.best_val = run.best.epoch, run.best.metrics
    result.wall_s = run.spent_before + time.perf_counter() - run.started
    run.accelerator.free_memory()
    if run.best.state is None and result.stopped == "diverged":
        probe = run.settings.stage == "probe"
        raise Diverged(f"training diverged: the validation loss was not finite from epoch 1 on "
                       f"(learning rate {run.settings.lr:g})",
                       "train.probe_lr" if probe else "train.lr")
    return result


# ----------------------------------------------------------------------------------------------
# checkpoints


def _checkpoint_due(run: _Run) -> bool:
    every = run.settings.checkpoint_steps
    if every is not None:
        return run.result.steps % every == 0
    return time.perf_counter() - run.last_checkpoint >= CHECKPOINT_EVERY_S


def _epoch_checkpoint_due(run: _Run) -> bool:
    if run.settings.checkpoint_steps is not None:
        return True  # asked for by steps: every epoch's end too
    return time.perf_counter() - run.last_checkpoint >= EPOCH_CHECKPOINT_GAP_S


def _checkpoint(run: _Run) -> None:
    """Save everything the run needs to continue from this step (main process only)."""
    run.last_checkpoint = time.perf_counter()
    if not run.accelerator.is_main_process:
        return
    model = _plain(run)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    optimizer_plain, optimizer_tensors = ckpt.optimizer_state(run.optimizer)
    tensors.update(optimizer_tensors)
    rng_plain, rng_tensors = ckpt.rng_state()
    tensors.update(rng_tensors)
    if run.average is not None:
        tensors.update({f"ema.{i}": t for i, t in enumerate(run.average.shadow)})
    state = {
        "stage": run.settings.stage,
        "epoch": run.epoch.__dict__,
        "plan": [run.plan.total_steps, run.plan.requested_steps],
        "optimizer": optimizer_plain,
        "scheduler": ckpt.scheduler_state(run.scheduler),
        "scaler": run.accelerator.scaler.state_dict() if run.accelerator.scaler else None,
        "ema_updates": run.average.updates if run.average else 0,
        "rng": rng_plain,
        "best": {"score": run.best.score, "epoch": run.best.epoch, "metrics": run.best.metrics},
        "stale": run.stale,
        "stopped": run.result.stopped,
        "history": run.result.history,
        "spent_s": run.spent_before + time.perf_counter() - run.started,
        "time_budget": run.settings.time_budget,
        "log_offset": run.log.flush(),
    }
    best = run.trial_dir / best_weights_name(run.settings.stage)
    ckpt.save_checkpoint(run.trial_dir, run.result.steps, state, tensors,
                         best=best if run.best.state is not None else None)
