"""Honest, reproducible train/val/test parts.

Every method makes the parts the same way: the test part is cut first from all rows (unless a test
file is given), then validation is cut from what remains (unless a validation file is given). For
single-label classification the stratified cut is exactly
`train_test_split(np.arange(n), test_size=test, random_state=seed, stratify=y)`, so a benchmark's
split and tunesmith's agree.

Methods: `stratified` (by class; iterative stratification for multilabel; quantile bins for
regression; plain random without labels), `random`, `group` (a group never spans two parts), `time`
(the latest rows are test, the ones before them val) and `column` (the data names each row's part).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit, train_test_split

from tunesmith.config import SplitConfig
from tunesmith.errors import TunesmithError

# Takes the row indices still to share out and a fraction; returns (kept, cut) index arrays.
Cut = Callable[[np.ndarray, float], tuple[np.ndarray, np.ndarray]]

_MAX_QUANTILE_BINS = 10
_COLUMN_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}


def config_method(method: str) -> str:
    """The `data.split.method` that makes a recorded split again: the stratified split of
    multilabel rows and of numbers is recorded by its own name (splits.json), but a config names
    every variant `stratified`, which picks the one the labels call for."""
    return "stratified" if method in ("iterative-stratified", "quantile-stratified") else method


@dataclass(frozen=True)
class Splits:
    """Row indices of each part and the method that made them (as recorded in splits.json).

    With a given test file `test` is empty (the test rows are that file's); likewise `val` with a
    given validation file.
    """

    train: list[int]
    val: list[int]
    test: list[int]
    method: str


@dataclass(frozen=True)
class SplitInputs:
    """What a split may look at, one entry per row (None where not available)."""

    rows: int
    classes: np.ndarray | None = None  # int class codes (single-label classification)
    multilabel: np.ndarray | None = None  # (rows, k) 0/1 matrix (multilabel)
    targets: np.ndarray | None = None  # float targets (regression): stratify on quantile bins
    groups: np.ndarray | None = None  # group values (any hashable dtype)
    times: np.ndarray | None = None  # sortable values (numbers or datetime64)
    assigned: np.ndarray | None = None  # strings from a split column, e.g. "train"/"val"/"test"

    def __post_init__(self) -> None:
        # A length mismatch is a bug in the caller, not something the user can fix.
        for name in ("classes", "multilabel", "targets", "groups", "times", "assigned"):
            values = getattr(self, name)
            if values is not None and len(values) != self.rows:
                raise ValueError(f"SplitInputs.{name} has {len(values)} entries, not {self.rows}")


def resolve_method(split: SplitConfig) -> str:
    """The method `auto` stands for: the most specific thing the config names."""
    if split.method != "auto":
        return split.method
    if split.column:
        return "column"
    if split.group_column:
        return "group"
    if split.time_column:
        return "time"
    return "stratified" if split.stratify else "random"


def make_splits(
    inputs: SplitInputs,
    split: SplitConfig,
    *,
    source: Path,
    test_given: bool,
    val_given: bool = False,
    test_replaced: bool = False,
) -> Splits:
    """Cut train/val/test row indices by `split`; no test cut when a test file is given, no val cut
    when a validation file is given. `test_replaced`: the test file stands in for the test part
    the config names (`tunesmith evaluate --data`), so a split column's test rows are left out."""
    method = resolve_method(split)
    if method == "column":
        parts = _column_parts(
            inputs, split, source=source, test_given=test_given, val_given=val_given,
            test_replaced=test_replaced,
        )
    else:
        cut, method = _cutter(
            method, inputs, split, source=source, parts_needed=3 - test_given - val_given
        )
        parts = _cut_parts(
            np.arange(inputs.rows), cut, split, test_given=test_given, val_given=val_given
        )
    splits = Splits(*parts, method=method)
    _check_not_empty(splits, inputs.rows, source=source, test_given=test_given, val_given=val_given)
    return splits


def ids_hash(ids: list[str]) -> str:
    """A short fingerprint of one part's ids, to tell whether two runs used the same rows."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# the shared order of cuts


def _cut_parts(
    indices: np.ndarray, cut: Cut, split: SplitConfig, *, test_given: bool, val_given: bool
) -> tuple[list[int], list[int], list[int]]:
    test = np.array([], dtype=int)
    val = np.array([], dtype=int)
    if not test_given:
        indices, test = cut(indices, split.test)
    if not val_given:
        indices, val = cut(indices, split.val)
    return indices.tolist(), val.tolist(), test.tolist()


def _cutter(
    method: str, inputs: SplitInputs, split: SplitConfig, *, source: Path, parts_needed: int
) -> tuple[Cut, str]:
    """The cut function for `method`, and the name to record (stratified may mean several)."""
    if method == "stratified":
        return _stratified_cutter(inputs, split, source=source)
    if method == "random":
        return _sklearn_cutter(None, split, source=source, fix=_RANDOM_FIX), "random"
    if method == "group":
        return _group_cutter(inputs, split, source=source, parts_needed=parts_needed), "group"
    if method == "time":
        return _time_cutter(inputs, split, source=source), "time"
    raise ValueError(f"unknown split method {method!r}")


def _check_not_empty(
    splits: Splits, rows: int, *, source: Path, test_given: bool, val_given: bool
) -> None:
    wanted = [("train", splits.train)]
    wanted += [] if val_given else [("val", splits.val)]
    wanted += [] if test_given else [("test", splits.test)]
    empty = [name for name, part in wanted if not part]
    if empty:
        raise TunesmithError(
            f"the {splits.method} split of {rows} rows leaves the {' and '.join(empty)} part empty",
            file=source,
            field="data.split",
            fix="add rows, or change data.split.val / data.split.test so every part gets some",
        )


# ----------------------------------------------------------------------------------------------
# stratified and random

_STRATIFIED_FIX = (
    "add examples to the rarest classes, lower the split fractions, "
    "or set data.split.method: random"
)
_RANDOM_FIX = "add rows, or change data.split.val / data.split.test so every part gets some"


def _stratified_cutter(inputs: SplitInputs, split: SplitConfig, *, source: Path) -> tuple[Cut, str]:
    if inputs.classes is not None:
        classes = np.asarray(inputs.classes)
        return _sklearn_cutter(classes, split, source=source, fix=_STRATIFIED_FIX), "stratified"
    if inputs.multilabel is not None:
        labels = np.asarray(inputs.multilabel) > 0
        return _iterative_cutter(labels, split), "iterative-stratified"
    if inputs.targets is not None:
        return _quantile_cutter(
            np.asarray(inputs.targets, dtype=float), split, source=source
        ), "quantile-stratified"
    # Nothing to stratify on (e.g. no labels): a random split is the honest fallback.
    return _sklearn_cutter(None, split, source=source, fix=_RANDOM_FIX), "random"


def _sklearn_cut(
    indices: np.ndarray,
    stratify: np.ndarray | None,
    fraction: float | int,  # a share of the rows, or a number of them
    seed: int,
    *,
    source: Path,
    fix: str,
) -> tuple[np.ndarray, np.ndarray]:
    if stratify is not None:
        # A class down to one row here cannot be shared out (scikit-learn refuses, naming the
        # class by its code): its row stays on the training side, and the rest is stratified.
        # So a class of 2 rows gets one into test and one into train, none into val.
        values, counts = np.unique(stratify, return_counts=True)
        lone = np.isin(stratify, values[counts < 2])
        if lone.any() and not lone.all():
            kept, cut = _sklearn_cut(indices[~lone], stratify[~lone],
                                     math.ceil(fraction * len(indices)), seed,
                                     source=source, fix=fix)
            return np.concatenate([kept, indices[lone]]), cut
    try:
        kept, cut = train_test_split(
            indices, test_size=fraction, random_state=seed, stratify=stratify
        )
    except ValueError as error:
        raise TunesmithError(
            f"cannot split {len(indices)} rows with a "
            f"{f'{fraction:.0%}' if isinstance(fraction, float) else f'{fraction}-row'} part: "
            f"{error}",
            file=source,
            field="data.split",
            fix=fix,
        ) from None
    return np.asarray(kept), np.asarray(cut)


def _sklearn_cutter(
    classes: np.ndarray | None, split: SplitConfig, *, source: Path, fix: str
) -> Cut:
    def cut(indices: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
        stratify = None if classes is None else classes[indices]
        return _sklearn_cut(indices, stratify, fraction, split.seed, source=source, fix=fix)

    return cut


def _quantile_cutter(targets: np.ndarray, split: SplitConfig, *, source: Path) -> Cut:
    def cut(indices: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
        # Bins are made per cut, so the val cut stratifies on the rows it actually shares out.
        cut_rows = int(np.ceil(fraction * len(indices)))
        # sklearn needs at least one row of every bin in each side of the cut.
        most = min(_MAX_QUANTILE_BINS, cut_rows, len(indices) - cut_rows)
        bins = _quantile_bins(targets[indices], most)
        return _sklearn_cut(indices, bins, fraction, split.seed, source=source, fix=_RANDOM_FIX)

    return cut


def _quantile_bins(values: np.ndarray, most: int) -> np.ndarray | None:
    """Bin codes from up to `most` quantile bins with at least 2 rows each; None if < 2 bins."""
    for count in range(most, 1, -1):
        edges = np.quantile(values, np.linspace(0.0, 1.0, count + 1)[1:-1])
        # Tied values can collapse bins, so renumber the bins that are really used.
        _, codes = np.unique(np.searchsorted(edges, values, side="right"), return_inverse=True)
        sizes = np.bincount(codes)
        if len(sizes) >= 2 and sizes.min() >= 2:
            return np.asarray(codes)
    return None


def _iterative_cutter(labels: np.ndarray, split: SplitConfig) -> Cut:
    def cut(indices: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
        in_cut = _iterative_stratification(labels[indices], fraction, split.seed)
        return indices[~in_cut], indices[in_cut]

    return cut


def _iterative_stratification(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Which rows go to the `fraction` part, by iterative stratification.

    Sechidis, Tsoumakas & Vlahavas (2011), for two parts: take the label with the fewest rows left
    to place (rare labels are the easiest to spoil), and give each of its rows to the part that
    still wants most of that label, then most rows; ties are broken by the seeded generator.
    Rows without any label go last, to the part that still wants most rows.
    """
    rng = np.random.default_rng(seed)
    rows = labels.shape[0]
    ratios = np.array([1.0 - fraction, fraction])
    want_rows = ratios * rows
    want_labels = np.outer(ratios, labels.sum(axis=0))
    left = labels.sum(axis=0)
    part = np.full(rows, -1)
    while left.any():
        live = np.flatnonzero(left)
        label = rng.choice(live[left[live] == left[live].min()])
        for row in rng.permutation(np.flatnonzero((part < 0) & labels[:, label])):
            chosen = _wanting_part(want_labels[:, label], want_rows, rng)
            part[row] = chosen
            want_labels[chosen] -= labels[row]
            want_rows[chosen] -= 1
            left -= labels[row]
    for row in rng.permutation(np.flatnonzero(part < 0)):
        chosen = _wanting_part(want_rows, want_rows, rng)
        part[row] = chosen
        want_rows[chosen] -= 1
    return np.asarray(part == 1)


def _wanting_part(want_label: np.ndarray, want_rows: np.ndarray, rng: np.random.Generator) -> int:
    best = np.flatnonzero(want_label == want_label.max())
    best = best[want_rows[best] == want_rows[best].max()]
    return int(rng.choice(best))


# ----------------------------------------------------------------------------------------------
# group and time


def _group_cutter(
    inputs: SplitInputs, split: SplitConfig, *, source: Path, parts_needed: int
) -> Cut:
    codes = _group_codes(inputs, split, source=source, parts_needed=parts_needed)

    def cut(indices: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
        splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=split.seed)
        try:
            kept, held_out = next(splitter.split(indices, groups=codes[indices]))
        except ValueError as error:
            raise TunesmithError(
                f"cannot split {len(np.unique(codes[indices]))} groups with a {fraction:.0%} "
                f"part: {error}",
                file=source,
                field="data.split",
                fix="use a column with more groups, or change data.split.val / data.split.test",
            ) from None
        return indices[kept], indices[held_out]

    return cut


def _group_codes(
    inputs: SplitInputs, split: SplitConfig, *, source: Path, parts_needed: int
) -> np.ndarray:
    """Integer codes for the group values (any hashable type), after checking there are enough."""
    if inputs.groups is None:
        raise TunesmithError(
            "the group split needs a column of group values, and none is named",
            file=source,
            field="data.split.group_column",
            fix="set data.split.group_column to the column whose rows must stay together",
        )
    values = pd.Series(inputs.groups, dtype=object)
    try:
        # Sorted codes are what GroupShuffleSplit makes of the raw values, so the parts match it.
        codes, uniques = pd.factorize(values, sort=True)
    except TypeError:  # values that cannot be ordered against each other (mixed types)
        codes, uniques = pd.factorize(values)
    missing = int((codes < 0).sum())
    if missing:
        raise TunesmithError(
            f"{missing} rows have no value in the group column {split.group_column!r}",
            file=source,
            field="data.split.group_column",
            fix="give every row a group value, or drop the rows without one",
        )
    if len(uniques) < parts_needed:
        raise TunesmithError(
            f"the group column {split.group_column!r} has {len(uniques)} groups, too few for "
            f"{parts_needed} parts (a group never spans two parts)",
            file=source,
            field="data.split.group_column",
            fix="name a column with more distinct groups, or set data.split.method: stratified",
        )
    return np.asarray(codes)


def _time_cutter(inputs: SplitInputs, split: SplitConfig, *, source: Path) -> Cut:
    times = _checked_times(inputs, split, source=source)

    def cut(indices: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
        # Stable, so tied times keep the file's order; both parts come out oldest first.
        ordered = indices[np.argsort(times[indices], kind="stable")]
        cut_rows = int(np.ceil(fraction * len(ordered)))  # rounded like train_test_split
        return ordered[: len(ordered) - cut_rows], ordered[len(ordered) - cut_rows :]

    return cut


def _checked_times(inputs: SplitInputs, split: SplitConfig, *, source: Path) -> np.ndarray:
    if inputs.times is None:
        raise TunesmithError(
            "the time split needs a column of times, and none is named",
            file=source,
            field="data.split.time_column",
            fix="set data.split.time_column to a column of dates or numbers",
        )
    times = np.asarray(inputs.times)
    missing = int(np.asarray(pd.isna(times)).sum())
    if missing:
        raise TunesmithError(
            f"{missing} rows have no value in the time column {split.time_column!r}",
            file=source,
            field="data.split.time_column",
            fix="give every row a time, or drop the rows without one",
        )
    return times


# ----------------------------------------------------------------------------------------------
# column


def _column_parts(
    inputs: SplitInputs, split: SplitConfig, *, source: Path, test_given: bool, val_given: bool,
    test_replaced: bool = False,
) -> tuple[list[int], list[int], list[int]]:
    parts = _assigned_parts(inputs, split, source=source)
    if test_replaced:  # out of train and val, as in the run; the given file is the test part
        parts = np.where(parts == "test", "unused", parts)
    for name, given in (("test", test_given), ("val", val_given)):
        if given and (parts == name).any():
            raise TunesmithError(
                f"the split column {split.column!r} names {int((parts == name).sum())} {name} "
                f"rows, but data.{name} is given too",
                file=source,
                field="data.split.column",
                fix=f"either drop data.{name} or mark those rows train",
            )
    if not test_given and not (parts == "test").any():
        raise TunesmithError(
            f"the split column {split.column!r} names no test rows",
            file=source,
            field="data.split.column",
            fix="mark some rows test, or give a test file as data.test",
        )
    train = np.flatnonzero(parts == "train")
    val = np.flatnonzero(parts == "val")
    if not val_given and val.size == 0:
        # No validation rows named: cut them from train as the stratified method would.
        cut, _ = _stratified_cutter(inputs, split, source=source)
        train, val = cut(train, split.val)
    return train.tolist(), val.tolist(), np.flatnonzero(parts == "test").tolist()


def _assigned_parts(inputs: SplitInputs, split: SplitConfig, *, source: Path) -> np.ndarray:
    """Each row's part name ("train", "val" or "test") from the split column's values."""
    if inputs.assigned is None:
        raise TunesmithError(
            "the column split needs a column naming each row's part, and none is named",
            file=source,
            field="data.split.column",
            fix="set data.split.column to a column holding train / val / test",
        )
    spelled = [str(value).strip().lower() for value in inputs.assigned]
    unknown = sorted({value for value in spelled if value not in _COLUMN_ALIASES})
    if unknown:
        raise TunesmithError(
            f"the split column {split.column!r} holds {len(unknown)} unknown values, e.g. "
            f"{unknown[:5]}",
            file=source,
            field="data.split.column",
            fix=f"use only {sorted(_COLUMN_ALIASES)} (any case)",
        )
    return np.array([_COLUMN_ALIASES[value] for value in spelled], dtype=object)
