"""The data stage: read, check, clean and split what the user has on disk. It knows no model.

inspect:  sources -> one scan per source (chunk by chunk) -> checks -> DataReport
load:     sources read whole -> the same scans and checks (fatal ones stop the run) -> unreadable
          rows dropped -> split -> duplicates and test overlap dropped -> Examples per part
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunesmith.config import Config, DataConfig
from tunesmith.console import console
from tunesmith.data.clean import Part, clean_parts, readable_rows
from tunesmith.data.inspect import DataReport, Finding, Options, inspect_parts
from tunesmith.data.scan import Columns, PartScan, check_columns, scan_part
from tunesmith.data.sources import (
    ID_COLUMN,
    IMAGE_COLUMN,
    Examples,
    Modality,
    Source,
    open_source,
)
from tunesmith.data.split import SplitInputs, ids_hash, make_splits
from tunesmith.data.tabular import (
    BadValue,
    TabularEncoding,
    column_kinds,
    fit_tabular,
    missing_words,
)
from tunesmith.data.task import TaskSpec, infer_kind, infer_modality
from tunesmith.errors import DataError, TunesmithError

FrameRows = Callable[[np.ndarray], pd.DataFrame]


@dataclass(frozen=True)
class TaskData:
    """The three parts of a dataset, its class names (sorted) and what inspection found."""

    spec: TaskSpec
    classes: list[str]
    train: Examples
    val: Examples
    test: Examples
    splits: dict[str, Any]
    report: DataReport
    tabular: TabularEncoding | None = None

    @property
    def task(self) -> str:
        return self.spec.name

    @property
    def modality(self) -> Modality:
        return self.spec.modality

    @property
    def median_image_side(self) -> int | None:
        """The median of max(width, height) over the readable training images."""
        scan = self.report.parts["train"].images
        if scan is None:
            return None
        sides = np.maximum(scan.widths, scan.heights)[scan.readable]
        return int(np.median(sides)) if len(sides) else None

    def targets(self, part: Examples) -> list[Any]:
        """Class indices (classification), 0/1 vectors (multilabel) or numbers (regression)."""
        return label_targets(part.labels, self.classes, self.spec.kind)


def label_targets(labels: list[Any], classes: list[str], kind: str) -> list[Any]:
    """`labels` as targets against `classes`: class indices (classification), 0/1 vectors
    (multilabel) or the numbers themselves (regression)."""
    if kind == "regression":
        return list(labels)
    index = {name: i for i, name in enumerate(classes)}
    if kind == "multilabel":
        vectors = np.zeros((len(labels), len(classes)), dtype=np.float32)
        for row, names in enumerate(labels):
            vectors[row, [index[name] for name in names]] = 1.0
        return list(vectors)
    return [index[label] for label in labels]


# ----------------------------------------------------------------------------------------------
# sources and task


def _open(data: DataConfig, path: Path, field: str) -> Source:
    return open_source(
        path,
        field=field,
        format=data.format,
        delimiter=data.delimiter,
        encoding=data.encoding,
        image_column=data.image_column,
        text_column=data.text_column,
    )


def _sources(data: DataConfig, resolve: Callable[[Path], Path]) -> dict[str, Source]:
    sources = {"train": _open(data, resolve(data.train), "data.train")}
    for name in ("val", "test"):
        path = getattr(data, name)
        if path is not None:
            sources[name] = _open(data, resolve(path), f"data.{name}")
    return sources


def resolve_task(task: str, data: DataConfig, train: Source) -> TaskSpec:
    """The task the config names, or the one the data shows: modality and label kind."""
    modality = infer_modality(train, text_column=data.text_column)
    if task != "auto":
        spec = TaskSpec.parse(task)
        if spec.modality == "image" and train.format in ("csv", "tsv"):
            # A manifest is a table with a column of image paths: this one's is not named so.
            raise TunesmithError(
                f"task {task} reads a manifest's column of image paths, and this file has no "
                f"column {data.image_column!r} (data.image_column); its columns are "
                f"{train.columns()}",
                file=train.path,
                field="data.image_column",
                fix="set data.image_column to the column of image paths, or point data.train at "
                "an image folder",
            )
        if (spec.modality == "image") != train.is_image:
            raise TunesmithError(
                f"task {task} does not fit this data ({train.format})",
                file=train.path,
                field="task",
                fix="set task: auto, or point data.train at "
                + ("an image folder or manifest" if spec.modality == "image" else "a table"),
            )
        return spec
    if train.format == "image-folder":  # a folder per class, whatever the folders are named
        return TaskSpec(modality, "classification")
    first = next(train.frames(chunk_rows=10_000))
    check_columns(train, [c for c in first.columns if c != ID_COLUMN], _needed(data, modality))
    kind = infer_kind(first[data.label_column], delimiter=data.label_delimiter,
                      decimal_comma=decimal_comma(data))
    return TaskSpec(modality, kind)


def _needed(data: DataConfig, modality: Modality) -> dict[str, str]:
    needed = {data.label_column: "data.label_column"}
    if modality == "text":
        needed[data.text_column] = "data.text_column"
    split = data.split
    for column, key in (
        (split.group_column, "data.split.group_column"),
        (split.time_column, "data.split.time_column"),
        (split.column, "data.split.column"),
    ):
        if column is not None:
            needed[column] = key
    return needed


def _columns(data: DataConfig, header: list[str], modality: Modality) -> Columns:
    split = data.split
    extra = tuple(c for c in (split.group_column, split.time_column, split.column) if c)
    features: tuple[str, ...] = ()
    if modality == "tabular":
        reserved = {data.label_column, ID_COLUMN, *extra}
        features = tuple(data.feature_columns or [c for c in header if c not in reserved])
        if not features:
            raise TunesmithError(
                "the table has no feature columns besides the label",
                field="data.feature_columns",
                fix="add feature columns, or check data.label_column",
            )
    return Columns(
        label=data.label_column,
        text=data.text_column,
        features=features,
        label_delimiter=data.label_delimiter,
        extra=extra,
        decimal_comma=decimal_comma(data),
    )


# ----------------------------------------------------------------------------------------------
# features for the label-error check


def _label_error_features(
    modality: Modality, columns: Columns, rows_of: FrameRows, file: Path, *,
    decimal_comma: bool = False,
) -> Any:
    from tunesmith.data.label_noise import image_features, text_features

    def features(rows: np.ndarray) -> Any:
        frame = rows_of(rows)
        if modality == "text":
            return text_features(frame[columns.text].fillna("").astype(str).tolist())
        if modality == "image":
            return image_features(frame[IMAGE_COLUMN].tolist())
        with _naming_rows(file, frame[ID_COLUMN].astype(str).tolist()):
            encoding = fit_tabular(frame, list(columns.features), impute="median",
                                   decimal_comma=decimal_comma)
            return encoding.transform(frame)

    return features


@contextlib.contextmanager
def _naming_rows(file: Path, ids: Sequence[str]) -> Iterator[None]:
    """An encoding error names `file` and, for a bad value, its row by id (`ids`: one per row of
    the frame encoded): the encoding sees only a frame, not where it was read from."""
    try:
        yield
    except BadValue as error:
        at = "data row" if error.count == 1 else "first at data row"
        raise DataError(
            f"{error.problem} ({at} {ids[error.row]})",
            file=file,
            field=error.field,
            fix=error.fix,
        ) from None
    except TunesmithError as error:
        if error.file is not None:
            raise
        raise TunesmithError(error.problem, file=file, field=error.field, fix=error.fix) from None


def take_rows(source: Source, rows: np.ndarray) -> pd.DataFrame:
    """The given rows (sorted indices) of a source, in one more pass over its chunks."""
    taken, offset = [], 0
    for frame in source.frames():
        inside = rows[(rows >= offset) & (rows < offset + len(frame))] - offset
        taken.append(frame.iloc[inside])
        offset += len(frame)
    return pd.concat(taken, ignore_index=True)


# ----------------------------------------------------------------------------------------------
# inspect


def inspect_data(
    data: DataConfig,
    *,
    task: str = "auto",
    resolve: Callable[[Path], Path] = lambda path: path,
    seed: int = 0,
) -> DataReport:
    """Scan and check the data a config (or `tunesmith inspect`) names, a chunk at a time."""
    sources = _sources(data, resolve)
    spec = resolve_task(task, data, sources["train"])
    columns = _columns(data, sources["train"].columns(), spec.modality)
    train = sources["train"]
    report = _checked(
        spec,
        columns,
        data,
        {name: source.frames() for name, source in sources.items()},
        sources,
        rows_of=lambda rows: take_rows(train, rows),
        seed=seed,
    )
    if spec.modality == "tabular":
        report.findings += _value_findings(data, columns, sources)
    return report


def decimal_comma(data: DataConfig) -> bool:
    """Whether a table's numbers may be written with a decimal comma (13,74): in a file whose
    fields are split by `;`, as spreadsheets in much of Europe write CSV. Elsewhere a comma in a
    number groups thousands (1,234), so it is not read as a decimal point."""
    return data.delimiter == ";"


def _imputation(data: DataConfig) -> str:
    """How a table's gaps are filled: `auto` is the median."""
    return "median" if data.clean.impute == "auto" else data.clean.impute


