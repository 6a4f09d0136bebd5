"""The data checks run by `tunesmith inspect` and at the start of every run.

Each check reads the per-row facts of a `PartScan` and returns findings: `fatal` when training on
the data would be meaningless (one class, no labels, unreadable images that cleaning may not drop),
`warning` when the result may mislead (duplicates, leakage between train and test, likely label
errors, heavy imbalance), `info` for what the user may want to know (image modes converted). The
report is the findings plus the numbers behind them, as JSON.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from tunesmith.data.image_scan import confirm_near_pairs, exact_duplicates, near_duplicates
from tunesmith.data.scan import UNSEEN, PartScan
from tunesmith.data.sources import IMAGE_SUFFIXES, files_left_out
from tunesmith.data.task import TaskSpec

Severity = Literal["fatal", "warning", "info"]
IMBALANCE_WARNING = 10.0  # largest class over smallest
NEAR_IMAGE_DISTANCE = 4  # bits of 64 in the perceptual hash
EXAMPLES = 5  # ids shown per finding
LABEL_ERROR_ROWS = 20_000
SMALL_SIDE, LARGE_SIDE, EXTREME_ASPECT = 16, 8192, 6.0


@dataclass(frozen=True)
class Finding:
    check: str
    severity: Severity
    message: str
    file: str
    field: str | None = None
    fix: str | None = None
    count: int = 0
    examples: list[str] = dataclasses.field(default_factory=list)


@dataclass
class DataReport:
    task: TaskSpec
    parts: dict[str, PartScan]
    findings: list[Finding]
    details: dict[str, Any]
    cleaning: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return self.parts["train"].labels.classes

    @property
    def fatal(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.severity == "fatal"]

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task.name,
            "label_kind": self.task.kind,
            "classes": self.classes,
            **self.details,
            "findings": [asdict(finding) for finding in self.findings],
            "cleaning": self.cleaning,
        }


@dataclass(frozen=True)
class Options:
    """What the checks may assume cleaning will do, so they say "dropped" instead of "fatal"."""

    drop_unreadable: bool = False
    label_errors: bool = True
    seed: int = 0


def inspect_parts(
    task: TaskSpec,
    parts: dict[str, PartScan],
    *,
    options: Options = Options(),
    label_error_features: Callable[[np.ndarray], Any] | None = None,
) -> DataReport:
    """Run every check on train (and val/test when given) and collect the findings."""
    train = parts["train"]
    unseen: dict[str, list[str]] = {}
    for name, part in parts.items():
        if name != "train":
            unseen[name] = sorted(
                label for label, code in zip(part.labels.classes,
                                             part.labels.matches(train.labels.classes),
                                             strict=True) if code == UNSEEN)
            part.labels = part.labels.recoded(train.labels.classes)
    findings: list[Finding] = []
    details: dict[str, Any] = {"parts": {}}
    for name, part in parts.items():
        details["parts"][name] = _part_details(task, part)
        findings += _label_findings(task, part, is_train=name == "train")
        findings += _missing_value_findings(task, part)
        findings += _row_number_findings(part) if name == "train" else []
        findings += _empty_text_findings(part)
        findings += _image_findings(part, options)
        duplicates, found = _duplicate_findings(part)
        details["parts"][name]["duplicates"] = duplicates
        findings += found
    for name in ("val", "test"):
        if name in parts:
            findings += _unseen_label_findings(parts[name], unseen[name])
            leakage, found = _leakage_findings(train, parts[name])
            details[f"leakage_train_{name}"] = leakage
            findings += found
    if options.label_errors and label_error_features is not None:
        errors, found = _label_error_findings(task, train, label_error_features, options.seed)
        details["label_errors"] = errors
        findings += found
    return DataReport(task, parts, findings, details)


# ----------------------------------------------------------------------------------------------
# numbers per part


def _part_details(task: TaskSpec, part: PartScan) -> dict[str, Any]:
    details: dict[str, Any] = {
        "file": str(part.source.path),
        "format": part.source.format,
        "rows": part.rows,
        "columns": len(part.columns),
        "column_names": part.columns,
        "missing_values": part.missing,
    }
    labels = part.labels
    if task.kind == "regression":
        assert labels.targets is not None
        finite = labels.targets[np.isfinite(labels.targets)]
        details["target"] = _summary(finite)
    else:
        counts = _label_counts(part)
        details["label_counts"] = counts
        present = [count for count in counts.values() if count > 0]
        if present:
            details["imbalance_ratio"] = round(max(present) / min(present), 2)
    if part.text_chars is not None:
        details["text_chars"] = _summary(part.text_chars)
    if part.images is not None:
        readable = part.images.readable
        details["images"] = {
            "unreadable": int((~readable).sum()),
            "modes": dict(Counter(m for m in part.images.modes if m is not None).most_common()),
            "width": _summary(part.images.widths[readable]),
            "height": _summary(part.images.heights[readable]),
        }
    return details


def _label_counts(part: PartScan) -> dict[str, int]:
    labels = part.labels
    if labels.kind == "multilabel":
        assert labels.sets is not None
        totals = labels.sets.sum(axis=0)
    else:
        totals = np.bincount(labels.codes[labels.codes >= 0], minlength=len(labels.classes))
    return {name: int(count) for name, count in zip(labels.classes, totals, strict=True)}


def _summary(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    quantiles = np.percentile(values, [0, 50, 95, 100])
    return {
        "min": float(quantiles[0]),
        "median": float(quantiles[1]),
        "p95": float(quantiles[2]),
        "max": float(quantiles[3]),
        "mean": round(float(np.mean(values)), 4),
    }


def _ids(part: PartScan, rows: Sequence[int] | np.ndarray) -> list[str]:
    return [str(part.ids[row]) for row in list(rows)[:EXAMPLES]]


def _what(task: TaskSpec) -> str:
    return "target (empty or NaN)" if task.kind == "regression" else "label"


def _rows(part: PartScan) -> str:
    """What a part's ids are: data row numbers (from 1) of a table, or image paths."""
    return "data rows" if part.source.format not in ("image-folder",) else "files"


