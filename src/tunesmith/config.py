"""The typed configuration every stage reads.

A config is YAML validated into frozen pydantic models. Unknown keys and wrong types are errors, all
listed at once. Values left at `auto` are resolved from the data and the model by the recipe
(`tunesmith.search.recipe`) and the resolved config is written to the run folder.

Relative paths inside a config (data files, model folders, weights files) are read relative to the
folder that holds the config file, so a config works from any working directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from tunesmith.errors import TunesmithError

Auto = Literal["auto"]
Task = Literal["auto", "text-classification", "image-classification"]
Activation = Literal["relu", "gelu", "silu", "tanh", "sigmoid", "leaky_relu"]
Init = Literal[
    "default",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "orthogonal",
    "zeros",
]
Precision = Literal["auto", "bf16", "fp32"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitConfig(_Strict):
    """How train/val/test parts are made when no test file is given.

    `test` is a fraction of all rows; `val` a fraction of what remains after the test part.
    """

    val: float = Field(0.1, gt=0.0, lt=1.0)
    test: float = Field(0.2, gt=0.0, lt=1.0)
    stratify: bool = True
    seed: int = 0


class DataConfig(_Strict):
    train: Path
    test: Path | None = None
    text_column: str = "text"
    label_column: str = "label"
    image_size: int | Auto | None = "auto"  # image tasks; null for text
    max_length: int | Auto | None = "auto"  # text tasks; null for images
    split: SplitConfig = SplitConfig()


class HeadConfig(_Strict):
    layers: int | Auto = Field("auto")
    hidden: int | Auto = "auto"
    activation: Activation | Auto = "auto"
    init: Init | Auto = "auto"
    dropout: float | Auto = "auto"


class ModelConfig(_Strict):
    backbone: str
    head: HeadConfig = HeadConfig()
    strategy: Literal["auto", "full"] = "auto"


class TrainConfig(_Strict):
    optimizer: Literal["auto", "adamw"] = "auto"
    lr: float | Auto = "auto"
    head_lr: float | Auto = "auto"
    weight_decay: float | Auto = "auto"
    epochs: int | Auto = "auto"
    batch_size: int | Auto = "auto"
    warmup: float | Auto = "auto"
    grad_clip: float | None = 1.0
    label_smoothing: float | Auto = "auto"
    # Decay of the weight average that is evaluated and kept; null turns averaging off.
    ema: Annotated[float, Field(gt=0.0, lt=1.0)] | Auto | None = "auto"
    precision: Precision = "auto"


class Config(_Strict):
    name: str
    task: Task = "auto"
    data: DataConfig
    model: ModelConfig
    train: TrainConfig = TrainConfig()
    seed: int = 0
    output_dir: Path = Path("runs")

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _source: str = PrivateAttr(default="config")

    @property
    def base_dir(self) -> Path:
        """The folder relative paths in this config are read from."""
        return self._base_dir

    @property
    def source(self) -> str:
        """Where this config came from (its file), for error messages."""
        return self._source

    def path(self, value: str | Path) -> Path:
        """`value` as an absolute path, read relative to the config's folder."""
        path = Path(value).expanduser()
        # abspath, not resolve(): keep the user's symlinks (a linked model folder) as named.
        return Path(os.path.abspath(path if path.is_absolute() else self._base_dir / path))

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name

    def updated(self, **sections: Any) -> Config:
        """A copy with the given sections replaced, keeping where it came from."""
        copy = self.model_copy(update=sections)
        copy._base_dir = self._base_dir
        copy._source = self._source
        return copy

    def to_yaml(self) -> str:
        return str(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))


def parse_overrides(overrides: list[str], *, source: str = "--set") -> dict[str, Any]:
    """Turn `["a.b=c", ...]` into a nested dict; values are read as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise TunesmithError(
                f"cannot read override {item!r}",
                file=source,
                fix="write overrides as --set key.subkey=value, e.g. --set train.lr=1e-4",
            )
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw else None
    return nested


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra` laid over it, nested mappings merged key by key."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: Any) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"  {field}: unknown key; remove it or check its spelling against the README"
    if kind == "missing":
        return f"  {field}: required but missing; add it"
    given = error.get("input")
    return f"  {field}: {error['msg']} (got {given!r})"


def config_from_dict(raw: dict[str, Any], *, source: str, base_dir: Path) -> Config:
    """Validate a dict into a Config, listing every problem in one error."""
    try:
        config = Config.model_validate(raw)
    except ValidationError as error:
        # One error per field: a union like `int | "auto"` reports once for each branch.
        seen: dict[tuple[Any, ...], str] = {}
        for item in error.errors():
            loc = tuple(part for part in item["loc"] if not _is_union_branch(part))
            seen.setdefault(loc, _describe({**item, "loc": loc}))
        lines = "\n".join(seen.values())
        raise TunesmithError(
            f"the config has {len(seen)} problem(s):\n{lines}",
            file=source,
            fix="correct the fields listed above (see the config reference in the README)",
        ) from None
    config._base_dir = base_dir
    config._source = source
    return config


def _is_union_branch(part: Any) -> bool:
    # pydantic names the branch of a union it tried, e.g. 'int' or "literal['auto']".
    return isinstance(part, str) and (part in {"int", "float", "str", "bool"} or "[" in part)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read, merge overrides into and validate the YAML config at `path`."""
    path = Path(path)
    if not path.is_file():
        raise TunesmithError(
            "config file not found", file=path, fix="pass the path of an existing YAML config"
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise TunesmithError(
            f"not valid YAML: {error}", file=path, fix="correct the YAML syntax"
        ) from None
    if not isinstance(raw, dict):
        raise TunesmithError(
            "the config must be a mapping of keys to values",
            file=path,
            fix="start from examples/sentiment/config.yaml",
        )
    raw = deep_merge(raw, parse_overrides(overrides or [], source=str(path)))
    return config_from_dict(raw, source=str(path), base_dir=path.parent.resolve())
