"""A closed registry of backbone sources: `hf:PATH` and `timm:NAME?weights=FILE`.

A spec names its source before the first colon; options follow a `?` as `key=value` pairs joined
by `&`. Each source is one builder function; adding a source means adding one entry here.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from tunesmith.data.sources import Modality
from tunesmith.errors import TunesmithError
from tunesmith.models import hf, timm_source
from tunesmith.models.backbone import Backbone

FIELD = "model.backbone"


@dataclass(frozen=True)
class BackboneSpec:
    source: str
    target: str
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildRequest:
    """What a builder needs beyond the spec: where relative paths start, and input sizing."""

    spec: BackboneSpec
    modality: Modality
    resolve: Callable[[str], Path]
    max_length: int | None = None
    image_size: int | None = None


def _build_hf(request: BuildRequest) -> Backbone:
    return hf.load_pretrained(
        request.resolve(request.spec.target), field=FIELD, max_length=request.max_length
    )


def _build_timm(request: BuildRequest) -> Backbone:
    weights = request.spec.options.get("weights")
    return timm_source.load_pretrained(
        request.spec.target,
        request.resolve(weights) if weights else None,
        field=FIELD,
        image_size=request.image_size,
    )


SOURCES: dict[str, tuple[Modality, Callable[[BuildRequest], Backbone], set[str]]] = {
    "hf": ("text", _build_hf, set()),
    "timm": ("image", _build_timm, {"weights"}),
}
# Which parts of a spec are file paths (read relative to the config's folder).
PATH_TARGETS = {"hf"}
PATH_OPTIONS = {"weights"}


def parse_spec(spec: str) -> BackboneSpec:
    source, sep, rest = spec.partition(":")
    if not sep or source not in SOURCES:
        close = difflib.get_close_matches(source, SOURCES, n=2)
        raise TunesmithError(
            f"unknown backbone source {source!r}"
            + (f" (did you mean {close[0]!r}?)" if close else ""),
            field=FIELD,
            fix=f"write the backbone as one of: {', '.join(f'{s}:...' for s in SOURCES)}, "
            "e.g. hf:models/all-MiniLM-L6-v2 or timm:resnet18?weights=resnet18.safetensors",
        )
    target, _, query = rest.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    allowed = SOURCES[source][2]
    unknown = sorted(set(options) - allowed)
    if unknown or not target:
        raise TunesmithError(
            f"cannot read backbone {spec!r}"
            + (f": unknown option(s) {unknown}" if unknown else ": the name or path is empty"),
            field=FIELD,
            fix=f"{source}: takes a name or path"
            + (f" and options {sorted(allowed)}" if allowed else ""),
        )
    return BackboneSpec(source, target, options)


def absolute_spec(spec: str, resolve: Callable[[str], Path]) -> str:
    """`spec` with its paths made absolute, so a resolved config works from any folder."""
    parsed = parse_spec(spec)
    target = str(resolve(parsed.target)) if parsed.source in PATH_TARGETS else parsed.target
    options = {k: str(resolve(v)) if k in PATH_OPTIONS else v for k, v in parsed.options.items()}
    query = f"?{urlencode(options, safe='/:')}" if options else ""
    return f"{parsed.source}:{target}{query}"


def build_backbone(
    spec: str,
    *,
    modality: Modality,
    resolve: Callable[[str], Path],
    max_length: int | None = None,
    image_size: int | None = None,
) -> Backbone:
    """The pretrained backbone `spec` names, checked against the task's modality."""
    parsed = parse_spec(spec)
    source_modality, builder, _ = SOURCES[parsed.source]
    if source_modality != modality:
        choices = [s for s, (m, _, _) in SOURCES.items() if m == modality]
        raise TunesmithError(
            f"{parsed.source}: backbones take {source_modality} inputs, but the task is {modality}",
            field=FIELD,
            fix=f"use a {modality} backbone ({', '.join(c + ':...' for c in choices)}) "
            "or set task to match the data",
        )
    return builder(BuildRequest(parsed, modality, resolve, max_length, image_size))


def rebuild_backbone(folder: Path, info: dict[str, Any]) -> Backbone:
    """The architecture a bundle describes, weights to be loaded by the caller."""
    if info["source"] == "hf":
        return hf.rebuild(folder / str(info["folder"]), info)
    if info["source"] == "timm":
        return timm_source.rebuild(info)
    raise TunesmithError(
        f"unknown backbone source {info['source']!r} in the bundle",
        file=folder,
        field="backbone.source",
        fix="re-export the bundle with this version",
    )