def _finding(part: PartScan, check: str, severity: Severity, message: str, **rest: Any) -> Finding:
    return Finding(check, severity, message, str(part.source.path), **rest)


# ----------------------------------------------------------------------------------------------
# labels


def _label_findings(task: TaskSpec, part: PartScan, *, is_train: bool) -> list[Finding]:
    labels = part.labels
    missing = np.flatnonzero(labels.missing)
    field_name = "data.label_column" if part.modality != "image" else part.source.field
    if len(missing) == part.rows:
        return [
            _finding(
                part,
                "labels-missing",
                "fatal",
                f"all {part.rows} rows have no label",
                field=field_name,
                count=part.rows,
                fix="fill in the labels, or point data.label_column at the column that holds them",
            )
        ]
    found: list[Finding] = []
    if len(missing):
        found.append(
            _finding(
                part,
                "labels-missing",
                "fatal",
                f"{len(missing)} row(s) have no {_what(task)} ({_rows(part)} "
                f"{', '.join(_ids(part, missing))}{', ...' if len(missing) > EXAMPLES else ''})",
                field=field_name,
                count=len(missing),
                examples=_ids(part, missing),
                fix="fill in or remove the rows without a label",
            )
        )
    if task.kind == "regression":
        assert labels.targets is not None
        text = (labels.not_numbers if labels.not_numbers is not None
                else np.zeros(len(labels.targets), dtype=bool))
        if text.any():
            rows = np.flatnonzero(text)
            found.append(
                _finding(
                    part,
                    "target-not-a-number",
                    "fatal",
                    f"{len(rows)} regression target(s) are not numbers ({_rows(part)} "
                    f"{', '.join(_ids(part, rows))}{', ...' if len(rows) > EXAMPLES else ''})",
                    field="data.label_column",
                    count=len(rows),
                    examples=_ids(part, rows),
                    fix="a regression needs a number in every row: correct or remove those "
                    f"rows, or set task: {task.modality}-classification if the labels are classes",
                )
            )
        bad = np.flatnonzero(~np.isfinite(labels.targets) & ~labels.missing & ~text)
        if len(bad):
            found.append(
                _finding(
                    part,
                    "target-not-finite",
                    "fatal",
                    f"{len(bad)} regression target(s) are infinite or not a number "
                    f"({_rows(part)} {', '.join(_ids(part, bad))})",
                    field="data.label_column",
                    count=len(bad),
                    examples=_ids(part, bad),
                    fix="replace or remove the rows whose target is inf or NaN",
                )
            )
        return found
    if is_train:
        found += _class_count_findings(part, field_name)
    return found


