"""The train stage: one fine-tuning run of a model on prepared batches."""

from tunesmith.train.loop import Reporter, TrainSettings, TrialResult, train_trial
from tunesmith.train.precision import resolve_precision

__all__ = ["Reporter", "TrainSettings", "TrialResult", "resolve_precision", "train_trial"]
