"""The model stage: backbones from a closed registry, heads, and the classifier they form."""

from tunesmith.models.backbone import Backbone
from tunesmith.models.classifier import Classifier
from tunesmith.models.heads import make_head
from tunesmith.models.registry import (
    absolute_spec,
    build_backbone,
    parse_spec,
    rebuild_backbone,
)

__all__ = [
    "Backbone",
    "Classifier",
    "absolute_spec",
    "build_backbone",
    "make_head",
    "parse_spec",
    "rebuild_backbone",
]
