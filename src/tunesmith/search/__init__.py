"""The search stage. For now: the dataset-aware recipe that resolves every `auto` (trial 0)."""

from tunesmith.search.recipe import DataProfile, image_size, resolve, train_settings

__all__ = ["DataProfile", "image_size", "resolve", "train_settings"]
