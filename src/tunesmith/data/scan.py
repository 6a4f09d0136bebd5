"""One pass over a source, a chunk at a time, keeping only what the checks need per row.

Per row that is a label code (or target, or label set), a 64-bit hash of the inputs for exact
duplicates and one of the normalized inputs for near duplicates (lower-cased text with punctuation
and spacing removed; a perceptual hash for images). Texts, paths and feature values are not kept, so
memory stays bounded by the chunk size however long the file is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.data.image_scan import ImageScan, scan_images
from tunesmith.data.sources import ID_COLUMN, IMAGE_COLUMN, Modality, Source, label_names
from tunesmith.data.task import (
    NAN_WORDS,
    LabelKind,
    class_key,
    class_text,
    comma_numbers,
    is_missing,
    label_set,
    numeric_class,
)
from tunesmith.errors import TunesmithError
from tunesmith.io import LABEL_JOINER

MISSING, UNSEEN = -1, -2  # class codes of a row without a label / with a label train never has


@dataclass(frozen=True)
class Columns:
    """The columns a dataset's roles are read from."""

    label: str
    text: str = "text"
    features: tuple[str, ...] = ()
    label_delimiter: str | None = None
    extra: tuple[str, ...] = ()  # group, time or split columns the split reads
    decimal_comma: bool = False  # a `;` file's numbers: 13,74 is 13.74

    def inputs(self, modality: Modality) -> list[str]:
        if modality == "text":
            return [self.text]
        if modality == "image":
            return [IMAGE_COLUMN]
        return list(self.features)


@dataclass
class Labels:
    """The label column of a part: class codes, label sets or targets, one entry per row."""

    kind: LabelKind
    classes: list[str]
    codes: np.ndarray  # int32 class index, -1 where missing (classification)
    sets: np.ndarray | None = None  # (rows, classes) uint8 (multilabel)
    targets: np.ndarray | None = None  # float64, NaN where missing (regression)
    not_numbers: np.ndarray | None = None  # bool: a regression target written as other text

    @property
    def missing(self) -> np.ndarray:
        if self.kind == "regression":
            assert self.targets is not None
            written = self.not_numbers if self.not_numbers is not None else False
            return np.asarray(np.isnan(self.targets) & ~written)
        return np.asarray(self.codes == MISSING)

    def matches(self, classes: list[str]) -> list[int]:
        """Each of these labels' classes as an index into `classes`, or UNSEEN. A class named
        by its number or a boolean matches it however written (01 in train, 1 in a given test
        file; a CSV's true, a JSON file's True), where the name alone does not."""
        index = {name: i for i, name in enumerate(classes)}
        keys = {key: i for i, name in enumerate(classes) if (key := class_key(name)) is not None}
        return [index.get(name, keys.get(class_key(name) or "", UNSEEN))
                for name in self.classes]

    def recoded(self, classes: list[str]) -> Labels:
        """The same labels with class indices into `classes`; a name not in it becomes UNSEEN."""
        if self.kind == "regression" or classes == self.classes:
            return self
        lookup = np.array([*self.matches(classes), MISSING], dtype=np.int32)
        if self.kind == "multilabel":
            assert self.sets is not None
            sets = np.zeros((len(self.codes), len(classes)), dtype=np.uint8)
            for local, code in enumerate(lookup[:-1]):
                if code >= 0:
                    sets[:, code] = self.sets[:, local]
            return Labels("multilabel", classes, self.codes, sets=sets)
        return Labels("classification", classes, lookup[self.codes])

    def values(self, rows: np.ndarray) -> list[Any]:
        """The labels of `rows` as Examples hold them."""
        if self.kind == "regression":
            assert self.targets is not None
            return [float(value) for value in self.targets[rows]]
        if self.kind == "multilabel":
            assert self.sets is not None
            return [tuple(self.classes[k] for k in np.flatnonzero(self.sets[row])) for row in rows]
        return [self.classes[code] for code in self.codes[rows]]