def _class_count_findings(part: PartScan, field_name: str) -> list[Finding]:
    counts = _label_counts(part)
    present = {name: count for name, count in counts.items() if count > 0}
    if len(present) < 2 and part.labels.kind in ("classification", "multilabel"):
        only = next(iter(present), "?")
        fix = "add examples of the other classes, or point data.label_column at the real label"
        if part.labels.kind == "multilabel":  # one label a row has or not is a yes/no class
            fix = (f"add rows with other labels; for one label ({only!r} or not), write it as a "
                   "classification column of two classes")
        return [
            _finding(
                part,
                "single-class",
                "fatal",
                f"the labels have a single class ({only!r}); {part.labels.kind} needs two or "
                "more",
                field=field_name,
                fix=fix,
            )
        ]
    found: list[Finding] = []
    rare = {name: count for name, count in present.items() if count < 2}
    if rare:
        names = ", ".join(f"{name!r}" for name in list(rare)[:EXAMPLES])
        found.append(
            _finding(
                part,
                "rare-class",
                "fatal",
                f"{len(rare)} class(es) have a single example ({names}): they cannot appear in "
                "both training and evaluation",
                field=field_name,
                count=len(rare),
                examples=list(rare)[:EXAMPLES],
                fix="add examples of those classes, or remove them",
            )
        )
    ratio = max(present.values()) / min(present.values())
    if ratio >= IMBALANCE_WARNING:
        found.append(
            _finding(
                part,
                "imbalance",
                "warning",
                f"the classes are imbalanced: the largest has {ratio:.0f}x the rows of the "
                "smallest",
                field=field_name,
                fix="judge the model by macro-F1 or balanced accuracy, not accuracy alone",
            )
        )
    return found


def _unseen_label_findings(other: PartScan, unseen: list[str]) -> list[Finding]:
    if not unseen:
        return []
    return [
        _finding(
            other,
            "unseen-labels",
            "fatal",
            f"{other.name} labels {unseen[:EXAMPLES]} never occur in the training data",
            field="data.label_column",
            count=len(unseen),
            fix=f"keep to the training data's label values in {other.name}: drop or relabel "
            "the rows with the others (a model cannot predict a class it never trained on)",
        )
    ]


# ----------------------------------------------------------------------------------------------
# values


def _missing_value_findings(task: TaskSpec, part: PartScan) -> list[Finding]:
    found = []
    for column, count in part.missing.items():
        severity: Severity = "warning" if task.modality == "tabular" else "info"
        found.append(
            _finding(
                part,
                "missing-values",
                severity,
                f"column {column!r} has {count} missing value(s) ({count / part.rows:.1%})",
                field="data.feature_columns" if task.modality == "tabular" else None,
                count=count,
                fix="data.clean.impute fills them from training statistics"
                if task.modality == "tabular"
                else None,
            )
        )
    return found


def _empty_text_findings(part: PartScan) -> list[Finding]:
    if part.modality != "text":
        return []
    empty = np.flatnonzero(part.empty)
    if not len(empty):
        return []
    severity: Severity = "fatal" if len(empty) == part.rows else "warning"
    return [
        _finding(
            part,
            "empty-text",
            severity,
            f"{len(empty)} text(s) are empty or only punctuation",
            field="data.text_column",
            count=len(empty),
            examples=_ids(part, empty),
            fix="remove them, or check that data.text_column is the text",
        )
    ]


def _row_number_findings(part: PartScan) -> list[Finding]:
    """A feature column that holds each row's number (an index pandas' to_csv wrote, an id
    counted from 1) teaches the model the file's order, and nothing about the rows."""
    if not part.row_numbers:
        return []
    names = ", ".join(map(repr, part.row_numbers))
    return [_finding(
        part, "row-numbers", "warning",
        f"feature column(s) {names} hold each row's number (0, 1, 2, ... or 1, 2, 3, ...): an "
        "index or id, which tells the model the rows' order and nothing about them",
        field="data.feature_columns",
        fix="list the real features in data.feature_columns, or write the CSV without its "
        "index (pandas: to_csv(path, index=False))",
    )]


