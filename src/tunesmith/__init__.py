"""tunesmith: fine-tune a pretrained model on your dataset, measured honestly."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from pathlib import Path

    from tunesmith.export.predictor import Predictor


def fit(config: Any, overrides: list[str] | str | None = None, *, resume: bool = False) -> Any:
    """Run the whole pipeline, as `tunesmith run`; returns the run summary."""
    from tunesmith.api import fit as _fit

    return _fit(config, overrides, resume=resume)


def load(run_or_bundle: str | Path) -> Predictor:
    """Load a run folder or a `best/` bundle as a predictor."""
    from tunesmith.api import load as _load

    return _load(run_or_bundle)


__all__ = ["__version__", "fit", "load"]
