"""The typed configuration every stage reads.

A config is YAML validated into frozen pydantic models. Unknown keys and wrong types are errors, all
listed at once. Values left at `auto` are resolved from the data and the model by the recipe
(`tunesmith.search.recipe`) and the resolved config is written to the run folder.

Relative paths inside a config (data files, model folders, weights files) are read relative to the
folder that holds the config file, so a config works from any working directory.
"""

from __future__ import annotations

import codecs
import difflib
import os
import re
from collections.abc import Hashable
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tunesmith.errors import TunesmithError

Auto = Literal["auto"]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # what NumPy and scikit-learn take
M = TypeVar("M", bound=BaseModel)
Modality = Literal["text", "image", "tabular"]
# What the label column holds: one class per row (binary or multiclass), a set of classes per
# row, or a number. A task is "<modality>-<kind>", e.g. text-classification or tabular-regression.
LabelKind = Literal["classification", "multilabel", "regression"]
Task = Literal[
    "auto",
    "text-classification",
    "text-multilabel",
    "text-regression",
    "image-classification",
    "image-multilabel",
    "image-regression",
    "tabular-classification",
    "tabular-multilabel",
    "tabular-regression",
]
DataFormat = Literal[
    "auto", "csv", "tsv", "jsonl", "parquet", "image-folder", "image-manifest", "hf-dataset"
]
SplitMethod = Literal["auto", "stratified", "random", "group", "time", "column"]
AugmentPreset = Literal["auto", "none", "light", "medium", "strong"]
Impute = Literal["auto", "median", "mean", "most_frequent", "none"]
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
Precision = Literal["auto", "bf16", "fp16", "fp32"]
Optimizer = Literal["auto", "adamw", "adam", "sgd"]
Schedule = Literal["auto", "cosine", "linear", "constant", "one-cycle", "step"]
Loss = Literal["auto", "cross_entropy", "focal", "bce", "mse", "huber"]
Norm = Literal["batch", "layer", "none"]
PeftMethod = Literal["lora", "dora", "loha"]
# How much of the network is trained, and how. `freeze:K` freezes the bottom K blocks.
STRATEGIES = (
    "full", "linear-probe", "lp-ft", "gradual-unfreeze", "freeze:K", *get_args(PeftMethod)
)


DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
DURATION_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([hms])")


def seconds(value: Any) -> Any:
    """`90`, `"90s"`, `"10m"`, `"1.5h"` or `"1h30m"` as seconds; other values are left to
    validation."""
    if isinstance(value, str):
        text = value.strip().lower()
        number, unit = (text[:-1], text[-1]) if text[-1:] in DURATION_UNITS else (text, "s")
        try:
            return float(number) * DURATION_UNITS[unit]
        except ValueError:
            pass
        parts = DURATION_PART.findall(text)
        if parts and "".join(DURATION_PART.sub("", text).split()) == "":
            return sum(float(amount) * DURATION_UNITS[unit] for amount, unit in parts)
    return value


def check_delimiter(value: str) -> str:
    value = "\t" if value == "\\t" else value  # a tab typed as \t on a command line
    if len(value) != 1:
        raise ValueError("the delimiter must be one character, e.g. ',' or ';' (or \\t for tab)")
    return value


def check_encoding(value: str) -> str:
    try:
        codec = codecs.lookup(value)
    except LookupError:
        raise ValueError("unknown text encoding; use e.g. utf-8, latin-1 or cp1252") from None
    if not codec._is_text_encoding:  # base64, rot13: codecs of bytes to bytes
        raise ValueError(f"{value} is not a text encoding; use e.g. utf-8, latin-1 or cp1252")
    return value


NAME_MAX = 200  # a folder name holds 255 bytes; the run's lock and dated copies add to it


def check_name(value: str) -> str:
    """A run's name is one folder inside `output_dir`: not a path, not `.` or `..`."""
    if not value.strip() or value in (".", "..") or "/" in value or "\\" in value:
        raise ValueError(
            "the run's name must be one plain folder name (the run folder is output_dir/name); "
            "put the folder in output_dir"
        )
    if len(value.encode()) > NAME_MAX:
        raise ValueError(f"the run's name is {len(value.encode())} bytes long; give one of at "
                         f"most {NAME_MAX}")
    return value


