"""The train stage: one fine-tuning run of a model on prepared batches, in stages."""

from tunesmith.train.loop import Reporter, TrainSettings, TrialResult, train_trial
from tunesmith.train.precision import resolve_precision
from tunesmith.train.stages import Batches, StrategyPlan, fine_tune

__all__ = [
    "Batches",
    "Reporter",
    "StrategyPlan",
    "TrainSettings",
    "TrialResult",
    "fine_tune",
    "resolve_precision",
    "train_trial",
]
