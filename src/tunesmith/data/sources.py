"""Reading what a user has on disk, in bounded memory.

A `Source` is one dataset file or folder in one of the formats below. It yields its rows as pandas
frames of at most `chunk_rows` rows, so a million-row CSV is inspected a chunk at a time; training
reads the (much smaller, or already cleaned) parts whole with `read()`.

| format | what it is |
|---|---|
| csv, tsv | a table with a header row (delimiter from `data.delimiter` or the suffix) |
| jsonl | one JSON object per line; a list value is a multilabel label |
| parquet | a Parquet file, read by row groups |
| hf-dataset | a folder written by `datasets.Dataset.save_to_disk` (memory-mapped Arrow) |
| image-folder | a folder with one subfolder per class |
| image-manifest | a CSV with an image path column (paths relative to the CSV) and a label column |

Image rows carry the image's absolute path in the column `image`. The images of a saved dataset's
`datasets.Image` column are written once, byte for byte, to files in `cache_root()`. A path that
leads outside the data folder (through `..` or a symlink) is refused: a dataset should not read the
rest of the disk.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from tunesmith.errors import DataError, TunesmithError

Modality = Literal["text", "image", "tabular"]
Format = Literal["csv", "tsv", "jsonl", "parquet", "hf-dataset", "image-folder", "image-manifest"]

TABLE_SUFFIXES: dict[str, Format] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jfif", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
FOLDER_FORMATS = ("hf-dataset", "image-folder")
SPLIT_FOLDER_NAMES = {  # an image folder's subfolders named so are parts, not classes
    **dict.fromkeys(("train", "training"), "train"),
    **dict.fromkeys(("val", "valid", "validation", "dev"), "val"),
    **dict.fromkeys(("test", "testing"), "test"),
}
IMAGE_COLUMN = "image"  # the column of absolute image paths in every image source's frames
ID_COLUMN = "__id__"  # a stable name for each row: its number in the file, or its relative path
CHUNK_ROWS = 100_000
IMAGE_BATCH_ROWS = 1_000  # rows of encoded images read from Arrow at a time
LIKELY_DELIMITERS = [";", "\t", "|", ","]


@dataclass(frozen=True)
class Examples:
    """Labelled examples in file order. `ids` name each one stably (row number or relative path).

    `inputs` holds texts or image paths; tabular examples keep their raw columns in `features`.
    `labels` are strings (classification), tuples of strings (multilabel) or floats (regression).
    """

    modality: Modality
    inputs: list[str]
    labels: list[Any]
    ids: list[str]
    source: Path
    features: pd.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: list[int]) -> Examples:
        return Examples(
            modality=self.modality,
            inputs=[self.inputs[i] for i in indices] if self.inputs else [],
            labels=[self.labels[i] for i in indices],
            ids=[self.ids[i] for i in indices],
            source=self.source,
            features=None if self.features is None else self.features.iloc[indices],
        )


@dataclass(frozen=True)
class Source:
    """One dataset on disk. `field` is the config key that named it, for error messages."""

    path: Path
    format: Format
    field: str
    delimiter: str | None = None
    encoding: str = "utf-8"
    image_column: str = IMAGE_COLUMN
    image_feature: str | None = None  # hf-dataset: the `datasets.Image` column, if any

    @property
    def is_image(self) -> bool:
        return self.format in ("image-folder", "image-manifest") or self.image_feature is not None

    def error(self, problem: str, fix: str, *, field: str | None = None) -> DataError:
        """A problem with the data in this source."""
        return DataError(problem, file=self.path, field=field or self.field, fix=fix)

    def columns(self) -> list[str]:
        """The column names, read without reading the rows."""
        if self.format in ("csv", "tsv", "image-manifest"):
            # Named as the rows are read: an empty name (pandas' index written by to_csv) is
            # "Unnamed: 0", not "" (inspect went looking for a column "").
            return [name or f"Unnamed: {i}" for i, name in enumerate(_csv_header(self))]
        if self.format == "image-folder":
            return [IMAGE_COLUMN, "label"]
        if self.format == "hf-dataset":
            return _hf_columns(self)
        first = next(self.frames(chunk_rows=1000), None)
        return [] if first is None else [c for c in first.columns if c != ID_COLUMN]

    def frames(self, chunk_rows: int | None = None) -> Iterator[pd.DataFrame]:
        """The rows in file order, `chunk_rows` (default CHUNK_ROWS) at a time, each with an
        `__id__` column."""
        chunk_rows = chunk_rows or CHUNK_ROWS
        readers = {
            "csv": _csv_frames,
            "tsv": _csv_frames,
            "image-manifest": _manifest_frames,
            "jsonl": _jsonl_frames,
            "parquet": _parquet_frames,
            "hf-dataset": _hf_frames,
            "image-folder": _folder_frames,
        }
        offset = 0
        for frame in readers[self.format](self, chunk_rows):
            if len(frame) == 0:  # a JSON lines file of blank lines: "no rows", not "no columns"
                continue
            frame = plain_dtypes(frame)
            if ID_COLUMN not in frame.columns:  # data row numbers, counted from 1 as editors do
                ids = [str(i) for i in range(offset + 1, offset + len(frame) + 1)]
                frame.insert(0, ID_COLUMN, ids)
            offset += len(frame)
            yield frame.reset_index(drop=True)
        if offset == 0:
            header = self.format in ("csv", "tsv", "image-manifest") and _csv_header(self)
            raise self.error(
                "the file has a header but no rows" if header else "the data has no rows",
                "add rows to the file, or point the config at the right file",
            )

    def read(self) -> pd.DataFrame:
        return pd.concat(list(self.frames()), ignore_index=True)


def open_source(
    path: Path,
    *,
    field: str,
    format: str = "auto",
    delimiter: str | None = None,
    encoding: str = "utf-8",
    image_column: str = IMAGE_COLUMN,
    text_column: str = "text",
) -> Source:
    """The `Source` at `path`; `format: auto` reads it from the suffix or the folder's contents."""
    if not path.exists():
        raise TunesmithError(
            "data file not found", file=path, field=field, fix=f"set {field} to an existing path"
        )
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(
            "the file is empty (0 bytes)",
            file=path,
            field=field,
            fix="point the config at the real data file",
        )
    fmt = _detect_format(path, field) if format == "auto" else format
    if path.is_dir() != (fmt in FOLDER_FORMATS):
        raise TunesmithError(
            f"data.format is {fmt} but this is a {'folder' if path.is_dir() else 'file'}",
            file=path, field="data.format",
            fix="set data.format: auto (the format is read from the suffix or the folder), or "
            f"point {field} at a {'folder' if fmt in FOLDER_FORMATS else fmt + ' file'}")
    source = Source(path, fmt, field, delimiter, encoding, image_column)  # type: ignore[arg-type]
    if fmt == "hf-dataset":  # an `Image` column makes it an image source
        return dataclasses.replace(source, image_feature=_hf_image_feature(source))
    if fmt == "csv" and format == "auto":
        header = source.columns()
        if image_column in header and text_column not in header:
            return Source(path, "image-manifest", field, delimiter, encoding, image_column)
    return source


