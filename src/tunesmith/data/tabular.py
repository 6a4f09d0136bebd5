"""Standardize tabular features: fitted on the training part, saved as plain JSON.

Numeric columns are imputed, then centred and scaled (ddof=0, as scikit-learn's StandardScaler),
with a 0/1 missing-indicator column when the training part had gaps in that column. Categorical
columns are one-hot encoded when they have at most `max_one_hot` values, and otherwise become one
ordinal column (frequency rank scaled to [0, 1]). The fitted state is lists, floats and strings
only, so a bundle never needs pickle and a prediction server applies exactly the same transform.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast, get_args

import numpy as np
import pandas as pd

from tunesmith.data.task import BOOLEAN_WORDS, NAN_WORDS, comma_numbers
from tunesmith.errors import DataError, TunesmithError

ColumnKind = Literal["numeric", "categorical"]
Impute = Literal["median", "mean", "most_frequent", "none"]

FORMAT = "tunesmith.tabular"
VERSION = 1
MISSING_CATEGORY = "<missing>"
IMPUTE_FIELD = "data.clean.impute"
IMPUTE_FIX = "set data.clean.impute to median, mean or most_frequent"
COLUMNS_FIELD = "data.feature_columns"


class BadValue(DataError):
    """A value the encoding cannot take. `row` is the position (from 0) of the first such value in
    the frame given, `count` how many there are: the frame knows no file, so whoever read it names
    the file and turns `row` into the row's id."""

    def __init__(self, problem: str, *, row: int, count: int, field: str, fix: str) -> None:
        super().__init__(problem, field=field, fix=fix)
        self.row = row
        self.count = count


# ----------------------------------------------------------------------------------------------
# column kinds


def column_kinds(frame: pd.DataFrame, columns: Sequence[str], *,
                 decimal_comma: bool = False) -> dict[str, ColumnKind]:
    """Numeric for numeric dtypes and for strings that all parse as numbers; else categorical.

    Bools are categorical. Integers stay numeric however few distinct values they have: a
    small-integer column is as often a count as a code, and a count loses its order if one-hot.
    With `decimal_comma` (a `;`-delimited file, as spreadsheets in much of Europe write them)
    `13,74` and `1.234,5` are numbers too.
    """
    _check_columns(frame, columns)
    return {name: _column_kind(frame[name], decimal_comma) for name in columns}


def _column_kind(series: pd.Series, decimal_comma: bool = False) -> ColumnKind:
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "categorical"
    if pd.api.types.is_numeric_dtype(dtype):
        return "numeric"
    if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
        return "categorical"
    present = series.dropna().astype(object)
    # to_numeric accepts True/False as numbers; an object column of bools is still a flag.
    if present.empty or any(isinstance(value, bool | np.bool_) for value in present):
        return "categorical"
    present = present[~missing_words(present)]  # "NA" in a column of numbers is a gap
    parsed = pd.to_numeric(comma_numbers(present) if decimal_comma else present,
                           errors="coerce")
    return "numeric" if not present.empty and bool(parsed.notna().all()) else "categorical"


def missing_words(series: pd.Series) -> np.ndarray:
    """Which cells of a column read as text hold a word for a missing value (NA, n/a, null,
    none, nan: what R, spreadsheets and pandas write), one bool per row."""
    if pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype):
        return np.zeros(len(series), dtype=bool)
    words = series.astype(object).map(lambda v: isinstance(v, str) and v.strip().lower())
    return np.asarray(words.isin(NAN_WORDS).to_numpy(), dtype=bool)


