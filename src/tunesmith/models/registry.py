"""A closed registry of backbone sources.

| spec | what it is | inputs |
|---|---|---|
| `hf:PATH` | a Hugging Face folder (save_pretrained) | text; images with an image processor |
| `timm:NAME?weights=FILE` | a timm model, local weights | images |
| `torchvision:NAME?weights=FILE` | a torchvision model, local weights | images |
| `python:MODULE:FUNCTION?weights=FILE` | the user's own nn.Module builder | images, tables |
| `scratch:mlp`, `scratch:cnn` | random initialization, shaped by `model.scratch` | tables, images |

A spec names its source before the first colon; options follow a `?` as `key=value` pairs joined
by `&`. Each source is one entry below: its builder, its rebuilder (for a bundle) and its options.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from tunesmith.console import console
from tunesmith.data.sources import Modality
from tunesmith.errors import TunesmithError
from tunesmith.models import hf, python_source, scratch, timm_source, torchvision_source
from tunesmith.models.backbone import Backbone
from tunesmith.models.scratch import ScratchShape

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
    in_features: int | None = None  # tables: width of the encoded features
    shape: ScratchShape | None = None  # scratch: the resolved structure
    trust_remote_code: bool = False
    search: Path | None = None  # python: the folder modules are imported from first

    def weights(self) -> Path | None:
        weights = self.spec.options.get("weights")
        return self.resolve(weights) if weights else None


def _build_hf(request: BuildRequest) -> Backbone:
    return hf.load_pretrained(
        request.resolve(request.spec.target),
        field=FIELD,
        max_length=request.max_length,
        image_size=request.image_size,
        trust_remote_code=request.trust_remote_code,
    )


def _build_timm(request: BuildRequest) -> Backbone:
    backbone = timm_source.load_pretrained(
        request.spec.target, request.weights(), field=FIELD, image_size=request.image_size
    )
    _say_if_random(request)
    return backbone


def _build_torchvision(request: BuildRequest) -> Backbone:
    backbone = torchvision_source.load_pretrained(
        request.spec.target, request.weights(), field=FIELD, image_size=request.image_size
    )
    _say_if_random(request)
    return backbone


_SAID: set[str] = set()


def _say_if_random(request: BuildRequest) -> None:
    """A library network named without a weights file starts from random weights (tunesmith
    downloads nothing): said once per process, as a search builds it for every trial."""
    spec = f"{request.spec.source}:{request.spec.target}"
    if request.weights() is None and spec not in _SAID:
        _SAID.add(spec)
        console.print(
            f"[yellow]{spec} has no ?weights= file: it starts from random weights, not "
            "pretrained ones[/] (tunesmith downloads nothing; give the saved weights as "
            f"{spec}?weights=PATH)"
        )


def _build_python(request: BuildRequest) -> Backbone:
    return python_source.load_pretrained(
        request.spec.target,
        request.weights(),
        modality=request.modality,
        field=FIELD,
        search=request.search,
        in_features=request.in_features,
        image_size=request.image_size,
    )


def _build_scratch(request: BuildRequest) -> Backbone:
    if request.shape is None:
        raise ValueError("scratch backbones need a resolved model.scratch shape")
    return scratch.create(
        request.spec.target,
        request.shape,
        field=FIELD,
        in_features=request.in_features,
        image_size=request.image_size or 32,
    )


@dataclass(frozen=True)
class Source:
    build: Callable[[BuildRequest], Backbone]
    rebuild: Callable[[Path, dict[str, Any]], Backbone]
    options: frozenset[str] = frozenset()
    path_target: bool = False  # the target is a path, read relative to the config's folder
    example: str = ""


SOURCES: dict[str, Source] = {
    "hf": Source(_build_hf, hf.rebuild, path_target=True, example="hf:models/all-MiniLM-L6-v2"),
    "timm": Source(
        _build_timm,
        timm_source.rebuild,
        frozenset({"weights"}),
        example="timm:resnet18?weights=resnet18.safetensors",
    ),
    "torchvision": Source(
        _build_torchvision,
        torchvision_source.rebuild,
        frozenset({"weights"}),
        example="torchvision:resnet18?weights=resnet18.pth",
    ),
    "python": Source(
        _build_python,
        python_source.rebuild,
        frozenset({"weights"}),
        example="python:my_models:build",
    ),
    "scratch": Source(_build_scratch, scratch.rebuild, example="scratch:mlp"),
}
PATH_OPTIONS = {"weights"}
EXAMPLES: dict[str, str] = {
    "text": "hf:models/all-MiniLM-L6-v2",
    "image": "timm:resnet18?weights=resnet18.safetensors, torchvision:NAME?weights=FILE, "
    "an hf: vision model folder, scratch:cnn",
    "tabular": "scratch:mlp, python:MODULE:FUNCTION",
}


def parse_spec(spec: str) -> BackboneSpec:
    source, sep, rest = spec.partition(":")
    if not sep or source not in SOURCES:
        close = difflib.get_close_matches(source, SOURCES, n=2)
        raise TunesmithError(
            f"unknown backbone source {source!r}"
            + (f" (did you mean {close[0]!r}?)" if close else ""),
            field=FIELD,
            fix="write the backbone as one of: "
            + ", ".join(entry.example for entry in SOURCES.values()),
        )
    target, _, query = rest.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True))
    allowed = SOURCES[source].options
    unknown = sorted(set(options) - allowed)
    blank = sorted(name for name, value in options.items() if not value.strip())
    if unknown or blank or not target:
        raise TunesmithError(
            f"cannot read backbone {spec!r}"
            + (f": unknown option(s) {unknown}" if unknown
               else f": option(s) {blank} given no value" if blank
               else ": the name or path is empty"),
            field=FIELD,
            fix=f"{source}: takes a name or path"
            + (f" and options {sorted(allowed)}" if allowed else "")
            + f", e.g. {SOURCES[source].example}",
        )
    return BackboneSpec(source, target, options)


def absolute_spec(spec: str, resolve: Callable[[str], Path]) -> str:
    """`spec` with its paths made absolute, so a resolved config works from any folder."""
    parsed = parse_spec(spec)
    path_target = SOURCES[parsed.source].path_target
    target = str(resolve(parsed.target)) if path_target else parsed.target
    options = {k: str(resolve(v)) if k in PATH_OPTIONS else v for k, v in parsed.options.items()}
    query = f"?{urlencode(options, safe='/:')}" if options else ""
    return f"{parsed.source}:{target}{query}"


def source_modalities(spec: BackboneSpec, resolve: Callable[[str], Path]) -> tuple[Modality, ...]:
    """The inputs a backbone of this spec reads."""
    if spec.source == "hf":
        path = resolve(spec.target)
        return (hf.folder_modality(path),) if path.is_dir() else ("text", "image")  # type: ignore[return-value]
    if spec.source == "scratch":
        return {"mlp": ("tabular",), "cnn": ("image",)}.get(spec.target, ("tabular", "image"))  # type: ignore[return-value]
    if spec.source == "python":
        return ("image", "tabular")
    return ("image",)


def checked_spec(spec: str, modality: Modality, resolve: Callable[[str], Path]) -> BackboneSpec:
    """`spec` read, and checked against the task's modality."""
    parsed = parse_spec(spec)
    reads = source_modalities(parsed, resolve)
    if modality not in reads:
        raise TunesmithError(
            f"{spec} reads {' or '.join(reads)} inputs, but the task is {modality}",
            field=FIELD,
            fix=f"use a backbone for {modality} data (e.g. {EXAMPLES[modality]}) or set task to "
            "match the data",
        )
    return parsed


def build_backbone(
    spec: str,
    *,
    modality: Modality,
    resolve: Callable[[str], Path],
    max_length: int | None = None,
    image_size: int | None = None,
    in_features: int | None = None,
    shape: ScratchShape | None = None,
    trust_remote_code: bool = False,
    search: Path | None = None,
) -> Backbone:
    """The backbone `spec` names, checked against the task's modality."""
    parsed = checked_spec(spec, modality, resolve)
    request = BuildRequest(
        parsed, modality, resolve, max_length, image_size, in_features, shape,
        trust_remote_code, search,
    )
    return SOURCES[parsed.source].build(request)


def rebuild_backbone(folder: Path, info: dict[str, Any]) -> Backbone:
    """The architecture a bundle describes, weights to be loaded by the caller."""
    entry = SOURCES.get(str(info.get("source")))
    if entry is None:
        raise TunesmithError(
            f"unknown backbone source {info.get('source')!r} in the bundle",
            file=folder,
            field="backbone.source",
            fix="re-export the bundle with this version",
        )
    return entry.rebuild(folder / str(info.get("folder", "backbone")), info)