def _value_findings(
    data: DataConfig, columns: Columns, sources: dict[str, Source]
) -> list[Finding]:
    """A value in a given val or test table that the encoding fit on the training table cannot
    take (text in a column of numbers, inf, a gap with imputation off): what a run refuses before
    training (`_fit_tabular`), which the per-row scans cannot see, as a fatal finding."""
    given = [name for name in ("val", "test") if name in sources]
    if not columns.features or not given:
        return []
    impute = _imputation(data)
    found: list[Finding] = []
    encoding: TabularEncoding | None = None
    for name in ("train", *given):
        source = sources[name]
        frame = source.read()
        try:
            with _naming_rows(source.path, frame[ID_COLUMN].astype(str).tolist()):
                if encoding is None:
                    encoding = fit_tabular(frame, list(columns.features), impute=impute,
                                           decimal_comma=decimal_comma(data))
                else:
                    encoding.transform(frame)
        except DataError as error:
            found.append(Finding("bad-values", "fatal", error.problem, str(source.path),
                                 field=error.field, fix=error.fix))
            if encoding is None:  # the training table itself: nothing to measure the others by
                break
    return found


def _checked(
    spec: TaskSpec,
    columns: Columns,
    data: DataConfig,
    frames: dict[str, Iterable[pd.DataFrame]],
    sources: dict[str, Source],
    *,
    rows_of: FrameRows,
    seed: int,
) -> DataReport:
    """One scan per source over `frames`, then every check; `rows_of` reads training rows back
    for the label-error check."""
    scans = {
        name: scan_part(
            name, source, frames[name], modality=spec.modality, kind=spec.kind, columns=columns
        )
        for name, source in sources.items()
    }
    return inspect_parts(
        spec,
        scans,
        options=Options(drop_unreadable=data.clean.drop_unreadable, seed=seed),
        label_error_features=_label_error_features(
            spec.modality, columns, rows_of, sources["train"].path,
            decimal_comma=decimal_comma(data),
        ),
    )