def _image_findings(part: PartScan, options: Options) -> list[Finding]:
    scan = part.images
    if scan is None:
        return []
    found: list[Finding] = []
    bad = np.flatnonzero(~scan.readable)
    if len(bad):
        first = int(bad[0])
        found.append(
            Finding(
                "unreadable-image",
                "warning" if options.drop_unreadable else "fatal",
                f"{len(bad)} image(s) cannot be read; first "
                f"{scan.paths[first] or f'data row {first + 1}'}: {scan.errors[first]}",
                scan.paths[first] or str(part.source.path),
                field=part.source.field,
                count=len(bad),
                examples=_ids(part, bad),
                fix="data.clean.drop_unreadable: true drops them (counted in data_report.json)"
                if not options.drop_unreadable
                else None,
            )
        )
    left_out = files_left_out(part.source)
    if left_out:
        listed = ", ".join(f"{count} {kind}" for kind, count in left_out.items())
        found.append(_finding(
            part, "files-left-out", "warning",
            f"{sum(left_out.values())} file(s) in the class folders are not images tunesmith "
            f"reads, and are left out: {listed}",
            count=sum(left_out.values()),
            fix=f"convert them to one of {', '.join(sorted(IMAGE_SUFFIXES))} to train on them",
        ))
    modes = Counter(mode for mode in scan.modes if mode not in (None, "RGB"))
    if modes:
        listed = ", ".join(f"{count} {mode}" for mode, count in modes.most_common())
        found.append(
            _finding(
                part,
                "image-modes",
                "info",
                f"images not in RGB: {listed}; each is converted (16-bit scaled by its range, "
                "transparency laid on white)",
                count=sum(modes.values()),
            )
        )
    readable = scan.readable
    short = np.minimum(scan.widths, scan.heights)
    long = np.maximum(scan.widths, scan.heights)
    odd = np.flatnonzero(
        readable
        & (
            (short < SMALL_SIDE)
            | (long > LARGE_SIDE)
            | (long > EXTREME_ASPECT * np.maximum(short, 1))
        )
    )
    if len(odd):
        found.append(
            _finding(
                part,
                "image-sizes",
                "warning",
                f"{len(odd)} image(s) have extreme sizes (a side under {SMALL_SIDE} px, over "
                f"{LARGE_SIDE} px, or an aspect ratio over {EXTREME_ASPECT:.0f})",
                count=len(odd),
                examples=_ids(part, odd),
                fix="check those files; resizing squashes extreme aspect ratios",
            )
        )
    return found


# ----------------------------------------------------------------------------------------------
# duplicates and leakage


def duplicate_rows(part: PartScan, *, near: bool) -> np.ndarray:
    """Rows whose inputs repeat an earlier row's (exactly, or nearly)."""
    usable = part.readable & ~part.empty
    if near and part.images is not None:
        pairs = near_duplicates(part.near, max_distance=NEAR_IMAGE_DISTANCE, valid=usable)
        pairs = confirm_near_pairs(part.images.paths, None, pairs)
        return np.unique(pairs[:, 1])
    hashes = part.near if near else part.exact
    repeated = pd.Series(hashes).duplicated(keep="first").to_numpy()
    return np.flatnonzero(repeated & usable)


def overlapping_rows(part: PartScan, other: PartScan, *, near: bool) -> np.ndarray:
    """Rows of `part` whose inputs also occur in `other` (exactly, or nearly)."""
    usable, other_usable = part.readable & ~part.empty, other.readable & ~other.empty
    if near and part.images is not None:
        pairs = near_duplicates(
            part.near,
            other.near,
            max_distance=NEAR_IMAGE_DISTANCE,
            valid=usable,
            other_valid=other_usable,
        )
        assert other.images is not None
        pairs = confirm_near_pairs(part.images.paths, other.images.paths, pairs)
    elif part.images is not None:
        pairs = exact_duplicates(part.exact, other.exact)
    else:
        hashes = part.near if near else part.exact
        other_hashes = (other.near if near else other.exact)[other_usable]
        return np.flatnonzero(np.isin(hashes, other_hashes) & usable)
    pairs = pairs[usable[pairs[:, 0]] & other_usable[pairs[:, 1]]]
    return np.unique(pairs[:, 0])


def _conflicting_labels(part: PartScan, rows: np.ndarray) -> int:
    """How many exact duplicates carry a different label from their first occurrence."""
    if part.labels.kind != "classification" or not len(rows):
        return 0
    frame = pd.DataFrame({"hash": part.exact, "label": part.labels.codes})
    first = frame.drop_duplicates("hash").set_index("hash")["label"]
    return int((first.loc[part.exact[rows]].to_numpy() != part.labels.codes[rows]).sum())