def _detect_format(path: Path, field: str) -> Format:
    if path.is_dir():
        if (path / "dataset_dict.json").exists():
            splits = sorted(child.name for child in path.iterdir() if child.is_dir())
            raise TunesmithError(
                f"this folder holds a DatasetDict with splits {splits}, not one dataset",
                file=path,
                field=field,
                fix=f"point {field} at one split's folder, e.g. {path / 'train'}",
            )
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            return "hf-dataset"
        return "image-folder"
    fmt = TABLE_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise TunesmithError(
            f"cannot tell the format of a {path.suffix or 'suffix-less'} file",
            file=path,
            field=field,
            fix="give a .csv, .tsv, .jsonl, .parquet file, an image folder or a saved Hugging Face "
            "dataset, or set data.format",
        )
    return fmt


# ----------------------------------------------------------------------------------------------
# delimited text


def _csv_delimiter(source: Source) -> str:
    if source.delimiter is not None:
        return source.delimiter
    return "\t" if source.format == "tsv" or source.path.suffix.lower() == ".tsv" else ","


def _decode_error(source: Source, error: UnicodeDecodeError) -> TunesmithError:
    return source.error(
        f"the file is not {source.encoding} text (byte 0x{error.object[error.start]:02x} at "
        f"byte offset {error.start} of the block being read)",
        "re-save the file as UTF-8, or set data.encoding to its encoding (e.g. latin-1, cp1252)",
        field="data.encoding",
    )