def fatal_error(report: DataReport) -> DataError:
    """The first fatal finding as the error a run stops with."""
    first: Finding = report.fatal[0]
    more = len(report.fatal) - 1
    problem = first.message + (
        f" (and {more} more fatal problem(s): `tunesmith inspect` lists them)" if more else ""
    )
    return DataError(problem, file=first.file, field=first.field, fix=first.fix)


# ----------------------------------------------------------------------------------------------
# load for a run


def load_task_data(config: Config, *, test_replaced: bool = False) -> TaskData:
    """Read, check, split and clean the data the config names. `test_replaced`: its data.test
    stands in for the test part the run had (`tunesmith evaluate --data`), see `make_splits`."""
    data = config.data
    sources = _sources(data, config.path)
    spec = resolve_task(config.task, data, sources["train"])
    frames = {name: source.read() for name, source in sources.items()}
    header = [c for c in frames["train"].columns if c != ID_COLUMN]
    check_columns(sources["train"], header, _needed(data, spec.modality))
    columns = _columns(data, header, spec.modality)
    train_frame = frames["train"]
    report = _checked(
        spec,
        columns,
        data,
        {name: [frame] for name, frame in frames.items()},
        sources,
        rows_of=lambda rows: train_frame.iloc[rows],
        seed=config.seed,
    )
    scans = report.parts
    if report.fatal:
        raise fatal_error(report)
    parts, record, dropped = _split(config, scans, train_frame, test_replaced=test_replaced)
    train, val, counts = clean_parts(*parts, data.clean)
    report.cleaning = {"unreadable_dropped": dropped, **counts}
    _check_classes_kept(parts[0], train, report.classes, report.cleaning)
    examples = {
        name: _examples(part, frames[part.scan.name], spec.modality, columns)
        for name, part in (("train", train), ("val", val), ("test", parts[2]))
    }
    record["parts"] = {
        name: {
            "rows": len(part),
            "source": str(part.source),
            "ids_sha256": ids_hash(part.ids),
        }
        for name, part in examples.items()
    }
    tabular = _fit_tabular(config, examples, columns, report) if columns.features else None
    _count_image_conversions(report, scans, data.clean.image_mode)
    return TaskData(
        spec,
        report.classes,
        examples["train"],
        examples["val"],
        examples["test"],
        record,
        report,
        tabular,
    )