def redacted(url: str) -> str:
    """The URL without its password."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


def check_storage(value: str) -> str:
    """`search.storage`'s form, checked before anything runs: `journal:PATH`, or an SQLAlchemy
    URL whose dialect SQLAlchemy knows. The server itself is reached when the search opens it
    (opening one writes: Optuna creates its tables, a journal its file)."""
    usage = "use sqlite:///PATH, postgresql://USER:PASSWORD@HOST:PORT/DB or journal:PATH"
    if value.startswith("journal:"):
        if not value.removeprefix("journal:").strip():
            raise ValueError(f"journal: names no file; give the journal's path ({usage})")
        return value
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(value).get_dialect()
    except NoSuchModuleError:  # an ArgumentError too: first
        scheme = value.split("://", 1)[0]
        raise ValueError(f"SQLAlchemy knows no database called {scheme!r}; {usage}") from None
    except ArgumentError:
        raise ValueError(f"the storage is not a URL; {usage}") from None
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _true_false_for_flags_only(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads true as 1 for a number: `batch_size: true` would train with batches of 1
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and not _takes_bool(field.annotation):
            raise ValueError("true/false is not a value of this key")
        # and reads 1, 0, "yes" or "on" as a flag: a flag is written true or false
        words = None if field is None else _flag_words(field.annotation)
        if (words is not None and value is not None and not isinstance(value, bool)
                and not (isinstance(value, str) and value in words)):
            raise ValueError(f"{value!r} is not true or false")
        return value


def _takes_bool(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if annotation is bool or annotation is Any:
        return True
    if origin is Annotated:
        return _takes_bool(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return any(_takes_bool(arg) for arg in get_args(annotation))
    if origin is Literal:
        return any(isinstance(arg, bool) for arg in get_args(annotation))
    return False


def _flag_words(annotation: Any) -> set[str] | None:
    """For a flag (bool, maybe also None or words such as "auto"), the words it takes besides
    true and false; None for a key that is not a flag."""
    if annotation is bool:
        return set()
    if get_origin(annotation) not in (Union, UnionType):
        return None
    words: set[str] = set()
    for arg in get_args(annotation):
        if get_origin(arg) is Literal and all(isinstance(word, str) for word in get_args(arg)):
            words |= set(get_args(arg))
        elif arg is not bool and arg is not type(None):
            return None
    return words if bool in get_args(annotation) else None


class SplitConfig(_Strict):
    """How train/val/test parts are made.

    `test` is a fraction of all rows (unused when `data.test` is given); `val` a fraction of what
    remains (unused when `data.val` is given). `method: auto` picks `column` when `column` is set,
    `group` when `group_column` is, `time` when `time_column` is, and otherwise `stratified`
    (`random` with `stratify: false`).
    """

    method: SplitMethod = "auto"
    val: float = Field(0.1, gt=0.0, lt=1.0)
    test: float = Field(0.2, gt=0.0, lt=1.0)
    stratify: bool = True  # for method auto: keep each class's share in every part
    seed: Seed = 0
    group_column: str | None = None  # rows sharing a value stay in one part
    time_column: str | None = None  # the latest rows become test, the ones before them val
    column: str | None = None  # a column holding train / val / test for each row

    @model_validator(mode="after")
    def _stratify_fits_the_method(self) -> SplitConfig:
        if not self.stratify and self.method == "stratified":
            raise ValueError("stratify: false contradicts method: stratified; leave one of them")
        return self


class CleanConfig(_Strict):
    """What cleaning may drop or change; every drop is counted in data_report.json."""

    # Exact duplicate inputs inside train (first one kept), and train/val rows seen in test. Auto:
    # on for texts and images (near: also normalized text, look-alike images); off for tables,
    # whose rows share feature values by nature (two passengers of one class and sex) and keep
    # their frequencies, as scikit-learn and gradient-boosting libraries take them.
    drop_duplicates: bool | Literal["auto"] = "auto"
    drop_test_overlap: Literal["auto", "exact", "near", "none"] = "auto"
    drop_unreadable: bool = False  # false: an unreadable image is an error naming it
    impute: Impute = "auto"  # tabular missing values; statistics from train only
    image_mode: Literal["RGB", "L"] = "RGB"  # every image is converted to this mode

    def resolved(self, modality: str) -> CleanConfig:
        """Every `auto` decided for data of `modality` (and imputation's median)."""
        table = modality == "tabular"
        return self.model_copy(update={
            "drop_duplicates": (not table if self.drop_duplicates == "auto"
                                else self.drop_duplicates),
            "drop_test_overlap": (("none" if table else "near")
                                  if self.drop_test_overlap == "auto" else self.drop_test_overlap),
            "impute": "median" if self.impute == "auto" else self.impute,
        })


class AugmentConfig(_Strict):
    """Training-time augmentation of images; never applied to val or test."""

    preset: AugmentPreset = "auto"
    flip: bool = True  # false where orientation carries meaning (digits, text in images)
    mixup: float = Field(0.0, ge=0.0)  # Beta(alpha, alpha) mixing; 0 turns it off
    cutmix: float = Field(0.0, ge=0.0)


class DataConfig(_Strict):
    train: Path
    test: Path | None = None  # a predefined test part; otherwise split off from train
    val: Path | None = None  # a predefined validation part; otherwise split off from train
    format: DataFormat = "auto"  # from the suffix, or the folder's contents
    # CSV only; null: "," for .csv and tab for .tsv
    delimiter: Annotated[str, AfterValidator(check_delimiter)] | None = None
    encoding: Annotated[str, AfterValidator(check_encoding)] = "utf-8"
    text_column: str = "text"
    image_column: str = "image"  # image manifests: the column of image paths
    label_column: str = "label"
    # multilabel labels written as "a|b" in one column
    label_delimiter: Annotated[str, Field(min_length=1)] | None = None
    # tabular: all columns but label and split ones
    feature_columns: Annotated[list[str], Field(min_length=1)] | None = None
    image_size: Annotated[int, Field(gt=0)] | Auto | None = "auto"  # image tasks; null for text
    # text tasks: auto is the 95th percentile of tokens
    max_length: Annotated[int, Field(ge=2)] | Auto | None = "auto"
    split: SplitConfig = SplitConfig()
    clean: CleanConfig = CleanConfig()
    augment: AugmentConfig = AugmentConfig()

    @model_validator(mode="after")
    def _label_is_not_an_input(self) -> DataConfig:
        label = self.label_column
        if label in (self.feature_columns or []):
            raise ValueError(
                f"feature_columns lists the label column {label!r}: a model given its answer "
                "learns nothing it can use on new rows; remove it from feature_columns"
            )
        for name in ("text_column", "image_column"):
            if getattr(self, name) == label and name in self.model_fields_set:
                raise ValueError(
                    f"{name} and label_column are both {label!r}; the input and the label "
                    "must be different columns"
                )
        return self


class HeadConfig(_Strict):
    layers: Annotated[int, Field(ge=0)] | Auto = "auto"
    hidden: Annotated[int, Field(gt=0)] | Auto = "auto"
    activation: Activation | Auto = "auto"
    init: Init | Auto = "auto"
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] | Auto = "auto"