def _text_encoding(source: Source) -> str:
    """The codec to read `source` with: UTF-8 as `utf-8-sig`, which drops the byte-order mark
    Excel and Notepad write. pandas drops it from a CSV by itself but the csv module does not (the
    first column would be '\ufefftext'), and pandas' JSON reader fails on it."""
    return "utf-8-sig" if codecs.lookup(source.encoding).name == "utf-8" else source.encoding


def _csv_header(source: Source) -> list[str]:
    try:
        with source.path.open(encoding=_text_encoding(source), newline="") as handle:
            return next(csv.reader(handle, delimiter=_csv_delimiter(source)), [])
    except UnicodeDecodeError as error:
        raise _decode_error(source, error) from None


def _csv_first_record(source: Source) -> list[str] | None:
    """The fields of the first data row (blank lines skipped), None for a header-only file."""
    try:
        with source.path.open(encoding=_text_encoding(source), newline="") as handle:
            records = csv.reader(handle, delimiter=_csv_delimiter(source))
            next(records, None)
            return next((record for record in records if record), None)
    except (UnicodeDecodeError, csv.Error):
        return None  # the reading below says what is wrong


def _check_header(source: Source, header: list[str], *, where: str = "header") -> None:
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise source.error(
            f"the {where} names column(s) {duplicated} more than once",
            f"give every column a unique name in the {where}",
        )


def wrong_delimiter_hint(source: Source, header: list[str]) -> str | None:
    """When the header is one column that contains another delimiter, the likely real one."""
    if len(header) != 1:
        return None
    for candidate in LIKELY_DELIMITERS:
        if candidate != _csv_delimiter(source) and candidate in header[0]:
            return candidate
    return None


def wrong_delimiter_error(source: Source, header: list[str]) -> TunesmithError | None:
    """The error naming the likely delimiter, when the header is one column holding another."""
    hint = wrong_delimiter_hint(source, header) if source.format in ("csv", "tsv") else None
    if hint is None:
        return None
    return TunesmithError(
        f"the file reads as the single column {header[0]!r}: it looks separated by "
        f"{hint!r}, not {source.delimiter or (',' if source.format == 'csv' else 'tab')!r}",
        file=source.path,
        field="data.delimiter",
        fix=f"set data.delimiter: {hint!r}" if hint != "\t" else 'set data.delimiter: "\\t"',
    )


def _csv_frames(source: Source, chunk_rows: int) -> Iterator[pd.DataFrame]:
    header = _csv_header(source)
    _check_header(source, header)
    fix = f"check that every row has the header's {len(header)} fields, or set data.delimiter"
    first = _csv_first_record(source)
    if first is not None and len(first) > len(header):
        # A `;` file whose numbers have decimal commas (13,74;2,25) splits its rows on the
        # commas but not its header: the delimiter is what is wrong.
        if (wrong := wrong_delimiter_error(source, header)) is not None:
            raise wrong
        # pandas would read the first column as the index and shift every column by one
        raise source.error(f"cannot parse the file: data row 1 has {len(first)} fields, the "
                           f"header {len(header)}", fix)
    try:
        reader = pd.read_csv(
            source.path,
            sep=_csv_delimiter(source),
            index_col=False,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            encoding=_text_encoding(source),
            chunksize=chunk_rows,
        )
        with reader:
            yield from reader
    except UnicodeDecodeError as error:
        raise _decode_error(source, error) from None
    except pd.errors.EmptyDataError:
        return
    except (ValueError, pd.errors.ParserError) as error:
        raise source.error(f"cannot parse the file: {error}", fix) from None


