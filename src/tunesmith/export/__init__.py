"""The export stage: the model bundle and prediction with it."""

from tunesmith.export.bundle import load_bundle, save_bundle
from tunesmith.export.predictor import Predictor, load_predictor

__all__ = ["Predictor", "load_bundle", "load_predictor", "save_bundle"]