class ScratchConfig(_Strict):
    """The structure of a `scratch:mlp` or `scratch:cnn` backbone (see tunesmith.models.scratch)."""

    depth: Annotated[int, Field(ge=0)] | Auto = "auto"  # MLP layers / CNN stages
    width: Annotated[int, Field(gt=0)] | Auto = "auto"  # MLP units per layer
    channels: Annotated[int, Field(gt=0)] | Auto = "auto"  # CNN channels after the stem
    kernel_size: Annotated[int, Field(gt=0)] | Auto = "auto"
    groups: Annotated[int, Field(gt=0)] | Auto = "auto"  # grouped convolutions; 1 is plain
    activation: Activation | Auto = "auto"
    norm: Norm | Auto = "auto"
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] | Auto = "auto"
    init: Init | Auto = "auto"


class PeftConfig(_Strict):
    """The adapter of the `lora`, `dora` and `loha` strategies."""

    r: Annotated[int, Field(gt=0)] | Auto = "auto"
    alpha: Annotated[int, Field(gt=0)] | Auto = "auto"
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] | Auto = "auto"
    targets: list[str] | Auto = "auto"  # module names; auto: every adaptable layer in the blocks


def check_strategy(value: str) -> str:
    name, _, count = value.partition(":")
    # freeze:K is the family's name in STRATEGIES, not a strategy; K is ASCII digits ("²" is a
    # digit to str.isdigit)
    given = value in ("auto", *STRATEGIES) and value != "freeze:K"
    if given or (name == "freeze" and count.isascii() and count.isdigit()):
        return value
    raise ValueError(f"unknown strategy; use auto or one of {', '.join(STRATEGIES)} (K a whole "
                     "number of blocks, e.g. freeze:2)")