@dataclass
class _LabelReader:
    kind: LabelKind
    delimiter: str | None
    literal: bool = False  # class names as written (an image folder's folder names)
    decimal_comma: bool = False  # a regression target of 13,74 is 13.74
    vocabulary: dict[str, int] = field(default_factory=dict)
    codes: list[np.ndarray] = field(default_factory=list)
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (row, class) for multilabel
    targets: list[np.ndarray] = field(default_factory=list)
    not_numbers: list[np.ndarray] = field(default_factory=list)
    rows: int = 0

    def add(self, values: pd.Series) -> None:
        if self.kind == "regression":
            numbers = comma_numbers(values) if self.decimal_comma else values
            targets = pd.to_numeric(numbers, errors="coerce").to_numpy(dtype=float)
            self.targets.append(targets)
            words = values.map(lambda v: isinstance(v, str) and v.strip().lower() in NAN_WORDS)
            written = ~values.map(is_missing).to_numpy(dtype=bool) & ~words.to_numpy(dtype=bool)
            self.not_numbers.append(np.isnan(targets) & written)
        elif self.kind == "multilabel":
            for offset, value in enumerate(values.tolist()):
                for name in label_set(value, self.delimiter):
                    code = self.vocabulary.setdefault(name, len(self.vocabulary))
                    self.pairs.append((self.rows + offset, code))
            self.codes.append(np.where(values.map(is_missing), -1, 0).astype(np.int32))
        else:
            texts = values.map(lambda v: None if is_missing(v) else class_text(v))
            local, uniques = pd.factorize(texts, use_na_sentinel=True)
            lookup = np.array(
                [self.vocabulary.setdefault(name, len(self.vocabulary)) for name in uniques] + [-1],
                dtype=np.int32,
            )
            self.codes.append(lookup[local])  # the sentinel -1 picks the trailing -1
        self.rows += len(values)

    def finish(self) -> Labels:
        if self.kind == "classification" and not self.literal:
            self._read_numbers_as_numbers()
        classes = label_names(list(self.vocabulary))
        order = np.array([self.vocabulary[name] for name in classes], dtype=np.int32)
        remap = np.full(len(classes) + 1, -1, dtype=np.int32)
        remap[order] = np.arange(len(classes), dtype=np.int32)
        codes = np.concatenate(self.codes) if self.codes else np.zeros(0, np.int32)
        if self.kind == "regression":
            targets = np.concatenate(self.targets) if self.targets else np.zeros(0)
            not_numbers = (np.concatenate(self.not_numbers) if self.not_numbers
                           else np.zeros(0, dtype=bool))
            return Labels("regression", [], np.zeros(len(targets), np.int32), targets=targets,
                          not_numbers=not_numbers)
        if self.kind == "multilabel":
            sets = np.zeros((self.rows, len(classes)), dtype=np.uint8)
            if self.pairs:
                rows, local = np.asarray(self.pairs).T
                sets[rows, remap[local]] = 1
            return Labels("multilabel", classes, codes, sets=sets)
        return Labels("classification", classes, np.where(codes < 0, -1, remap[codes]))

    def _read_numbers_as_numbers(self) -> None:
        """Class labels that are all numbers, read as text (a CSV's): `nan` and the like are
        missing labels rather than a class, and `1` and `1.0` are one class, as in JSON."""
        names = {name: numeric_class(name) for name in self.vocabulary}
        if not any(names.values()) or any(
            name is None and original.lower() not in NAN_WORDS
            for original, name in names.items()
        ):
            return
        # A number written one way keeps its spelling (codes 01, 02 stay so); spellings of one
        # number (1 and 1.0) become the one plain name (1).
        spellings: dict[str, list[str]] = {}
        for original, name in names.items():
            if name is not None:
                spellings.setdefault(name, []).append(original)
        merged: dict[str, int] = {}
        recode = np.full(len(self.vocabulary) + 1, -1, dtype=np.int32)  # -1 stays missing
        for original, code in self.vocabulary.items():
            name = names[original]
            if name is not None:
                shown = original.strip() if len(spellings[name]) == 1 else name
                recode[code] = merged.setdefault(shown, len(merged))
        self.codes = [recode[codes] for codes in self.codes]
        self.vocabulary = merged