def _check_columns(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    absent = [name for name in columns if name not in frame.columns]
    if absent:
        raise TunesmithError(
            f"feature column(s) {absent} not in the data (it has {list(frame.columns)})",
            field=COLUMNS_FIELD,
            fix="list only columns the data has",
        )
    repeated = sorted({name for name in columns if list(columns).count(name) > 1})
    if repeated:
        raise TunesmithError(
            f"feature column(s) {repeated} listed more than once",
            field=COLUMNS_FIELD,
            fix="list each feature column once",
        )


# ----------------------------------------------------------------------------------------------
# numeric columns


# A scaled feature is at most this many standard deviations from the training mean. No training
# row can be further than sqrt(rows) from its own mean; a value 1e10 out is a placeholder or a
# typo (1e300 for unknown), and further out the network's float32 outputs overflow to inf.
FAR_STDS = 1e10


@dataclass(frozen=True)
class NumericColumn:
    """One numeric column: missing values become `fill`, then (x - mean) / std."""

    name: str
    fill: float
    mean: float
    std: float
    missing_indicator: bool
    decimal_comma: bool = False  # read from a `;` file: 13,74 is 13.74 (and 13.74 still is)

    @property
    def feature_names(self) -> list[str]:
        return [self.name, f"{self.name}__missing"] if self.missing_indicator else [self.name]

    def numbers(self, series: pd.Series) -> pd.Series:
        """The column's cells as numbers (decimal commas read where it was trained on them),
        NaN where a cell is none."""
        return pd.to_numeric(comma_numbers(series) if self.decimal_comma else series,
                             errors="coerce")

    def far_out(self, values: np.ndarray) -> np.ndarray:
        """Which values lie further than FAR_STDS from the training mean (NaN does not)."""
        return np.asarray(np.abs(values - self.mean) / self.std > FAR_STDS)

    def far_text(self, value: float) -> str:
        """How far `value` lies from the training rows, in their standard deviations."""
        return (f"{abs(value - self.mean) / self.std:.3g} standard deviations from the "
                f"training mean {self.mean:.6g} (at most {FAR_STDS:.0e} are taken)")

    def encode(self, series: pd.Series, impute: Impute, *, refuse_far: bool = True) -> np.ndarray:
        """The column scaled; a value further out than FAR_STDS is refused, or with
        `refuse_far=False` (prediction, which reports such a row and goes on) NaN."""
        values = _numeric_values(series, self.name, decimal_comma=self.decimal_comma)
        missing = np.isnan(values)
        _check_missing(self.name, missing, impute)
        filled = np.where(missing, self.fill, values)
        scaled = (filled - self.mean) / self.std
        far = np.flatnonzero(self.far_out(filled))
        if len(far) and not refuse_far:
            scaled[far] = np.nan
        elif len(far):
            raise BadValue(
                f"column {self.name!r} has {len(far)} value(s) too far out for the model, e.g. "
                f"{values[far[0]]:g}: {self.far_text(values[far[0]])}",
                row=int(far[0]),
                count=len(far),
                field=COLUMNS_FIELD,
                fix="correct or remove it (a placeholder such as 1e300 for unknown is better "
                    "left empty)",
            )
        if not self.missing_indicator:
            return scaled[:, None]
        return np.column_stack([scaled, missing.astype(np.float64)])


def _numeric_values(series: pd.Series, name: str, *, decimal_comma: bool = False) -> np.ndarray:
    """The column as float64 with NaN for missing; an error for text or inf values."""
    values: np.ndarray
    if pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_numeric_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        as_objects = series.astype(object).mask(missing_words(series), None)
        if decimal_comma:
            as_objects = comma_numbers(as_objects)
        parsed = pd.to_numeric(as_objects, errors="coerce")
        not_numbers = np.flatnonzero((parsed.isna() & as_objects.notna()).to_numpy())
        if len(not_numbers):
            raise BadValue(
                f"column {name!r} is numeric in the training part but has {len(not_numbers)} "
                f"value(s) that are not numbers, e.g. {as_objects.iloc[not_numbers[0]]!r}",
                row=int(not_numbers[0]),
                count=len(not_numbers),
                field=COLUMNS_FIELD,
                fix="use numbers (or leave the cell empty) in this column",
            )
        values = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
    infinite = np.flatnonzero(np.isinf(values))
    if len(infinite):
        raise BadValue(
            f"column {name!r} has {len(infinite)} inf value(s)",
            row=int(infinite[0]),
            count=len(infinite),
            field=COLUMNS_FIELD,
            fix="replace or remove inf values",
        )
    return values


def _fit_numeric(series: pd.Series, name: str, impute: Impute, *,
                 decimal_comma: bool = False) -> NumericColumn:
    values = _numeric_values(series, name, decimal_comma=decimal_comma)
    missing = np.isnan(values)
    _check_missing(name, missing, impute)
    fill = _numeric_fill(values[~missing], impute)
    filled = np.where(missing, fill, values)
    # A constant column would divide by 0 (or by rounding noise): leave it unscaled, as
    # StandardScaler does.
    constant = bool(filled.max() == filled.min())
    return NumericColumn(
        name=name,
        fill=fill,
        mean=float(filled.mean()),
        std=1.0 if constant else float(filled.std()),
        missing_indicator=bool(missing.any()),
        decimal_comma=decimal_comma and not pd.api.types.is_numeric_dtype(series.dtype),
    )


def _numeric_fill(present: np.ndarray, impute: Impute) -> float:
    if impute == "mean":
        return float(present.mean())
    if impute == "most_frequent":
        # The smallest of the most frequent values, as SimpleImputer picks.
        values, counts = np.unique(present, return_counts=True)
        return float(values[int(np.argmax(counts))])
    # "median"; with "none" nothing is missing, so the fill is never used.
    return float(np.median(present))


def _check_missing(name: str, missing: np.ndarray, impute: Impute) -> None:
    """`missing`: one bool per row."""
    if impute != "none" or not missing.any():
        return
    rows = np.flatnonzero(missing)
    raise BadValue(
        f"column {name!r} has {len(rows)} missing value(s) and imputation is off",
        row=int(rows[0]),
        count=len(rows),
        field=IMPUTE_FIELD,
        fix=IMPUTE_FIX,
    )


# ----------------------------------------------------------------------------------------------
# categorical columns


@dataclass(frozen=True)
class CategoricalColumn:
    """One categorical column: `categories` are the kept values, most frequent first.

    One-hot gives one 0/1 column per kept category (an unseen value is all zeros). Otherwise a
    single column holds rank / len(categories), and anything not kept gets the "other" code 1.0.
    """

    name: str
    categories: list[str]
    one_hot: bool
    fill: str

    @property
    def feature_names(self) -> list[str]:
        if self.one_hot:
            return [f"{self.name}={category}" for category in self.categories]
        return [f"{self.name}__ordinal"]

    def known_keys(self) -> pd.Series:
        """Each kept category's position by its key: a bundle from before booleans were
        spelled one way may hold `true` as a category, which is the key `True` now (the first
        of two categories with one key wins)."""
        keys = pd.Series(range(len(self.categories)),
                         index=[_category_key(category) for category in self.categories])
        return keys[~keys.index.duplicated(keep="first")]

    def encode(self, series: pd.Series, impute: Impute) -> np.ndarray:
        keys = _category_keys(series, self.name, self.fill, impute)
        # -1 for values the training part did not have (or did not keep).
        codes = self.known_keys().reindex(keys).fillna(-1).to_numpy(dtype=np.int64)
        if not self.one_hot:
            other = len(self.categories)
            return (np.where(codes < 0, other, codes) / other)[:, None]
        encoded = np.zeros((len(keys), len(self.categories)), dtype=np.float64)
        seen = codes >= 0
        encoded[np.flatnonzero(seen), codes[seen]] = 1.0
        return encoded


def _category_key(value: object) -> str:
    """One spelling per value, so 3, 3.0 and "3" (CSV at training, JSON at serving) agree, and
    so do a boolean and its word in any case (`true` in a CSV, `True` from pandas' read_csv or
    Parquet, `true` in JSON)."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, str) and (word := BOOLEAN_WORDS.get(value.strip().lower())):
        return word
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _category_keys(series: pd.Series, name: str, fill: str, impute: Impute) -> list[str]:
    values = series.astype(object)
    missing = values.isna().to_numpy()
    _check_missing(name, missing, impute)
    return [
        fill if is_missing else _category_key(value)
        for value, is_missing in zip(values.to_numpy(), missing, strict=True)
    ]


def _fit_categorical(
    series: pd.Series, name: str, impute: Impute, max_one_hot: int
) -> CategoricalColumn:
    gaps = series.isna().to_numpy()
    _check_missing(name, gaps, impute)
    missing = int(gaps.sum())
    counts = Counter(_category_key(value) for value in series.dropna().astype(object))
    # Ties broken by the value itself, so the layout does not depend on row order.
    ranked = sorted(counts, key=lambda key: (-counts[key], key))
    # most_frequent folds gaps into the top value; otherwise "missing" is a category of its own,
    # since a gap in a categorical column often carries meaning.
    fill = ranked[0] if impute == "most_frequent" else MISSING_CATEGORY
    if missing:
        counts[fill] += missing
        ranked = sorted(counts, key=lambda key: (-counts[key], key))
    return CategoricalColumn(
        name=name,
        categories=ranked[:max_one_hot],
        one_hot=len(ranked) <= max_one_hot,
        fill=fill,
    )


# ----------------------------------------------------------------------------------------------
# the encoding


@dataclass(frozen=True)
class TabularEncoding:
    """The fitted transform: numeric features first, then categorical ones, in column order."""

    numeric_columns: list[NumericColumn]
    categorical_columns: list[CategoricalColumn]
    impute: Impute

    @property
    def numeric(self) -> list[str]:
        return [column.name for column in self.numeric_columns]

    @property
    def categorical(self) -> list[str]:
        return [column.name for column in self.categorical_columns]

    @property
    def feature_names(self) -> list[str]:
        return [name for column in self._columns() for name in column.feature_names]

    def transform(self, frame: pd.DataFrame, *, refuse_far: bool = True) -> np.ndarray:
        """float32 (rows, features), using only the fitted statistics, never the frame's own. A
        number too far out (`NumericColumn.encode`) is refused, or with `refuse_far=False` NaN
        (its row's outputs are then not finite numbers)."""
        _check_columns(frame, [*self.numeric, *self.categorical])
        blocks = [column.encode(frame[column.name], self.impute, refuse_far=refuse_far)
                  if isinstance(column, NumericColumn)
                  else column.encode(frame[column.name], self.impute)
                  for column in self._columns()]
        if not blocks:
            return np.zeros((len(frame), 0), dtype=np.float32)
        return np.concatenate(blocks, axis=1).astype(np.float32)  # within FAR_STDS: finite

    def unseen(self, frame: pd.DataFrame) -> dict[str, tuple[list[str], int]]:
        """Per one-hot column, the values of `frame` the training rows did not have (sorted;
        a gap where training had none is MISSING_CATEGORY) and the rows holding them: they
        encode as none of the column's categories. (An ordinal column keeps its most frequent
        values only; training saw the rest as "other" too.)"""
        found = {}
        for column in self.categorical_columns:
            if not column.one_hot:
                continue
            keys = _category_keys(frame[column.name], column.name, column.fill, self.impute)
            known = set(column.known_keys().index)
            new = [key for key in keys if key not in known]
            if new:
                found[column.name] = (sorted(set(new)), len(new))
        return found

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (`json.dumps` works); `from_dict` gives back the same transform."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "impute": self.impute,
            "numeric": [asdict(column) for column in self.numeric_columns],
            "categorical": [asdict(column) for column in self.categorical_columns],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TabularEncoding:
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise _bundle_error(
                f"not a {FORMAT} version {VERSION} record "
                f"(format {data.get('format')!r}, version {data.get('version')!r})"
            )
        try:
            return cls(
                numeric_columns=[_numeric_from_dict(item) for item in data["numeric"]],
                categorical_columns=[_categorical_from_dict(item) for item in data["categorical"]],
                impute=_impute(data["impute"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise _bundle_error(f"malformed tabular encoding: {error!r}") from None

    def _columns(self) -> list[NumericColumn | CategoricalColumn]:
        return [*self.numeric_columns, *self.categorical_columns]


def _numeric_from_dict(item: Mapping[str, Any]) -> NumericColumn:
    return NumericColumn(
        name=str(item["name"]),
        fill=float(item["fill"]),
        mean=float(item["mean"]),
        std=float(item["std"]),
        missing_indicator=bool(item["missing_indicator"]),
        decimal_comma=bool(item.get("decimal_comma", False)),  # bundles from before: False
    )


def _categorical_from_dict(item: Mapping[str, Any]) -> CategoricalColumn:
    return CategoricalColumn(
        name=str(item["name"]),
        categories=[str(category) for category in item["categories"]],
        one_hot=bool(item["one_hot"]),
        fill=str(item["fill"]),
    )


def _impute(value: object) -> Impute:
    if value not in get_args(Impute):
        raise ValueError(f"impute must be one of {get_args(Impute)}, not {value!r}")
    return cast(Impute, value)


def _bundle_error(problem: str) -> TunesmithError:
    return TunesmithError(
        problem, field="tabular", fix="export the bundle again with this version of tunesmith"
    )


def fit_tabular(
    frame: pd.DataFrame,
    columns: Sequence[str],
    *,
    impute: str = "median",
    max_one_hot: int = 16,
    kinds: Mapping[str, ColumnKind] | None = None,
    decimal_comma: bool = False,
) -> TabularEncoding:
    """Fit on the training part only. `kinds` overrides `column_kinds` for the columns it names;
    `decimal_comma` reads `13,74` as a number (a `;`-delimited file's).

    `impute` is "median", "mean", "most_frequent" or "none" (missing values are then an error);
    the config's "auto" is resolved by the caller.
    """
    resolved_impute = _impute(impute)
    if max_one_hot < 1:
        raise ValueError(f"max_one_hot must be at least 1, not {max_one_hot}")
    given = kinds or {}
    resolved_kinds = {**column_kinds(frame, [c for c in columns if c not in given],
                                     decimal_comma=decimal_comma), **given}
    _check_has_values(frame, columns)
    return TabularEncoding(
        numeric_columns=[
            _fit_numeric(frame[name], name, resolved_impute, decimal_comma=decimal_comma)
            for name in columns
            if resolved_kinds[name] == "numeric"
        ],
        categorical_columns=[
            _fit_categorical(frame[name], name, resolved_impute, max_one_hot)
            for name in columns
            if resolved_kinds[name] == "categorical"
        ],
        impute=resolved_impute,
    )


def _check_has_values(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    if len(frame) == 0:
        raise TunesmithError(
            "the training part has no rows", field="data.split", fix="add rows to the data"
        )
    empty = [name for name in columns if frame[name].isna().all()]
    if empty:
        raise TunesmithError(
            f"feature column(s) {empty} have no values in the training part",
            field=COLUMNS_FIELD,
            fix="remove these columns from data.feature_columns or fill them",
        )