class ModelConfig(_Strict):
    backbone: str
    head: HeadConfig = HeadConfig()
    strategy: Annotated[str, AfterValidator(check_strategy)] = "auto"
    # Resolved to null where they do not apply (a pretrained backbone; no adapter).
    scratch: ScratchConfig | None = ScratchConfig()
    peft: PeftConfig | None = PeftConfig()
    # The backbone's first block (token and position embeddings, or the stem) kept as
    # pretrained whatever the strategy trains; auto: for text backbones.
    freeze_embeddings: bool | Auto = "auto"
    # hf: models whose config maps to code in their folder run that code when loaded.
    trust_remote_code: bool = False


PositiveFloat = Annotated[float, Field(gt=0.0)]


class TrainConfig(_Strict):
    optimizer: Optimizer = "auto"
    lr: PositiveFloat | Auto = "auto"
    head_lr: PositiveFloat | Auto = "auto"
    weight_decay: Annotated[float, Field(ge=0.0)] | Auto = "auto"
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9  # sgd (with Nesterov)
    # Learning rate of block i of N (0 at the input) is lr * layer_decay ** (N - 1 - i).
    layer_decay: Annotated[float, Field(gt=0.0, le=1.0)] | Auto = "auto"
    epochs: Annotated[int, Field(gt=0)] | Auto = "auto"
    batch_size: Annotated[int, Field(gt=0)] | Auto = "auto"
    warmup: Annotated[float, Field(ge=0.0, lt=1.0)] | Auto = "auto"
    schedule: Schedule = "auto"  # of the learning rate after warm-up; auto: cosine
    # Gradients of this many batches are summed before each optimizer step.
    accumulate: Annotated[int, Field(gt=0)] = 1
    # Stop after this many evaluations without a better validation score; null: never; auto:
    # 20 for a network from scratch (its 200-epoch schedules mostly peak early), else never.
    patience: Annotated[int, Field(gt=0)] | Auto | None = "auto"
    grad_clip: PositiveFloat | None = 1.0
    loss: Loss = "auto"
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] | Auto = "auto"
    class_weights: Literal["auto", "none", "balanced"] = "auto"
    focal_gamma: Annotated[float, Field(ge=0.0)] = 2.0
    # linear-probe and the first stage of lp-ft: the head alone, on cached backbone features.
    probe_epochs: Annotated[int, Field(gt=0)] | Auto = "auto"
    probe_lr: PositiveFloat | Auto = "auto"
    # Wall-time limit of one run (e.g. 300, "5m", "1h"); the schedule is fitted inside it.
    time_budget: Annotated[float, Field(gt=0.0), BeforeValidator(seconds)] | None = None
    # A resumable checkpoint after every epoch, and every this many steps (null: every 5 min).
    checkpoint_steps: Annotated[int, Field(gt=0)] | None = None
    log_to: Literal["none", "tensorboard"] = "none"  # metrics.jsonl is always written
    # Decay of the weight average that is evaluated and kept; null turns averaging off.
    ema: Annotated[float, Field(gt=0.0, lt=1.0)] | Auto | None = "auto"
    precision: Precision = "auto"
    # Processes that decode and augment images ahead of the training step (0: in the main one).
    workers: Annotated[int, Field(ge=0)] | Auto = "auto"
    # torch.compile the model before training: slower to start, faster per step on some hardware.
    compile: bool = False


