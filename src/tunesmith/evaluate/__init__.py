"""The evaluate stage: task metrics and baselines, computed from a model's outputs."""

from tunesmith.evaluate.inference import collect_logits
from tunesmith.evaluate.metrics import (
    Objective,
    majority_baseline,
    objective_for,
    task_metrics,
)

__all__ = ["Objective", "collect_logits", "majority_baseline", "objective_for", "task_metrics"]