def _jsonl_frames(source: Source, chunk_rows: int) -> Iterator[pd.DataFrame]:
    # convert_axes=False keeps keys as written: with it, {"1": .., "01": ..} were two columns 1.
    # So a column name that is not a string comes from a line that is not an object (an array
    # or a scalar becomes columns 0, 1, ...); a mix of objects and others raises Type/ValueError.
    try:
        reader = pd.read_json(
            source.path,
            lines=True,
            dtype=False,
            convert_axes=False,
            chunksize=chunk_rows,
            encoding=_text_encoding(source),
        )
        with reader:
            for frame in reader:
                if not all(isinstance(name, str) for name in frame.columns):
                    raise _json_lines_error(source, None)
                yield frame
    except UnicodeDecodeError as error:
        raise _decode_error(source, error) from None
    except (ValueError, TypeError) as error:
        raise _json_lines_error(source, error) from None


def _json_lines_error(source: Source, error: Exception | None) -> TunesmithError:
    """The first line that is not one JSON object, found by reading the file again (only on this
    error path); pandas' own message when every line is one."""
    fix = 'write one JSON object per line, e.g. {"text": "...", "label": "pos"}'
    try:
        with source.path.open(encoding=_text_encoding(source)) as handle:
            for number, line in enumerate(handle, start=1):
                problem = _not_an_object(line)
                if problem:
                    return source.error(
                        f"line {number} {problem}: the file must hold one JSON object per line",
                        fix,
                    )
    except UnicodeDecodeError as decode:
        return _decode_error(source, decode)
    if error is None:
        return source.error("the file does not hold one JSON object per line", fix)
    return source.error(f"cannot parse the file as JSON lines: {error}", fix)


def _not_an_object(line: str) -> str | None:
    """What is wrong with one line of a JSON lines file, or None for an object or a blank line."""
    if not line.strip():
        return None
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        return f"is not valid JSON ({error.msg} at column {error.colno})"
    if isinstance(value, dict):
        return None
    kinds = {list: "an array", str: "a string", bool: "true/false", type(None): "null"}
    return f"is {kinds.get(type(value), 'a number')}, not an object"