def _check_classes_kept(before: Part, after: Part, classes: list[str],
                        cleaning: dict[str, Any]) -> None:
    """No class loses all its training rows to cleaning (`before` it, train as split; `after`
    it, what trains), nor all its rows to unreadable images: a class with none would be
    predicted without ever having been trained on. (A class a time split leaves out of train is
    the split's business.)"""
    labels = before.scan.labels
    if labels.kind != "classification":  # a multilabel split may leave a rare label out anyway
        return

    def held(codes: np.ndarray) -> np.ndarray:
        return np.bincount(codes[codes >= 0], minlength=len(classes))

    readable = before.scan.readable
    lost = ((held(labels.codes) > 0) & (held(labels.codes[readable]) == 0)) | (
        (held(labels.codes[before.rows]) > 0) & (held(labels.codes[after.rows]) == 0))
    gone = [name for name, out in zip(classes, lost, strict=True) if out]
    if not gone:
        return
    named = {"unreadable_dropped": "unreadable images", "duplicates_dropped": "duplicates",
             "test_overlap_dropped": "rows seen in test"}
    dropped = [what for key, what in named.items()
               if isinstance(value := cleaning.get(key), dict) and value.get("train")]
    raise DataError(
        f"class(es) {', '.join(map(repr, gone[:10]))}{' ...' if len(gone) > 10 else ''} have no "
        f"training rows left after cleaning dropped {', '.join(dropped) or 'rows'}",
        file=after.scan.source.path,
        field="data.clean",
        fix="replace the unreadable files or add readable examples of the class, or remove the "
        "class from the data",
    )


def _split(
    config: Config, scans: dict[str, PartScan], frame: pd.DataFrame, *, test_replaced: bool
) -> tuple[tuple[Part, Part, Part], dict[str, Any], dict[str, int]]:
    """Usable rows of train split into parts (or the given val/test files used as they are)."""
    data = config.data
    train_scan = scans["train"]
    usable, dropped_train = readable_rows(train_scan, data.clean)
    dropped = {"train": dropped_train}
    labels = train_scan.labels
    inputs = SplitInputs(
        rows=len(usable),
        classes=labels.codes[usable] if labels.kind == "classification" else None,
        multilabel=labels.sets[usable] if labels.sets is not None else None,
        targets=labels.targets[usable] if labels.targets is not None else None,
        groups=_column(frame, data.split.group_column, usable),
        times=_times(frame, data.split.time_column, usable, train_scan.source.path),
        assigned=_column(frame, data.split.column, usable),
    )
    splits = make_splits(
        inputs,
        data.split,
        source=train_scan.source.path,
        test_given="test" in scans,
        val_given="val" in scans,
        test_replaced=test_replaced,
    )
    parts = []
    for name in ("train", "val", "test"):
        if name in scans and name != "train":
            rows, dropped[name] = readable_rows(scans[name], data.clean)
            parts.append(Part(scans[name], rows))
        else:
            parts.append(Part(train_scan, usable[np.asarray(getattr(splits, name), dtype=int)]))
    record = {
        "method": splits.method,
        "seed": data.split.seed,
        "val": "given file" if "val" in scans else f"{data.split.val:.0%} of the rest",
        "test": "given file" if "test" in scans else f"{data.split.test:.0%} of all rows",
        "group_column": data.split.group_column,
        "time_column": data.split.time_column,
        "split_column": data.split.column,
    }
    return (parts[0], parts[1], parts[2]), record, dropped


def _column(frame: pd.DataFrame, column: str | None, rows: np.ndarray) -> np.ndarray | None:
    if column is None:
        return None
    return np.asarray(frame[column].astype(str), dtype=object)[rows]  # type: ignore[no-any-return]


def _times(
    frame: pd.DataFrame, column: str | None, rows: np.ndarray, source: Path
) -> np.ndarray | None:
    """The time column as numbers, or else as dates; a value that is neither is an error (an
    empty one is left for the split to report)."""
    if column is None:
        return None
    values = frame[column].iloc[rows]
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.notna().sum() >= values.notna().sum():
        return np.asarray(numbers, dtype=float)
    times = pd.to_datetime(values, errors="coerce", format="mixed")
    unread = np.flatnonzero((values.notna() & times.isna()).to_numpy())
    if len(unread):
        first = unread[0]
        raise DataError(
            f"{len(unread)} value(s) in the time column {column!r} are neither dates nor "
            f"numbers, e.g. {values.iloc[first]!r} (data row {frame[ID_COLUMN].iloc[rows[first]]})",
            file=source,
            field="data.split.time_column",
            fix="write every time as a date (2024-05-31, 2024-05-31 14:00) or a number",
        )
    return np.asarray(times)


