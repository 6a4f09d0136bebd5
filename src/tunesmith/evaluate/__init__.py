"""The evaluate stage: task metrics and baselines, computed from a model's outputs."""

from tunesmith.evaluate.inference import collect_logits
from tunesmith.evaluate.metrics import PRIMARY_METRIC, classification_metrics, majority_baseline

__all__ = ["PRIMARY_METRIC", "classification_metrics", "collect_logits", "majority_baseline"]
