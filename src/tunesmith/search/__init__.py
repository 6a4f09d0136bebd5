"""The search stage. For now: the dataset-aware recipe that resolves every `auto` (trial 0)."""

from tunesmith.search.recipe import (
    DataProfile,
    check_fits,
    image_size,
    is_scratch,
    resolve,
    scratch_image_size,
    scratch_shape,
    strategy_plan,
    train_settings,
)

__all__ = [
    "DataProfile",
    "check_fits",
    "image_size",
    "is_scratch",
    "resolve",
    "scratch_image_size",
    "scratch_shape",
    "strategy_plan",
    "train_settings",
]