class Range(_Strict):
    """A narrowed numeric range of a searched value."""

    low: float
    high: float


class SearchConfig(_Strict):
    """The search over fine-tuning configurations (tunesmith.search).

    Its first trial is the recipe. With neither `budget` nor `trials` the recipe alone is trained.
    A value given anywhere else in the config is fixed: not searched. `space` narrows what is
    searched: a list of choices (`model.strategy: [full, lora]`) or a range
    (`train.lr: {low: 1e-5, high: 1e-4}`) per searched key.
    """

    # Wall time of the whole run (e.g. "10m"); the search ends inside it, leaving time to
    # evaluate the final model.
    budget: Annotated[float, Field(gt=0.0), BeforeValidator(seconds)] | None = None
    trials: Annotated[int, Field(gt=0)] | None = None  # the first limit reached ends the search
    # Default: SQLite in the run folder (study.db); an SQLAlchemy URL (postgresql://...) or
    # journal:PATH (a file several processes may share) for many workers.
    storage: Annotated[str, AfterValidator(check_storage)] | None = None
    study: str | None = None  # default: the run's name
    sampler: Literal["tpe", "random"] = "tpe"  # random: uniform draws, a baseline to compare
    pruner: Literal["hyperband", "successive-halving", "none"] = "hyperband"
    # Models per trial, each validated on a fold of train+val; auto: 5 when they hold at most
    # 2,000 rows (a random or stratified split), else 1 (the val part as it is).
    folds: Annotated[int, Field(ge=1, le=20)] | Literal["auto"] = "auto"
    space: dict[str, list[Any] | Range] = Field(default_factory=dict)


