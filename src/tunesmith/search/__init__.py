"""The search stage: the dataset-aware recipe (trial 0), the space, the Optuna study and the
search loop, backbone probes and weight soups."""

from tunesmith.search.recipe import (
    DataProfile,
    check_fits,
    image_size,
    is_scratch,
    resolve,
    scratch_image_size,
    scratch_shape,
    strategy_plan,
    takes_adapters,
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
    "takes_adapters",
    "train_settings",
]
