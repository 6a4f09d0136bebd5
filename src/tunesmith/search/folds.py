"""Cross-validation where the data is small: every training and validation row scores a trial.

With tens or a few hundred validation rows, one validation score is mostly noise (its standard
error is 2 points at 400 rows, 7 at 40) and a search that ranks trials by it picks the luckiest.
Where the training and validation parts together hold at most `SMALL_ROWS` rows (split at
random or stratified, the val part not a file of its own), a search
trial trains one model per fold of their union (stratified by class), each scored on the fold
it did not see; the trial's score is that of the out-of-fold predictions, one per row, so it
rests on all of them. The chosen trial's fold models predict together as an ensemble (averaged
probabilities), which is also what bagging does for small sets. The test part stays out of it.

A tabular set keeps the encoding fitted on the training part (feature statistics, no labels),
which every member of an ensemble must share.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold

from tunesmith.config import Config
from tunesmith.data import TaskData
from tunesmith.data.sources import Examples
from tunesmith.errors import TunesmithError

SMALL_ROWS = 2_000  # train + val rows up to which a search cross-validates by default
AUTO_FOLDS = 5
ORDERED_SPLITS = ("time", "group", "column")  # splits a shuffled k-fold would undo


@dataclass(frozen=True)
class Fold:
    data: TaskData  # its train and val parts; the test part is the data's own
    val_rows: np.ndarray  # the positions of its val rows in `pooled(data)`


def fold_count(config: Config, data: TaskData) -> int:
    """How many folds a search's trials train: 1 (the validation part as it is) or more."""
    folds, method = config.search.folds, data.splits.get("method")
    if folds == "auto":
        given_val = data.splits.get("val") == "given file"  # the user's own validation
        if method in ORDERED_SPLITS or given_val or len(data.train) + len(data.val) > SMALL_ROWS:
            return 1
        return max(1, min(AUTO_FOLDS, _smallest_class(data)))
    if folds > 1 and method in ORDERED_SPLITS:
        raise TunesmithError(
            f"cross-validation shuffles rows across folds, which a {method} split exists to "
            "prevent",
            file=config.source, field="search.folds",
            fix="set search.folds: 1 (validate on the val part), or use a random split",
        )
    if folds > 1 and _smallest_class(data) < folds:
        raise TunesmithError(
            f"{folds} folds need at least {folds} rows of each class in train and val together; "
            f"the rarest has {_smallest_class(data)}",
            file=config.source, field="search.folds",
            fix=f"set search.folds to at most {max(1, _smallest_class(data))}",
        )
    return int(folds)


def _smallest_class(data: TaskData) -> int:
    if data.spec.kind != "classification":
        return len(data.train) + len(data.val)
    counts = pd.Series([*data.train.labels, *data.val.labels]).value_counts()
    return int(counts.min())


def pooled(data: TaskData) -> Examples:
    """The training rows, then the validation rows, as one part."""
    train, val = data.train, data.val
    return Examples(
        modality=train.modality,
        inputs=[*train.inputs, *val.inputs],
        labels=[*train.labels, *val.labels],
        ids=[*train.ids, *val.ids],
        source=train.source,
        features=None if train.features is None or val.features is None
        else pd.concat([train.features, val.features], ignore_index=True),
    )


def make_folds(data: TaskData, folds: int, seed: int) -> list[Fold]:
    pool = pooled(data)
    targets = np.asarray(data.targets(pool))
    if data.spec.kind == "classification":
        splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(targets, targets)
    else:
        splits = KFold(folds, shuffle=True, random_state=seed).split(targets)
    return [
        Fold(replace(data, train=pool.subset(list(train)), val=pool.subset(list(val))), val)
        for train, val in splits
    ]


def out_of_fold(
    folds: list[Fold], outputs: list[np.ndarray], targets: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Each fold's outputs on its val rows, put back in the pooled rows' order."""
    rows = np.concatenate([fold.val_rows for fold in folds])
    order = np.argsort(rows)
    return np.concatenate(outputs)[order], np.concatenate(targets)[order]
