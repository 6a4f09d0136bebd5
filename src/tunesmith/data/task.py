"""What the task is: the modality from the source, the label kind from the label column.

A label column holds one class per row (classification, binary or multiclass), a set of classes per
row (multilabel: a JSON list, or strings joined by `data.label_delimiter`), or a number
(regression). Numbers are read as classes when they are whole and few; a config's `task` always
overrides the guess.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from tunesmith.data.sources import Modality, Source

LabelKind = Literal["classification", "multilabel", "regression"]
NAN_WORDS = ["nan", "na", "n/a", "null", "none"]
MAX_NUMERIC_CLASSES = 30  # whole-number labels with more distinct values than this are a target
MAX_TEXT_SHARE_OF_TARGET = 0.05  # a column of numbers may hold this share of other cells


@dataclass(frozen=True)
class TaskSpec:
    modality: Modality
    kind: LabelKind

    @property
    def name(self) -> str:
        return f"{self.modality}-{self.kind}"

    @classmethod
    def parse(cls, name: str) -> TaskSpec:
        modality, kind = name.split("-", 1)
        return cls(modality, kind)  # type: ignore[arg-type]


def infer_modality(source: Source, *, text_column: str) -> Modality:
    """Images for image sources; text when the table has the text column; tabular otherwise."""
    if source.is_image:
        return "image"
    return "text" if text_column in source.columns() else "tabular"


def is_missing(value: Any) -> bool:
    """No value: None, NaN, a blank string, or pandas' missing markers (`pd.NA` of the nullable
    `string`/`Int64`/`Float64` columns Parquet files hold, `NaT`)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float | np.floating) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def class_text(value: Any) -> str:
    # JSON numbers arrive as int/float; 1.0 and 1 are the same class.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, np.generic):
        return class_text(value.item())
    return str(value).strip()


def numeric_class(name: str) -> str | None:
    """A class name written as a finite number, as `class_text` names that number (`1.0` and
    `01` are `1`); None when it is not one."""
    try:
        return str(int(name))
    except ValueError:
        pass
    try:
        number = float(name)
    except ValueError:
        return None
    return class_text(number) if math.isfinite(number) else None


# A boolean's word in any case, as Python spells the boolean (what pandas and JSON readers give).
BOOLEAN_WORDS = {"true": "True", "false": "False"}


def class_key(name: str) -> str | None:
    """What a class name stands for however a file writes it: a number (`numeric_class`), or a
    boolean (a CSV's `true`, a JSON file's `true` that Python names `True`); None otherwise."""
    return numeric_class(name) or BOOLEAN_WORDS.get(name.strip().lower())


def label_set(value: Any, delimiter: str | None) -> tuple[str, ...]:
    """A multilabel value as a sorted tuple of class names (empty for no labels)."""
    if isinstance(value, list | tuple | np.ndarray):
        items = [class_text(item) for item in value]
    elif is_missing(value):
        items = []
    elif delimiter is not None:
        items = [item.strip() for item in str(value).split(delimiter)]
    else:
        items = [class_text(value)]
    return tuple(sorted({item for item in items if item}))


# A number written with a decimal comma, dots grouping its thousands or not: 13,74 and 1.234,5.
DECIMAL_COMMA = re.compile(r"^\s*[-+]?(\d{1,3}(\.\d{3})+|\d+),\d+\s*$")


def comma_numbers(values: pd.Series) -> pd.Series:
    """Cells written with a decimal comma as the point-decimal text pandas parses (13,74 ->
    13.74, 1.234,5 -> 1234.5); every other cell as it is."""
    text = values.astype(object)
    comma = text.map(lambda v: isinstance(v, str) and DECIMAL_COMMA.match(v) is not None)
    if not comma.any():
        return text
    plain = text[comma].str.replace(".", "", regex=False).str.replace(",", ".", regex=False)
    return text.where(~comma, plain)


def infer_kind(labels: pd.Series, *, delimiter: str | None,
               decimal_comma: bool = False) -> LabelKind:
    """Multilabel for lists or a delimiter; regression for fractional or many distinct numbers,
    also when a few cells among them are not numbers (a `?` for unknown, a typo): the data check
    then names those rows, where reading the column as classes would make each one a class."""
    present = labels[~labels.map(is_missing)].astype(object)
    if delimiter is not None or any(
        isinstance(v, list | tuple | np.ndarray) for v in present[:1000]
    ):
        return "multilabel"
    if decimal_comma:  # a `;` file's 13,74, as its features are read
        present = comma_numbers(present)
    numbers = pd.to_numeric(present, errors="coerce").astype(float)
    # "nan" written in a numeric column is a missing target, not a class named "nan".
    words = present.astype(str).str.strip().str.lower()
    text = numbers.isna() & ~words.isin(NAN_WORDS)
    if len(present) == 0 or text.mean() > MAX_TEXT_SHARE_OF_TARGET:
        return "classification"
    finite = numbers[np.isfinite(numbers.to_numpy())]
    whole = bool((finite == finite.round()).all())
    if whole and finite.nunique() <= MAX_NUMERIC_CLASSES:
        return "classification"
    return "regression"
