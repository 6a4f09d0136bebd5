"""A time budget fits the schedule to the time.

After a few steps the loop knows how long a step and an epoch's evaluation take; the plan is
shortened so that the run with its evaluations ends inside the budget, and the learning-rate
schedule (which reads the plan at every step) decays to zero at the new last step, the last
epoch then possibly a partial one. A resumed run continues with what is left of its budget.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
from torch.utils.data import DataLoader

from tunesmith.console import console
from tunesmith.models.heads import full_precision
from tunesmith.models.losses import LossSettings, make_loss
from tunesmith.train.optim import Plan
from tunesmith.train.precision import autocast_for, default_device, resolve_precision

# The plan is re-fitted after these steps, from the step time measured so far.
REFIT_AT = frozenset({8, 32, 128, 512, 2048, 8192, 32768})
EVAL_COST = 1 / 3  # an example evaluated costs about a third of one trained (forward only)


@dataclass
class Clock:
    """When the run must end, and what training steps and evaluations cost."""

    deadline: float | None
    step_s: float = 0.0  # time of the steps timed so far (the run's first step is not)
    timed_steps: int = 0
    epoch_extra_s: float | None = None  # per epoch beyond its steps: evaluation, logging

    @classmethod
    def start(cls, budget: float | None, *, spent: float = 0.0) -> Clock:
        return cls(None if budget is None else time.perf_counter() + budget - spent)

    def left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.perf_counter()

    def time_step(self, seconds: float) -> None:
        self.step_s += seconds
        self.timed_steps += 1


def fit_plan(
    plan: Plan, clock: Clock, steps: int, *, batch_size: int, steps_per_epoch: int, val_rows: int
) -> None:
    """Fit the plan to the time left: as many of the requested steps as fit, with the
    evaluation after each epoch (and after the last step) counted in.

    Re-fitted after the steps in REFIT_AT, from the mean step time so far and the longest time
    an epoch took beyond its steps (evaluating, logging; estimated from the step time before the
    first epoch ends); between those points only a step past the deadline ends the run early.
    """
    if clock.deadline is None:
        return
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


TIMED_STEPS = 3  # batches timed (after one untimed) to estimate what a step costs


def measure_step_s(
    model: torch.nn.Module, loader: DataLoader[Any], *, precision: str, loss: LossSettings,
    steps: int = TIMED_STEPS,
) -> float:
    """Seconds a training step of `model` takes on `loader`'s batches (loading included): the
    forward and backward passes of `steps` batches after one untimed one, which picks kernels.
    The optimizer's update is left out (a small share of a step) and the weights stay as they
    were; the gradients are cleared."""
    device = default_device()
    model.to(device).train()
    autocast = autocast_for(resolve_precision(precision, device), device)
    loss_fn = make_loss(loss).to(device)
    timed, started = 0, time.perf_counter()
    for index, batch in enumerate(islice(iter(loader), steps + 1)):
        if index == 1:
            timed, started = 0, time.perf_counter()
        batch = {k: v.to(device) for k, v in batch.items()}
        targets = batch.pop("labels")
        with autocast():
            value = loss_fn(full_precision(model(batch)), targets)
        value.backward()
        float(value.detach())  # waits for the device
        timed += index > 0
    model.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - started
    return elapsed / timed if timed else elapsed
