"""The evaluate stage: task metrics with intervals, calibration and baselines, computed from a
model's outputs.

`collect_logits` is imported on first use: it needs torch and the model registry, which the
report, built from a run folder's files alone, does not."""

from typing import TYPE_CHECKING, Any

from tunesmith.evaluate.metrics import (
    Objective,
    evaluation_metrics,
    objective_for,
    task_metrics,
)

if TYPE_CHECKING:
    from tunesmith.evaluate.inference import collect_logits

__all__ = ["Objective", "collect_logits", "evaluation_metrics", "objective_for", "task_metrics"]


def __getattr__(name: str) -> Any:
    if name == "collect_logits":
        from tunesmith.evaluate.inference import collect_logits

        return collect_logits
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