@dataclass
class PartScan:
    """What one pass over one source found."""

    name: str  # train, val or test
    source: Source
    modality: Modality
    rows: int
    columns: list[str]
    ids: np.ndarray  # str
    missing: dict[str, int]  # missing values per column
    labels: Labels
    exact: np.ndarray  # uint64 hash of the inputs
    near: np.ndarray  # uint64 hash of the normalized text, or perceptual hash of the image
    empty: np.ndarray  # bool: empty text
    text_chars: np.ndarray | None = None  # int32 characters per text
    images: ImageScan | None = None
    row_numbers: list[str] = dataclasses.field(default_factory=list)  # features 0, 1, 2, ...

    @property
    def readable(self) -> np.ndarray:
        if self.images is None:
            return np.ones(self.rows, dtype=bool)
        return self.images.readable


def normalized_text(texts: pd.Series) -> pd.Series:
    """Lower case, punctuation and runs of spacing removed: what near-duplicate texts share."""
    return (
        texts.fillna("").astype(str).str.lower().str.replace(r"[\W_]+", " ", regex=True).str.strip()
    )


def _hash(frame: pd.DataFrame | pd.Series) -> np.ndarray:
    return np.asarray(pd.util.hash_pandas_object(frame, index=False), dtype=np.uint64)


def check_columns(source: Source, header: list[str], needed: dict[str, str]) -> None:
    """Each needed column (name -> config key) exists, or an error that says what to set."""
    from tunesmith.data.sources import wrong_delimiter_error

    for column, key in needed.items():
        if column in header:
            continue
        if (wrong := wrong_delimiter_error(source, header)) is not None:
            raise wrong
        other = source.field in ("data.val", "data.test")  # the config names train's columns
        raise TunesmithError(
            f"column {column!r} not found; the file has columns {header}",
            file=source.path,
            field=key,
            fix=f"give {source.field} the columns of data.train (add {column!r})"
            if other
            else f"set {key} to one of those columns",
        )


def _cells_holding(values: pd.Series, kinds: tuple[type, ...]) -> tuple[int, int, str] | None:
    """How many cells of `values` hold one of `kinds` (a JSON list or object, a Parquet array),
    the first one's position and what it holds ("a list" or "an object"); None for none."""
    if values.dtype != object:
        return None
    nested = values.map(lambda v: isinstance(v, kinds)).to_numpy(dtype=bool)
    if not nested.any():
        return None
    first = int(np.flatnonzero(nested)[0])
    return int(nested.sum()), first, "an object" if isinstance(values.iloc[first], dict) else (
        "a list")


def _check_single_values(source: Source, frame: pd.DataFrame, inputs: list[str],
                         field: str) -> None:
    """A text or feature cell holds one value: a JSON list or object, or a Parquet array (an
    embedding), is refused by name rather than failing deep inside the checks or the model."""
    for column in inputs:
        found = _cells_holding(frame[column], (list, tuple, dict, set, np.ndarray))
        if found is None:
            continue
        count, first, what = found
        fix = ("join each row's text into one string" if field == "data.text_column" else
               "expand it into one column per value, or leave it out of data.feature_columns")
        raise source.error(
            f"column {column!r} holds {count} cell(s) with several values, not one "
            f"(data row {frame[ID_COLUMN].iloc[first]} holds {what})", fix, field=field)


def _check_label_values(source: Source, frame: pd.DataFrame, column: str,
                        kind: LabelKind) -> None:
    """A label is a value (a list of them for multilabel), never a JSON object: its text would
    become a class named "{'name': 'pos'}"."""
    found = _cells_holding(frame[column], (dict,) if kind == "multilabel" else (
        dict, list, tuple, np.ndarray))
    if found is not None:
        count, first, what = found
        raise source.error(
            f"the label column {column!r} holds {count} cell(s) that are not a label "
            f"(data row {frame[ID_COLUMN].iloc[first]} holds {what})",
            "write each label as a value (a list of them for multilabel), e.g. the object's name",
            field="data.label_column")