class Config(_Strict):
    name: Annotated[str, AfterValidator(check_name)]
    task: Task = "auto"
    data: DataConfig
    model: ModelConfig
    train: TrainConfig = TrainConfig()
    search: SearchConfig = SearchConfig()
    seed: Seed = 0
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
        return self.output_dir.expanduser() / self.name

    def updated(self, **sections: Any) -> Config:
        """A copy with the given sections replaced, keeping where it came from."""
        copy = self.model_copy(update=sections)
        copy._base_dir = self._base_dir
        copy._source = self._source
        return copy

    def with_values(self, values: dict[str, Any]) -> Config:
        """This config as the user wrote it, with `{dotted key: value}` laid over it; values
        the user did not write stay unset (the recipe resolves them)."""
        raw = self.model_dump(mode="json", exclude_unset=True)
        for key, value in values.items():
            node = raw
            *sections, name = key.split(".")
            for part in sections:
                if not isinstance(node.get(part), dict):  # absent, or null (peft, scratch)
                    node[part] = {}
                node = node[part]
            node[name] = value
        return config_from_dict(raw, source=self._source, base_dir=self._base_dir)

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
        if parts[:2] == ["search", "space"] and len(parts) > 2:  # its keys are dotted names
            parts = ["search", "space", ".".join(parts[2:])]
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TunesmithError(
                    f"override {item!r} sets a key inside {'.'.join(parts[: depth + 1])!r}, "
                    "which another override set to a value",
                    file=source,
                    fix="set either the section's keys or the section itself, not both",
                )
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError as error:
            raise TunesmithError(
                f"cannot read the value of override {item!r}: {_first_line(error)}",
                file=source,
                fix="quote the value, e.g. --set 'data.train=\"my [1].csv\"', or close "
                "its brackets",
            ) from None
    return nested


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra` laid over it, nested mappings merged key by key."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: Any, model: type[BaseModel]) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        known, given = _keys_at(model, error["loc"][:-1]), str(error["loc"][-1])
        close = ([OTHER_NAMES[given]] if OTHER_NAMES.get(given) in known
                 else difflib.get_close_matches(given, known, n=1, cutoff=0.6))
        if close:
            return f"  {field}: unknown key; did you mean {close[0]!r}?"
        return f"  {field}: unknown key; remove it or check its spelling against the README"
    if kind == "missing":
        return f"  {field}: required but missing; add it"
    given = error.get("input")
    if isinstance(given, str):
        given = redacted(given)  # a URL's password (a database's: search.storage) is not shown
    return f"  {field}: {error['msg']} (got {given!r})"


def config_from_dict(raw: dict[str, Any], *, source: str, base_dir: Path) -> Config:
    """Validate a dict into a Config, listing every problem in one error."""
    config = _validated(Config, raw, source=source)
    config._base_dir = base_dir
    config._source = source
    return config


def inspect_options(raw: dict[str, Any], *, source: str = "command line") -> tuple[str, DataConfig]:
    """The task and data section `tunesmith inspect` was given, validated as a config's would be."""
    options = _validated(InspectOptions, raw, source=source)
    return options.task, options.data


class InspectOptions(_Strict):
    task: Task = "auto"
    data: DataConfig


def _validated(model: type[M], raw: dict[str, Any], *, source: str) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        # One error per field: a union like `int | "auto"` reports once for each branch.
        seen: dict[tuple[Any, ...], str] = {}
        for item in error.errors():
            loc = tuple(part for part in item["loc"] if not _is_union_branch(part))
            seen.setdefault(loc, _describe({**item, "loc": loc}, model))
        lines = "\n".join(seen.values())
        raise TunesmithError(
            f"the config has {len(seen)} problem(s):\n{lines}",
            file=source,
            fix="correct the fields listed above (see the config reference in the README)",
        ) from None


# What other tools call a key (Hugging Face's TrainingArguments, timm's train.py), for the
# suggestion an unknown key gets.
OTHER_NAMES = {
    "learning_rate": "lr", "num_train_epochs": "epochs", "num_epochs": "epochs",
    "per_device_train_batch_size": "batch_size", "train_batch_size": "batch_size",
    "lr_scheduler_type": "schedule", "scheduler": "schedule", "sched": "schedule",
    "warmup_ratio": "warmup", "opt": "optimizer", "optim": "optimizer",
    "max_seq_length": "max_length", "img_size": "image_size", "input_size": "image_size",
    "model_name": "backbone", "model_name_or_path": "backbone", "smoothing": "label_smoothing",
    "gradient_accumulation_steps": "accumulate", "max_grad_norm": "grad_clip",
    "clip_grad": "grad_clip", "mixed_precision": "precision", "model_ema_decay": "ema",
    "n_trials": "trials", "timeout": "budget",
}


def _keys_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys the config section at `loc` (("train",) for train.lr) takes, for suggestions."""
    section: Any = model
    for part in loc:
        fields = getattr(section, "model_fields", {})
        field = fields.get(part)
        if field is None:
            return []
        section = next((kind for kind in (field.annotation, *get_args(field.annotation))
                        if isinstance(kind, type) and issubclass(kind, BaseModel)), None)
    if not (isinstance(section, type) and issubclass(section, BaseModel)):
        return []
    return list(section.model_fields)


def _is_union_branch(part: Any) -> bool:
    # pydantic names the branch of a union it tried: 'int', 'constrained-int' (a bounded one)
    # or "literal['auto']".
    scalars = {"int", "float", "str", "bool"}
    return isinstance(part, str) and (
        part in scalars or part.removeprefix("constrained-") in scalars or "[" in part
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key written twice in one mapping is an error: PyYAML keeps the
    last and drops the first without a word, and a config would silently lose a setting."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:  # as written: `<<` merges are not expanded yet
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the loader itself refuses it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"found the key {key!r} twice: keep one", key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read, merge overrides into and validate the YAML config at `path`."""
    path = Path(path)
    if not path.is_file():
        raise TunesmithError(
            "config file not found", file=path, fix="pass the path of an existing YAML config"
        )
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as error:
        raise TunesmithError(
            f"not UTF-8 text: byte {error.start} cannot be read as UTF-8",
            file=path,
            fix="save the config as UTF-8",
        ) from None
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
