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


def load(run_or_bundle: str | Path, *, engine: str = "torch", precision: str = "fp32"
         ) -> Predictor:
    """Load a run folder or a `best/` bundle as a predictor: `engine="onnx"` runs the run's
    exported `model.onnx` in ONNX Runtime, in `precision` fp32 or bf16."""
    from tunesmith.api import load as _load

    return _load(run_or_bundle, engine=engine, precision=precision)


__all__ = ["__version__", "fit", "load"]
