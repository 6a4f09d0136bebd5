"""Reading what a user has on disk into labelled examples.

Text classification reads a table (CSV, TSV or JSONL) with a text and a label column; image
classification reads a folder with one subfolder per class. Either way the result is `Examples`:
inputs (texts, or image file paths) with their raw labels as strings, in file order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from tunesmith.errors import TunesmithError

Modality = Literal["text", "image"]

TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".json": None}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Examples:
    """Labelled examples in file order. `ids` name each one stably (row number or relative path)."""

    modality: Modality
    inputs: list[str]
    labels: list[str]
    ids: list[str]
    source: Path

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, indices: list[int]) -> Examples:
        return Examples(
            modality=self.modality,
            inputs=[self.inputs[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            ids=[self.ids[i] for i in indices],
            source=self.source,
        )


def infer_modality(path: Path) -> Modality:
    """An image folder for a directory, a text table for a table file."""
    return "image" if path.is_dir() else "text"


def read_examples(
    path: Path, modality: Modality, *, text_column: str, label_column: str, field: str
) -> Examples:
    """Read `path` as labelled examples; `field` names the config key it came from."""
    if not path.exists():
        raise TunesmithError(
            "data file not found", file=path, field=field, fix=f"set {field} to an existing path"
        )
    if modality == "image":
        return read_image_folder(path, field=field)
    return read_text_table(path, text_column=text_column, label_column=label_column, field=field)


def read_table(path: Path, *, field: str) -> pd.DataFrame:
    """A CSV, TSV or JSONL file as a DataFrame, with every value read as it is written."""
    suffix = path.suffix.lower()
    if path.is_dir() or suffix not in TABLE_SUFFIXES:
        raise TunesmithError(
            f"cannot read {suffix or 'a folder'} as a text table",
            file=path,
            field=field,
            fix="give a .csv, .tsv or .jsonl file, or an image folder (task: image-classification)",
        )
    try:
        if TABLE_SUFFIXES[suffix] is None:
            return pd.read_json(path, lines=True, dtype=False)
        return pd.read_csv(
            path, sep=TABLE_SUFFIXES[suffix], dtype=str, keep_default_na=False, na_values=[""]
        )
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise TunesmithError(
            f"cannot parse the file: {error}",
            file=path,
            field=field,
            fix="check that the file is well-formed UTF-8 " + suffix.lstrip(".").upper(),
        ) from None


def read_text_table(path: Path, *, text_column: str, label_column: str, field: str) -> Examples:
    table = read_table(path, field=field)
    for column, key in ((text_column, "data.text_column"), (label_column, "data.label_column")):
        if column not in table.columns:
            raise TunesmithError(
                f"column {column!r} not found; the file has columns {list(table.columns)}",
                file=path,
                field=key,
                fix=f"set {key} to one of those columns",
            )
    missing = table.index[table[label_column].isna()].tolist()
    if missing:
        rows = ", ".join(str(row + 1) for row in missing[:5])
        raise TunesmithError(
            f"{len(missing)} row(s) have no label (data rows {rows}"
            f"{', ...' if len(missing) > 5 else ''})",
            file=path,
            field="data.label_column",
            fix="fill in or remove the rows without a label",
        )
    texts = table[text_column].fillna("").astype(str).tolist()
    labels = [_label_text(value) for value in table[label_column].tolist()]
    ids = [str(row) for row in range(len(table))]
    return Examples("text", texts, labels, ids, path)


def _label_text(value: object) -> str:
    # JSON numbers arrive as int/float; 1.0 and 1 are the same class.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def read_image_folder(path: Path, *, field: str) -> Examples:
    if not path.is_dir():
        raise TunesmithError(
            "an image dataset must be a folder with one subfolder per class",
            file=path,
            field=field,
            fix="point it at a folder like data/train/<class>/<image>.png",
        )
    classes = sorted(child for child in path.iterdir() if child.is_dir())
    if not classes:
        raise TunesmithError(
            "the image folder has no class subfolders",
            file=path,
            field=field,
            fix="put each class's images in a subfolder named after the class",
        )
    inputs: list[str] = []
    labels: list[str] = []
    ids: list[str] = []
    for class_dir in classes:
        for image in sorted(class_dir.rglob("*")):
            if image.suffix.lower() in IMAGE_SUFFIXES and image.is_file():
                inputs.append(str(image))
                labels.append(class_dir.name)
                ids.append(str(image.relative_to(path)))
    if not inputs:
        raise TunesmithError(
            "the class subfolders hold no images",
            file=path,
            field=field,
            fix=f"add image files ({', '.join(sorted(IMAGE_SUFFIXES))}) to the class subfolders",
        )
    return Examples("image", inputs, labels, ids, path)


def label_names(labels: list[str]) -> list[str]:
    """The sorted unique labels: numerically when every label is a number."""
    unique = set(labels)
    try:
        return sorted(unique, key=float)
    except ValueError:
        return sorted(unique)