def _parquet_frames(source: Source, chunk_rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Opening reads the footer only; damaged data pages fail in iter_batches, so both are inside.
    try:
        parquet = pq.ParquetFile(source.path)
        _check_header(source, parquet.schema_arrow.names, where="schema")
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            yield batch.to_pandas()
    except (pa.ArrowInvalid, OSError) as error:
        # pyarrow's messages span lines and can hold the damaged byte itself
        problem = " ".join("".join(c if c.isprintable() else " " for c in str(error)).split())
        raise source.error(
            f"cannot read the Parquet file: {problem}", "re-write the file"
        ) from None


def _hf_dataset(source: Source) -> Any:
    import datasets

    try:
        return datasets.load_from_disk(str(source.path))
    except (FileNotFoundError, ValueError, OSError) as error:
        raise source.error(
            f"cannot load the saved dataset: {error}",
            "save it again with datasets.Dataset.save_to_disk",
        ) from None


def _hf_image_feature(source: Source) -> str | None:
    """The `datasets.Image` column images are read from: `data.image_column`, or the only one."""
    import datasets

    features = _hf_dataset(source).features
    images = [name for name, kind in features.items() if isinstance(kind, datasets.Image)]
    if not images:
        return None
    if source.image_column in images:
        return source.image_column
    if len(images) == 1:
        if IMAGE_COLUMN in features:  # the paths column would overwrite a column of that name
            raise source.error(
                f"the image column is {images[0]!r} but another column is named {IMAGE_COLUMN!r}",
                f"rename the column {IMAGE_COLUMN!r} (dataset.rename_column) and save it again",
                field="data.image_column",
            )
        return str(images[0])
    raise source.error(
        f"the dataset has several image columns {images}",
        "set data.image_column to the one to train on",
        field="data.image_column",
    )


def _hf_columns(source: Source) -> list[str]:
    names = list(_hf_dataset(source).features)
    return [IMAGE_COLUMN if name == source.image_feature else name for name in names]


def _hf_frames(source: Source, chunk_rows: int) -> Iterator[pd.DataFrame]:
    dataset = _hf_dataset(source)
    names = _class_label_names(dataset.features)
    images = _ImageCache(source) if source.image_feature else None
    # Encoded images are large; batches of them stay small whatever chunk_rows asks for.
    batch_rows = min(chunk_rows, IMAGE_BATCH_ROWS) if images else chunk_rows
    pending: list[pd.DataFrame] = []
    for table in dataset.with_format("arrow").iter(batch_size=batch_rows):
        if images is not None:
            paths = images.files(table.column(source.image_feature).to_pylist())
            table = table.drop_columns([source.image_feature])
        frame = table.to_pandas()
        for column, (classes, many) in names.items():  # ClassLabel ints -> their names
            frame[column] = frame[column].map(
                partial(_class_names, classes) if many else partial(_class_name, classes))
        if images is None:
            yield frame
            continue
        frame[IMAGE_COLUMN] = paths
        pending.append(frame)
        if sum(map(len, pending)) >= chunk_rows:
            yield pd.concat(pending, ignore_index=True)
            pending = []
    if pending:
        yield pd.concat(pending, ignore_index=True)


class _ImageCache:
    """The encoded images of a saved dataset's `Image` column, written once as files.

    The image pipeline (scan, augmentation, prediction) reads files; Arrow holds the encoded bytes.
    Writing each row's bytes as they are (no re-encoding) to `cache_root()/hf-images/KEY/` keeps
    the pixels identical, and the key (a hash of the dataset's state and data files) makes the
    cache follow the dataset: a dataset saved again gets new files, the same one reuses them. Each
    file is written to a temporary name and renamed, so a killed run leaves no half image.
    """

    def __init__(self, source: Source) -> None:
        self.source = source
        self.root = source.path
        self.folder = cache_root() / "hf-images" / _dataset_key(source.path)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.row = 0

    def files(self, cells: list[dict[str, Any] | None]) -> list[str]:
        """One image path per cell; a cell without bytes names its file (inside the dataset)."""
        paths = []
        for cell in cells:
            self.row += 1
            paths.append(self._file(cell or {}, self.row))
        return paths

    def _file(self, cell: dict[str, Any], row: int) -> str:
        data, named = cell.get("bytes"), cell.get("path")
        if data is None:
            if not named:
                return str(self.folder / f"{row:09d}.missing")  # reported unreadable by the scan
            path = Path(named) if Path(named).is_absolute() else self.root / named
            if not inside(path, self.root):
                raise _outside_error(self.source, named)
            return str(path)
        target = self.folder / f"{row:09d}{_image_suffix(data)}"
        if not target.exists() or target.stat().st_size != len(data):
            temporary = target.with_name(f".{target.name}.tmp")
            temporary.write_bytes(data)
            os.replace(temporary, target)
        return str(target)


def cache_root() -> Path:
    """Where tunesmith keeps derived files: $TUNESMITH_CACHE, else the XDG cache folder."""
    if os.environ.get("TUNESMITH_CACHE"):
        return Path(os.environ["TUNESMITH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tunesmith"


def _dataset_key(folder: Path) -> str:
    """A hash of a saved dataset's state and of each data file's name, size and mtime."""
    digest = hashlib.sha256(str(folder.resolve()).encode())
    for path in sorted(folder.iterdir()):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


_MAGIC = [
    (b"\x89PNG", ".png"),
    (b"\xff\xd8", ".jpg"),
    (b"GIF8", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
]


def _image_suffix(data: bytes) -> str:
    """The file suffix of encoded image bytes, from their first bytes (Pillow reads any)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((suffix for magic, suffix in _MAGIC if data.startswith(magic)), ".img")


def _class_label_names(features: Any) -> dict[str, tuple[list[str], bool]]:
    """{column: (class names, whether each row holds a list of them)} for the `ClassLabel`
    columns and the lists of `ClassLabel` (a multilabel column) of a saved dataset."""
    import datasets

    found = {}
    for name, feature in features.items():
        if isinstance(feature, datasets.ClassLabel):
            found[name] = (list(feature.names), False)
        elif isinstance(feature, datasets.Sequence | datasets.List) and isinstance(
                feature.feature, datasets.ClassLabel):
            found[name] = (list(feature.feature.names), True)
    return found


def _class_name(classes: list[str], code: Any) -> str | None:
    """A `ClassLabel` code's name; None for no label (-1, or a null cell)."""
    if code is None or pd.isna(code) or code < 0:
        return None
    return classes[int(code)]


def _class_names(classes: list[str], codes: Any) -> list[str] | None:
    if not isinstance(codes, list | tuple | np.ndarray):  # a null cell
        return None
    return [name for code in codes if (name := _class_name(classes, code)) is not None]


def plain_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns of the pandas types whose missing value is `pd.NA` (the nullable `string`,
    `Int64`, `Float64` and `boolean` a Parquet file can hold, and Arrow-backed types) as the
    plain ones every other reader gives: numbers as float64 with NaN where a value is missing
    (int64 or bool when none is), anything else as objects with None. `pd.NA` would otherwise be
    read as a value: a class named `<NA>`. (pandas' default `str` columns miss with NaN.)"""
    for column in frame.columns:
        dtype = frame[column].dtype
        if getattr(dtype, "na_value", None) is not pd.NA:
            continue
        values = frame[column]
        missing = values.isna().to_numpy()
        if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
            plain = values.to_numpy(dtype=float, na_value=np.nan)
            if not missing.any() and pd.api.types.is_integer_dtype(dtype):
                plain = plain.astype(np.int64)
            frame[column] = plain
        elif pd.api.types.is_bool_dtype(dtype) and not missing.any():
            frame[column] = values.to_numpy(dtype=bool)
        else:
            plain = np.array(values.astype(object), dtype=object)
            plain[missing] = None
            frame[column] = plain
    return frame


# ----------------------------------------------------------------------------------------------
# images


def shown_name(path: str | Path) -> str | None:
    """None for a path that is UTF-8 text; else the path with each byte that is not shown as
    U+FFFD, for a message (a name from a zip made on Windows: 'caf\xe9.png'). Such a name cannot
    be written to a UTF-8 file, a CSV of predictions or a JSON report."""
    try:
        os.fsencode(str(path)).decode("utf-8")
    except UnicodeDecodeError:
        return os.fsencode(str(path)).decode("utf-8", "replace")
    return None


def inside(path: Path, root: Path) -> bool:
    """Whether `path`, with symlinks and `..` resolved, stays under `root`."""
    return path.resolve().is_relative_to(root.resolve())


def _outside_error(source: Source, offender: str) -> TunesmithError:
    root = source.path.parent if source.format == "image-manifest" else source.path
    return source.error(
        f"the image path {offender!r} leads outside the data folder {root}",
        "copy the images into the data folder; paths with '..' or symlinks pointing elsewhere are "
        "refused so a dataset cannot read other files",
    )


def _folder_frames(source: Source, chunk_rows: int) -> Iterator[pd.DataFrame]:
    root = source.path
    # Hidden folders (.ipynb_checkpoints, .git) are not classes, and hidden files inside a class
    # (.DS_Store, macOS' ._x.png) are not its images.
    classes = sorted(
        child for child in root.iterdir() if child.is_dir() and not child.name.startswith(".")
    )
    if not classes:
        raise source.error(
            "the image folder has no class subfolders",
            "put each class's images in a subfolder named after the class: "
            "data/train/<class>/<image>.png",
        )
    parts = {c.name: SPLIT_FOLDER_NAMES.get(c.name.lower(), "") for c in classes}
    if all(parts.values()) and any(c.is_dir() for c in classes[0].iterdir()):
        where = sorted(parts.items(), key=lambda item: ["train", "val", "test"].index(item[1]))
        raise source.error(
            f"the subfolders are named like parts of a split ({', '.join(parts)}), not classes",
            ", ".join(f"set data.{field} to {root / name}" for name, field in where)
            + " (folders whose subfolders are the classes)",
        )
    rows: list[tuple[str, str, str]] = []
    suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
    for class_dir in classes:
        images, others = _class_contents(class_dir)
        found = len(rows)
        for image in images:
            if not inside(image, root):
                raise _outside_error(source, str(image.relative_to(root)))
            if (shown := shown_name(image.relative_to(root))) is not None:
                raise source.error(f"the name {shown!r} is not UTF-8 text",
                                   "rename it (convmv -f latin1 -t utf8 --notest -r FOLDER "
                                   "renames a whole folder)")
            if image.is_file():
                rows.append((str(image.relative_to(root)), str(image), class_dir.name))
        if len(rows) == found:  # a class that would vanish without a word
            held = ", ".join(f"{count} {kind}" for kind, count in sorted(others.items()))
            raise source.error(
                f"the class folder {class_dir.name!r} holds no image files"
                + (f" (it holds {held})" if held else " (it is empty)"),
                f"add its images as {suffixes} files, or remove the folder",
            )
    for start in range(0, len(rows), chunk_rows):
        yield pd.DataFrame(
            rows[start : start + chunk_rows], columns=[ID_COLUMN, IMAGE_COLUMN, "label"]
        )


def _class_contents(class_dir: Path) -> tuple[list[Path], dict[str, int]]:
    """A class folder's image files (sorted; subfolders too, hidden ones not), and how many
    other files it holds per suffix (left out: a .heic or .avif is not read)."""
    images: list[Path] = []
    others: dict[str, int] = {}
    for path in sorted(class_dir.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(class_dir).parts):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES:
            images.append(path)
        elif path.is_file():
            kind = path.suffix.lower() or "no suffix"
            others[kind] = others.get(kind, 0) + 1
    return images, others


def files_left_out(source: Source) -> dict[str, int]:
    """An image folder's files in its class folders that are not images it reads, per suffix
    (hidden files aside): inspect names them, so none is left out silently."""
    if source.format != "image-folder":
        return {}
    found: dict[str, int] = {}
    for class_dir in source.path.iterdir():
        if class_dir.is_dir() and not class_dir.name.startswith("."):
            for kind, count in _class_contents(class_dir)[1].items():
                found[kind] = found.get(kind, 0) + count
    return dict(sorted(found.items()))


def _manifest_frames(source: Source, chunk_rows: int) -> Iterator[pd.DataFrame]:
    root = source.path.parent
    for frame in _csv_frames(source, chunk_rows):
        if source.image_column not in frame.columns:
            raise TunesmithError(
                f"column {source.image_column!r} not found; the file has columns "
                f"{list(frame.columns)}",
                file=source.path,
                field="data.image_column",
                fix="set data.image_column to the column of image paths",
            )
        relative = frame.pop(source.image_column).fillna("").astype(str)
        absolute = []
        for value in relative:
            if not value.strip():  # an empty cell is no image: reported as such, not as the folder
                absolute.append("")
                continue
            path = Path(value) if Path(value).is_absolute() else root / value
            if not inside(path, root):
                raise _outside_error(source, value)
            absolute.append(str(path))
        frame.insert(0, ID_COLUMN, relative.tolist())
        frame[IMAGE_COLUMN] = absolute
        yield frame


# ----------------------------------------------------------------------------------------------
# a plain table, for prediction inputs


def _table_source(path: Path, *, field: str, delimiter: str | None,
                  encoding: str) -> Source:
    """The file as a table: a CSV with an `image` column and no `text` one is a manifest to
    `open_source`, but a table here (a text model's inputs may have such a column)."""
    source = open_source(path, field=field, delimiter=delimiter, encoding=encoding)
    if source.format == "image-manifest":
        return dataclasses.replace(source, format="csv")
    return source


def read_table(path: Path, *, field: str, delimiter: str | None = None,
               encoding: str = "utf-8") -> pd.DataFrame:
    """A CSV, TSV, JSONL or Parquet file as a DataFrame, every value read as it is written."""
    source = _table_source(path, field=field, delimiter=delimiter, encoding=encoding)
    if source.format not in ("csv", "tsv", "jsonl", "parquet"):
        raise source.error(
            f"cannot read a {source.format} as a table",
            "give a .csv, .tsv, .jsonl or .parquet file",
        )
    return source.read().drop(columns=[ID_COLUMN])


def read_table_rows(path: Path, *, field: str, delimiter: str | None = None,
                    encoding: str = "utf-8") -> tuple[pd.DataFrame, dict[int, str]]:
    """As `read_table`, but a row that cannot be parsed does not stop the reading: a JSON line
    that is not one object, a CSV row with more fields than its header. The frame has a row for
    every row of the file (blank lines skipped), such rows empty, and `{row: why}` names them:
    prediction reports each in its own output row and predicts the rest. A file none of whose
    rows can be read is the error `read_table` gives."""
    try:
        return read_table(path, field=field, delimiter=delimiter, encoding=encoding), {}
    except TunesmithError as error:
        source = _table_source(path, field=field, delimiter=delimiter, encoding=encoding)
        salvage = {"jsonl": _jsonl_rows, "csv": _csv_rows, "tsv": _csv_rows}.get(source.format)
        rows, errors = salvage(source) if salvage else (pd.DataFrame(), {})
        if not errors or len(errors) == len(rows):
            raise error from None
        return rows, errors


def _jsonl_rows(source: Source) -> tuple[pd.DataFrame, dict[int, str]]:
    with source.path.open(encoding=_text_encoding(source)) as handle:
        lines = [(number, line) for number, line in enumerate(handle, start=1) if line.strip()]
    errors = {row: f"line {number} {problem}" for row, (number, line) in enumerate(lines)
              if (problem := _not_an_object(line))}
    good = [row for row in range(len(lines)) if row not in errors]
    text = "".join(lines[row][1] for row in good)
    frame = pd.read_json(io.StringIO(text), lines=True, dtype=False, convert_axes=False)
    return _placed(frame, good, len(lines)), errors


def _csv_rows(source: Source) -> tuple[pd.DataFrame, dict[int, str]]:
    with source.path.open(encoding=_text_encoding(source), newline="") as handle:
        header, *records = [r for r in csv.reader(handle, delimiter=_csv_delimiter(source)) if r]
    errors = {row: f"row has {len(record)} fields, the header {len(header)}"
              for row, record in enumerate(records) if len(record) > len(header)}
    good = [row for row in range(len(records)) if row not in errors]
    # As read_csv reads it: every value a string, an empty cell (or a short row's end) missing.
    frame = pd.DataFrame([records[row] + [""] * (len(header) - len(records[row])) for row in good],
                         columns=header, dtype=object)
    return _placed(frame.mask(frame == ""), good, len(records)), errors


def _placed(frame: pd.DataFrame, rows: list[int], total: int) -> pd.DataFrame:
    """The rows of `frame` at positions `rows` of `total`, the others empty."""
    return frame.astype(object).set_axis(rows).reindex(range(total))


def label_names(labels: list[str]) -> list[str]:
    """The sorted unique labels: numerically when every label is a finite number."""
    unique = set(labels)
    numbers = {label: _finite(label) for label in unique}
    if all(number is not None for number in numbers.values()):
        return sorted(unique, key=lambda label: (numbers[label], label))
    return sorted(unique)


def _finite(label: str) -> float | None:
    try:
        number = float(label)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
