"""Cleaning the parts after the split, as the config allows, every drop counted.

The test part is never cleaned of duplicates: it is measured as given (or as split), and training
is what must not have seen it. So duplicates are dropped from train and val, first occurrence kept
(train before val, so val loses the rows train already has), and train and val rows whose inputs
occur in test are dropped too, exactly or nearly (normalized text, perceptual image hash). Tables
are not cleaned so by default (`CleanConfig.resolved`): their rows repeat feature values by
nature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.config import CleanConfig
from tunesmith.data.image_scan import confirm_near_pairs, near_duplicates
from tunesmith.data.inspect import NEAR_IMAGE_DISTANCE
from tunesmith.data.scan import PartScan
from tunesmith.errors import TunesmithError


@dataclass(frozen=True)
class Part:
    """Rows `rows` of the source `scan` was made from."""

    scan: PartScan
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def keep(self, mask: np.ndarray) -> Part:
        return Part(self.scan, self.rows[mask])

    def hashes(self, *, near: bool) -> np.ndarray:
        hashes: np.ndarray = (self.scan.near if near else self.scan.exact)[self.rows]
        return hashes


def readable_rows(scan: PartScan, clean: CleanConfig) -> tuple[np.ndarray, int]:
    """The rows that can be used, and how many unreadable ones were dropped."""
    readable = scan.readable
    if not clean.drop_unreadable and not readable.all():
        # The inspect finding already names the file; reaching here means the config was bypassed.
        raise TunesmithError(
            f"{int((~readable).sum())} image(s) cannot be read",
            file=scan.source.path,
            field=scan.source.field,
            fix="set data.clean.drop_unreadable: true, or replace the files",
        )
    return np.flatnonzero(readable), int((~readable).sum())


def _seen_in(part: Part, test: Part, *, near: bool) -> np.ndarray:
    """A mask over `part`'s rows: which occur in `test`, exactly or nearly."""
    hashes, reference = part.hashes(near=near), test.hashes(near=near)
    if not (near and part.scan.images is not None and test.scan.images is not None):
        return np.isin(hashes, reference)
    # Rows here are all readable, so no hash is the placeholder 0 of an unreadable image.
    pairs = near_duplicates(hashes, reference, max_distance=NEAR_IMAGE_DISTANCE)
    paths = [part.scan.images.paths[row] for row in part.rows]
    test_paths = [test.scan.images.paths[row] for row in test.rows]
    pairs = confirm_near_pairs(paths, test_paths, pairs)
    mask = np.zeros(len(hashes), dtype=bool)
    mask[pairs[:, 0]] = True
    return mask


def clean_parts(
    train: Part, val: Part, test: Part, clean: CleanConfig
) -> tuple[Part, Part, dict[str, Any]]:
    """Train and val with duplicates and test overlap dropped as `clean` says, and the counts."""
    clean = clean.resolved(train.scan.modality)
    counts: dict[str, Any] = {}
    if clean.drop_duplicates:
        pooled = np.concatenate([train.hashes(near=False), val.hashes(near=False)])
        repeated = pd.Series(pooled).duplicated(keep="first").to_numpy()
        in_train, in_val = repeated[: len(train)], repeated[len(train) :]
        counts["duplicates_dropped"] = {"train": int(in_train.sum()), "val": int(in_val.sum())}
        train, val = train.keep(~in_train), val.keep(~in_val)
    if clean.drop_test_overlap != "none":
        near = clean.drop_test_overlap == "near"
        dropped = {}
        kept = []
        for name, part in (("train", train), ("val", val)):
            seen = _seen_in(part, test, near=near)
            dropped[name] = int(seen.sum())
            kept.append(part.keep(~seen))
        train, val = kept
        counts["test_overlap_dropped"] = {**dropped, "match": clean.drop_test_overlap}
    for name, part in (("train", train), ("val", val)):
        if not len(part):
            raise TunesmithError(
                f"cleaning left the {name} part empty",
                file=part.scan.source.path,
                field="data.clean",
                fix="check the data for repeated rows, or set data.clean.drop_duplicates: false "
                "and data.clean.drop_test_overlap: none",
            )
    return train, val, counts
