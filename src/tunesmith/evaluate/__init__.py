"""The evaluate stage: task metrics with intervals, calibration and baselines, computed from a
model's outputs."""

from tunesmith.evaluate.inference import collect_logits
from tunesmith.evaluate.metrics import (
    Objective,
    evaluation_metrics,
    objective_for,
    task_metrics,
)

__all__ = ["Objective", "collect_logits", "evaluation_metrics", "objective_for", "task_metrics"]