def _duplicate_findings(part: PartScan) -> tuple[dict[str, Any], list[Finding]]:
    exact = duplicate_rows(part, near=False)
    near = np.setdiff1d(duplicate_rows(part, near=True), exact)
    conflicts = _conflicting_labels(part, exact)
    details = {"exact": len(exact), "near": len(near), "exact_with_other_label": conflicts}
    found = []
    if len(exact):
        found.append(
            _finding(
                part,
                "duplicates",
                "warning",
                f"{len(exact)} row(s) repeat an earlier row exactly"
                + (f"; {conflicts} of them with a different label" if conflicts else ""),
                count=len(exact),
                examples=_ids(part, exact),
                fix="data.clean.drop_duplicates: true drops them from training"
                + (" (off by default for tables, whose rows repeat feature values by nature)"
                   if part.modality == "tabular" else ""),
            )
        )
    if len(near):
        what = "images" if part.images is not None else "texts (ignoring case and punctuation)"
        found.append(
            _finding(
                part,
                "near-duplicates",
                "info",
                f"{len(near)} row(s) are near duplicates of an earlier row: {what}",
                count=len(near),
                examples=_ids(part, near),
            )
        )
    return details, found


def _leakage_findings(train: PartScan, other: PartScan) -> tuple[dict[str, Any], list[Finding]]:
    exact = overlapping_rows(train, other, near=False)
    near = np.setdiff1d(overlapping_rows(train, other, near=True), exact)
    details = {"exact": len(exact), "near": len(near), "examples": _ids(train, exact)}
    if not len(exact) and not len(near):
        return details, []
    if train.modality == "tabular":  # the same feature values, not necessarily the same record
        message = (f"{len(exact)} training row(s) hold the feature values of a row of "
                   f"{other.name}: where features take few values that is expected; if they are "
                   "the same records, the measured score would flatter the model")
        fix = ("data.clean.drop_test_overlap: exact drops them from training (off by default "
               "for tables)")
    else:
        message = (f"{len(exact)} training row(s) also occur in {other.name} exactly and "
                   f"{len(near)} nearly: the measured score would flatter the model")
        fix = "data.clean.drop_test_overlap (near by default) drops them from training"
    return details, [
        _finding(
            train,
            f"leakage-{other.name}",
            "warning",
            message,
            count=len(exact) + len(near),
            examples=_ids(train, exact if len(exact) else near),
            fix=fix,
        )
    ]


# ----------------------------------------------------------------------------------------------
# likely label errors


def _label_error_findings(
    task: TaskSpec, part: PartScan, features: Callable[[np.ndarray], Any], seed: int
) -> tuple[dict[str, Any], list[Finding]]:
    from tunesmith.data.label_noise import find_label_issues

    if task.kind != "classification":
        return {"checked": False, "reason": f"not done for {task.kind} labels"}, []
    rows = np.flatnonzero(part.readable & ~part.labels.missing & ~part.empty)
    if len(rows) > LABEL_ERROR_ROWS:  # a seeded sample keeps the check to seconds on big data
        rows = np.sort(np.random.default_rng(seed).choice(rows, LABEL_ERROR_ROWS, replace=False))
    issues = find_label_issues(features(rows), part.labels.codes[rows], seed=seed)
    if issues is None:
        return {"checked": False, "reason": "too few examples per class"}, []
    if not issues.informative:
        reason = (
            f"the quick model ({issues.model}) is near chance: out-of-fold accuracy "
            f"{issues.accuracy:.3f} against {issues.majority:.3f} for the majority class"
        )
        return {"checked": False, "reason": reason}, []
    flagged = rows[issues.rows]
    classes = part.labels.classes
    examples = [
        {
            "id": str(part.ids[row]),
            "given": classes[int(given)],
            "suggested": classes[int(suggested)],
            "given_probability": round(float(p), 3),
        }
        for row, given, suggested, p in zip(  # every one, the most suspicious first
            flagged, issues.given, issues.suggested, issues.given_probability, strict=True)
    ]
    details = {
        "checked": True,
        "checked_rows": issues.checked_rows,
        "model": issues.model,
        "quick_model_accuracy": round(issues.accuracy, 4),
        "count": len(flagged),
        "examples": examples,
    }
    if not len(flagged):
        return details, []
    share = len(flagged) / max(1, issues.checked_rows)
    return details, [
        _finding(
            part,
            "label-errors",
            "warning",
            f"{len(flagged)} row(s) ({share:.1%} of those checked) look mislabelled to a quick "
            f"model ({issues.model}); the most suspicious: "
            + ", ".join(f"{e['id']} ({e['given']}->{e['suggested']})" for e in examples[:3]),
            field="data.label_column",
            count=len(flagged),
            examples=[str(example["id"]) for example in examples[:EXAMPLES]],
            fix="review those rows (all are listed in data_report.json)",
        )
    ]
