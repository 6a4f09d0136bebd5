"""The learning-rate range test (Smith 2015; fastai's lr_find): which learning rate to train at.

Training steps run with the learning rate rising exponentially from `start` to `end`, the loss
smoothed by an exponential average (bias-corrected, as fastai does), until the loss grows past
four times its minimum. The suggestion is fastai's `valley`: two thirds of the way down the
longest stretch of falling loss; one tenth of the rate at the minimum is reported beside it.
The model is trained while it is measured: start training from a fresh one. The sweep uses the
same seeded batches and initialization as a run, so it repeats exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import cycle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from tunesmith.models.heads import full_precision
from tunesmith.models.losses import make_loss
from tunesmith.train.loop import TrainSettings
from tunesmith.train.optim import make_optimizer, parameter_groups

SMOOTHING = 0.98
DIVERGED = 4.0  # the sweep stops when the smoothed loss passes this many times its minimum


@dataclass(frozen=True)
class RangeTest:
    lrs: list[float]
    losses: list[float]  # smoothed
    raw_losses: list[float]
    suggested: float  # fastai's valley
    minimum_tenth: float  # a tenth of the rate at the lowest loss
    head_ratio: float  # head_lr / lr during the sweep

    def to_json(self) -> dict[str, Any]:
        return {
            "lrs": self.lrs,
            "losses": self.losses,
            "raw_losses": self.raw_losses,
            "suggested_lr": self.suggested,
            "suggested_head_lr": self.suggested * self.head_ratio,
            "minimum_lr_over_10": self.minimum_tenth,
        }


def lr_range_test(
    model: torch.nn.Module,
    loader: DataLoader[Any],
    settings: TrainSettings,
    *,
    start: float = 1e-7,
    end: float = 1.0,
    steps: int = 100,
) -> RangeTest:
    """Sweep the backbone rate from `start` to `end` (the head's at the settings' ratio)."""
    set_seed(settings.seed)
    ratio = settings.head_lr / settings.lr
    groups = parameter_groups(
        model,  # type: ignore[arg-type]
        lr=start, head_lr=start * ratio, weight_decay=settings.weight_decay,
        layer_decay=settings.layer_decay,
    )
    optimizer = make_optimizer(settings.optimizer, groups, momentum=settings.momentum)
    base = [float(group["lr"]) for group in optimizer.param_groups]
    growth = (end / start) ** (1 / max(1, steps - 1))
    loss_fn = make_loss(settings.loss)
    device = next(model.parameters()).device
    model.train()
    lrs: list[float] = []
    raw: list[float] = []
    smoothed: list[float] = []
    average = 0.0
    batches = cycle(loader) if len(loader) < steps else iter(loader)
    for step in range(steps):
        factor = growth**step
        for group, lr in zip(optimizer.param_groups, base, strict=True):
            group["lr"] = lr * factor
        batch = {k: v.to(device) for k, v in next(batches).items()}
        targets = batch.pop("labels")
        loss = loss_fn(full_precision(model(batch)), targets)
        loss.backward()
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.item())
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        lrs.append(start * factor)
        raw.append(value)
        smoothed.append(average / (1 - SMOOTHING ** (step + 1)))
        if not math.isfinite(value) or smoothed[-1] > DIVERGED * min(smoothed):
            break
    return RangeTest(
        lrs, smoothed, raw, _valley(lrs, smoothed), _tenth_of_minimum(lrs, smoothed), ratio
    )


def _valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's `valley`: the longest stretch over which the loss keeps falling (a longest
    decreasing subsequence), and the rate two thirds of the way down it; robust to the noise
    that makes the single steepest point land anywhere."""
    count = len(losses)
    if count < 4:
        return lrs[int(np.argmin(losses))] / 10
    longest = [1] * count
    start, end = 0, 0
    for i in range(1, count):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[end] < longest[i]:
            end = i
            start = end - longest[end]
    third = (end - start) / 3
    return float(lrs[start + int(third) + int(third / 2)])


def _tenth_of_minimum(lrs: list[float], losses: list[float]) -> float:
    return float(lrs[int(np.argmin(losses))] / 10)


def plot(test: RangeTest, path: Path) -> None:
    """The curve with both suggestions marked, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    axis.plot(test.lrs, test.raw_losses, color="#bbbbbb", linewidth=1, label="loss")
    axis.plot(test.lrs, test.losses, color="#1f5fa8", linewidth=2, label="smoothed")
    axis.axvline(test.suggested, color="#d1495b", linestyle="--",
                 label=f"valley {test.suggested:.2e}")
    axis.axvline(test.minimum_tenth, color="#66a182", linestyle=":",
                 label=f"minimum / 10 {test.minimum_tenth:.2e}")
    axis.set_xscale("log")
    axis.set_xlabel("learning rate (backbone)")
    axis.set_ylabel("training loss")
    low, high = min(test.losses), max(test.losses[: max(1, len(test.losses) // 2)])
    axis.set_ylim(low - 0.1 * (high - low + 1e-9), high + 0.3 * (high - low + 1e-9))
    axis.legend(frameon=False)
    axis.set_title("learning-rate range test")
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
