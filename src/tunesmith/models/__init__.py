"""The model stage: backbones from a closed registry, heads, strategies and losses."""

from tunesmith.models.backbone import Backbone
from tunesmith.models.heads import make_head
from tunesmith.models.registry import (
    absolute_spec,
    build_backbone,
    parse_spec,
    rebuild_backbone,
)
from tunesmith.models.task_model import ProbeModel, TaskModel

__all__ = [
    "Backbone",
    "ProbeModel",
    "TaskModel",
    "absolute_spec",
    "build_backbone",
    "make_head",
    "parse_spec",
    "rebuild_backbone",
]