def scan_part(
    name: str,
    source: Source,
    frames: Iterable[pd.DataFrame],
    *,
    modality: Modality,
    kind: LabelKind,
    columns: Columns,
) -> PartScan:
    """Read every chunk of `frames` once and keep the per-row facts the checks use."""
    # A folder's name is its class as written: '01' and '1' are two, 'none' is one.
    labels = _LabelReader(kind, columns.label_delimiter, literal=source.format == "image-folder",
                          decimal_comma=columns.decimal_comma)
    ids: list[np.ndarray] = []
    exact: list[np.ndarray] = []
    near: list[np.ndarray] = []
    empty: list[np.ndarray] = []
    chars: list[np.ndarray] = []
    paths: list[str] = []
    missing: dict[str, int] = {}
    header: list[str] = []
    inputs = columns.inputs(modality)
    # Feature columns that so far hold each row's own number (from 0 or 1), and from which.
    counting: dict[str, set[int]] = {c: {0, 1} for c in inputs} if modality == "tabular" else {}
    position = 0
    for frame in frames:
        if not header:
            header = [c for c in frame.columns if c != ID_COLUMN]
            needed = {c: "data.feature_columns" for c in columns.features}
            needed.update({columns.label: "data.label_column"})
            if modality == "text":
                needed[columns.text] = "data.text_column"
            check_columns(source, header, needed)
        ids.append(frame[ID_COLUMN].astype(str).to_numpy(dtype=str))
        # Missing labels are the label check's business; here, missing inputs and features.
        for column, count in frame.drop(columns=[ID_COLUMN, columns.label]).isna().sum().items():
            missing[str(column)] = missing.get(str(column), 0) + int(count)
        _check_label_values(source, frame, columns.label, kind)
        labels.add(frame[columns.label])
        if kind == "multilabel" and (joined := next(
                (name for name in labels.vocabulary if LABEL_JOINER in name), None)):
            # test_predictions.csv, `tunesmith predict` and the report write a row's labels
            # joined by '|': a label holding it would read back as two
            raise source.error(
                f"the label {joined!r} holds '{LABEL_JOINER}', which tunesmith's outputs join a "
                "row's labels with", f"rename it (e.g. {joined.replace(LABEL_JOINER, '/')!r})",
                field="data.label_column")
        if modality == "image":
            paths.extend(frame[IMAGE_COLUMN].tolist())
            continue
        _check_single_values(source, frame, inputs,
                             "data.text_column" if modality == "text" else "data.feature_columns")
        if modality == "text":
            texts = frame[columns.text].fillna("").astype(str)
            normal = normalized_text(texts)
            exact.append(_hash(texts))
            near.append(_hash(normal))
            empty.append((normal == "").to_numpy(dtype=bool))
            chars.append(texts.str.len().to_numpy(dtype=np.int32))
        else:
            features = frame[inputs]
            exact.append(_hash(features))
            near.append(exact[-1])
            empty.append(features.isna().all(axis=1).to_numpy(dtype=bool))
            counting = _still_counting(counting, features, position)
            position += len(frame)
    rows = sum(len(chunk) for chunk in ids)
    images = scan_images(paths) if modality == "image" else None
    if images is not None:
        exact, near = [images.content_hash], [images.phash]
        empty = [np.zeros(rows, dtype=bool)]
    return PartScan(
        name=name,
        source=source,
        modality=modality,
        rows=rows,
        columns=header,
        ids=np.concatenate(ids) if ids else np.zeros(0, dtype=str),
        missing={column: count for column, count in missing.items() if count},
        labels=labels.finish(),
        exact=np.concatenate(exact) if exact else np.zeros(0, np.uint64),
        near=np.concatenate(near) if near else np.zeros(0, np.uint64),
        empty=np.concatenate(empty) if empty else np.zeros(0, bool),
        text_chars=np.concatenate(chars) if chars else None,
        images=images,
        row_numbers=sorted(counting) if rows >= ROW_NUMBER_LEAST_ROWS else [],
    )


ROW_NUMBER_LEAST_ROWS = 10  # fewer rows in order may be a real feature's few values


def _still_counting(counting: dict[str, set[int]], features: pd.DataFrame,
                    position: int) -> dict[str, set[int]]:
    """`counting` narrowed to the columns whose values in this chunk are still their rows'
    numbers (position + i, or one more: an index written by pandas' to_csv, a 1-based id)."""
    kept = {}
    expected = np.arange(position, position + len(features), dtype=np.float64)
    for column, starts in counting.items():
        values = pd.to_numeric(features[column], errors="coerce").to_numpy(dtype=np.float64)
        left = {start for start in starts if np.array_equal(values, expected + start)}
        if left:
            kept[column] = left
    return kept
