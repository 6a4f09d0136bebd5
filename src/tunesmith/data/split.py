"""Honest, reproducible train/val/test parts.

The test part is cut first from all rows (stratified by label, seeded), exactly as
`train_test_split(np.arange(n), test_size=test, random_state=seed, stratify=y)` would, so a
benchmark's split and tunesmith's agree; validation is then cut from what remains.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from tunesmith.config import SplitConfig
from tunesmith.errors import TunesmithError


@dataclass(frozen=True)
class Splits:
    """Row indices of each part. With a given test file, `test` indexes that file."""

    train: list[int]
    val: list[int]
    test: list[int]


def _cut(
    indices: np.ndarray,
    targets: np.ndarray,
    fraction: float,
    split: SplitConfig,
    *,
    source: Path,
) -> tuple[np.ndarray, np.ndarray]:
    stratify = targets if split.stratify else None
    try:
        kept, cut = train_test_split(
            indices, test_size=fraction, random_state=split.seed, stratify=stratify
        )
    except ValueError as error:
        raise TunesmithError(
            f"cannot split {len(indices)} rows with a {fraction:.0%} part: {error}",
            file=source,
            field="data.split",
            fix="add examples to the rarest classes, lower the split fractions, "
            "or set data.split.stratify: false",
        ) from None
    return np.asarray(kept), np.asarray(cut)


def make_splits(
    targets: list[int], split: SplitConfig, *, source: Path, test_given: bool
) -> Splits:
    """Cut train/val (and test, unless a test file is given) from rows with class `targets`."""
    indices = np.arange(len(targets))
    y = np.asarray(targets)
    test = np.array([], dtype=int)
    if not test_given:
        indices, test = _cut(indices, y, split.test, split, source=source)
    train, val = _cut(indices, y[indices], split.val, split, source=source)
    return Splits(train.tolist(), val.tolist(), test.tolist())


def ids_hash(ids: list[str]) -> str:
    """A short fingerprint of one part's ids, to tell whether two runs used the same rows."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