def _examples(part: Part, frame: pd.DataFrame, modality: Modality, columns: Columns) -> Examples:
    rows = part.rows
    selected = frame.iloc[rows]
    if modality == "text":
        inputs = selected[columns.text].fillna("").astype(str).tolist()
    elif modality == "image":
        inputs = selected[IMAGE_COLUMN].astype(str).tolist()
    else:
        inputs = []
    return Examples(
        modality=modality,
        inputs=inputs,
        labels=part.scan.labels.values(rows),
        ids=selected[ID_COLUMN].astype(str).tolist(),
        source=part.scan.source.path,
        features=selected[list(columns.features)].reset_index(drop=True)
        if modality == "tabular"
        else None,
    )


def _fit_tabular(
    config: Config, parts: dict[str, Examples], columns: Columns, report: DataReport
) -> TabularEncoding:
    """Fit on train, then encode val and test once with it: a value it cannot take (text in a
    numeric column, inf, a gap with imputation off) stops the run here, naming its file and row,
    rather than after training, when they are first evaluated."""
    impute = _imputation(config.data)
    train = parts["train"]
    assert train.features is not None
    # Whether a column holds numbers is read off every row of the training file, whichever part
    # the split gave it: a stray "12 kg" made the column categories when the split put it in
    # train and stopped the run when it put it in test. (Its statistics are train's alone.)
    from_file = [part for part in parts.values()
                 if part.source == train.source and part.features is not None]
    pooled = pd.concat([part.features for part in from_file], ignore_index=True)
    pooled_ids = [row for part in from_file for row in part.ids]
    kinds = column_kinds(pooled, list(columns.features), decimal_comma=decimal_comma(config.data))
    with _naming_rows(train.source, train.ids):
        encoding = fit_tabular(train.features, list(columns.features), impute=impute,
                               decimal_comma=decimal_comma(config.data), kinds=kinds)
    for name in ("val", "test"):
        part = parts[name]
        assert part.features is not None
        with _naming_rows(part.source, part.ids):
            encoding.transform(part.features)
    features = train.features
    numeric = set(encoding.numeric)  # where "NA" is a gap (a category elsewhere)
    gaps = {c: features[c].isna().to_numpy() | (missing_words(features[c]) if c in numeric else 0)
            for c in features.columns}
    missing = {c: int(gap.sum()) for c, gap in gaps.items() if gap.any()}
    report.cleaning["imputed"] = {"strategy": impute, "train_values_filled": missing}
    stray = _mostly_numbers(pooled, encoding.categorical, pooled_ids)
    if stray:
        report.cleaning["mostly_numbers_read_as_categories"] = stray
        for column, found in stray.items():
            console.print(
                f"[yellow]column {column!r} of {train.source} is numbers but for "
                f"{found['text_values']} value(s), e.g. {found['example']!r} (data row "
                f"{found['row']}): it is read as categories[/] (correct those values, or write "
                "an empty cell for a gap, to have it read as numbers)"
            )
    return encoding


def _mostly_numbers(
    features: pd.DataFrame, categorical: list[str], ids: list[str]
) -> dict[str, dict[str, Any]]:
    """Categorical columns whose values are numbers but for a few (at most 1 in 20): a typo or a
    unit in one cell turns a column of numbers into one category per distinct number."""
    found = {}
    for column in categorical:
        values = features[column]
        present = values.notna().to_numpy() & ~missing_words(values)
        if not present.any() or pd.api.types.is_bool_dtype(values.dtype):
            continue
        text = present & pd.to_numeric(values.astype(object), errors="coerce").isna().to_numpy()
        if 0 < text.sum() <= present.sum() / 20:
            first = int(np.flatnonzero(text)[0])
            found[column] = {"text_values": int(text.sum()), "example": str(values.iloc[first]),
                             "row": ids[first]}
    return found


def _count_image_conversions(report: DataReport, scans: dict[str, PartScan], mode: str) -> None:
    converted = {
        name: sum(1 for m in scan.images.modes if m is not None and m != mode)
        for name, scan in scans.items()
        if scan.images is not None
    }
    if converted:
        report.cleaning["images_converted"] = {"to": mode, **converted}


__all__ = [
    "DataReport",
    "Examples",
    "TaskData",
    "fatal_error",
    "inspect_data",
    "load_task_data",
    "resolve_task",
]
