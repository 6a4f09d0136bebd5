"""Predicting with a bundle: texts and table rows from CSV/JSONL files, or image files and folders.

What a prediction is follows the task: a class and its probabilities (classification), the set of
labels whose probability passes 0.5 and every label's probability (multilabel), or a number
(regression).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from rich.markup import escape

from tunesmith.console import console, progress
from tunesmith.data.image_scan import DECODE_ERRORS, ImageScan, scan_images
from tunesmith.data.sources import (
    IMAGE_SUFFIXES,
    TABLE_SUFFIXES,
    open_source,
    read_table_rows,
    shown_name,
    wrong_delimiter_hint,
)
from tunesmith.data.tabular import MISSING_CATEGORY, TabularEncoding, missing_words
from tunesmith.errors import TunesmithError
from tunesmith.evaluate import collect_logits
from tunesmith.export.bundle import MANIFEST, load_bundle
from tunesmith.io import LABEL_JOINER
from tunesmith.models import TaskModel
from tunesmith.models.ensemble import Ensemble
from tunesmith.models.inputs import Inputs, eval_batches

MULTILABEL_THRESHOLD = 0.5


def positive(logits: np.ndarray) -> np.ndarray:
    """Which labels a multilabel model gives: probability above MULTILABEL_THRESHOLD, read off
    the logits (> 0) as the metrics do. A float32 sigmoid rounds a logit of -1e-8 to exactly 0.5,
    which `>= 0.5` on the probabilities would have called positive and the metrics not."""
    return np.asarray(logits > 0)
UNSEEN_SHOWN = 5  # unseen category values named in the warning


class Predictor:
    """A loaded bundle: `predict` gives labels (or numbers), `predict_proba` probabilities."""

    def __init__(self, model: TaskModel | Ensemble, manifest: dict[str, Any]) -> None:
        self.model = model
        self.manifest = manifest
        self.classes: list[str] = list(manifest["classes"])
        self.task: str = manifest["task"]
        self.temperature = float(manifest.get("temperature") or 1.0)
        tabular = manifest["inputs"].get("tabular")
        self.tabular = TabularEncoding.from_dict(tabular) if tabular else None
        # how the training files were written (bundles from before it was kept: the defaults)
        self.delimiter: str | None = manifest["inputs"].get("delimiter")
        self.text_encoding: str = manifest["inputs"].get("encoding") or "utf-8"
        self._said: set[tuple[str, str]] = set()  # unseen categories already named
        # decoded as in training (bundles from before it was kept: RGB, the only mode used then)
        model.backbone.image_mode = manifest["inputs"].get("image_mode", "RGB")

    @property
    def modality(self) -> str:
        return str(self.model.backbone.modality)

    @property
    def kind(self) -> str:
        return self.task.split("-", 1)[1]

    def encode(self, inputs: Sequence[Any] | pd.DataFrame) -> Inputs:
        """Texts and image paths as they are (a DataFrame's text column); table rows (a
        DataFrame, or dicts) encoded."""
        self._require_many(inputs)
        if self.tabular is None:
            if isinstance(inputs, pd.DataFrame):
                inputs = self._text_column(inputs)
            return [self._text_or_path(item, row) for row, item in enumerate(inputs)]
        frame = inputs if isinstance(inputs, pd.DataFrame) else pd.DataFrame(list(inputs))
        require_columns(frame, self.tabular, file=None)
        encoded = self.tabular.transform(frame, refuse_far=False)  # such a row predicts None
        self._say_unseen(frame)
        return encoded

    def _say_unseen(self, frame: pd.DataFrame) -> None:
        """Name the categories the training rows did not have, each value once per predictor
        (a caller may predict row by row, and an export encodes the same rows several times)."""
        assert self.tabular is not None
        for column, (values, rows) in self.tabular.unseen(frame).items():
            new = [value for value in values if (column, value) not in self._said]
            if not new:
                continue
            self._said.update((column, value) for value in new)
            shown = ", ".join("an empty cell" if value == MISSING_CATEGORY else repr(value)
                              for value in new[:UNSEEN_SHOWN])
            if len(new) > UNSEEN_SHOWN:
                shown += f" and {len(new) - UNSEEN_SHOWN} more"
            console.print(escape(
                f"column {column!r}: {rows} row(s) hold values the training rows did not have "
                f"({shown}); they are predicted as none of its known categories"),
                style="yellow", highlight=False)

    def _require_many(self, inputs: Any) -> None:
        # One text or path is a sequence too: its characters would be predicted one by one.
        if isinstance(inputs, str | bytes | Path | Mapping | Image.Image):
            raise TunesmithError(
                f"predict takes a list of inputs, not one {type(inputs).__name__}",
                field="inputs",
                fix="wrap the one input in a list: predict([x])",
            )

    def _text_column(self, frame: pd.DataFrame) -> pd.Series:
        column = self.manifest["inputs"].get("text_column")
        if self.modality != "text" or column not in frame.columns:
            wanted = (f"a column {column!r} (the text column the model was trained on)"
                      if self.modality == "text" else "no DataFrame")
            raise TunesmithError(
                f"this {self.modality} model reads {wanted}; the DataFrame has "
                f"{list(frame.columns)}",
                field="inputs",
                fix=f"name the text column {column!r}, or pass a list of texts"
                if self.modality == "text"
                else "pass a list of image paths",
            )
        return frame[column]

    def _text_or_path(self, item: Any, row: int) -> str | Image.Image:
        """A text, or an image: a path, or one in memory (a PIL image, an array of pixels, an
        image file's bytes), as Hugging Face's and timm's users hold them."""
        missing = item is None or (isinstance(item, float) and math.isnan(item))
        if self.modality == "text":
            return "" if missing else str(item)  # an empty cell, as `tunesmith predict` reads it
        if isinstance(item, Image.Image | np.ndarray | bytes | bytearray):
            return _in_memory(item, row)
        if missing or not isinstance(item, str | os.PathLike) or not Path(item).is_file():
            raise TunesmithError(f"input {row} is not an image file", file=str(item),
                                 field="inputs", fix="pass paths of existing image files")
        return str(item)

    def outputs(self, inputs: Sequence[Any] | pd.DataFrame, *, batch_size: int = 64) -> np.ndarray:
        """The model's raw outputs: logits, or numbers in the target's units."""
        self._require_many(inputs)
        if len(inputs) == 0:
            if self.kind == "regression":
                return np.zeros((0, 1), dtype=np.float64)
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        batches = eval_batches(self.model.backbone, self.encode(inputs), batch_size=batch_size)
        with progress() as bar:
            task = bar.add_task("predict", total=len(inputs), status="")
            outputs, _ = collect_logits(
                self.model, batches, on_batch=lambda n: bar.update(task, advance=n)
            )
        return outputs

    def predict_proba(
        self, inputs: Sequence[Any] | pd.DataFrame, *, batch_size: int = 64
    ) -> np.ndarray:
        """Probabilities, one row per input, columns in `classes` (softmax of the outputs over
        the bundle's temperature, or one sigmoid per label for multilabel)."""
        if self.kind == "regression":
            raise TunesmithError(
                "a regression model predicts numbers, not probabilities",
                field="predict_proba",
                fix="call predict() for the predicted values",
            )
        logits = torch.from_numpy(self.outputs(inputs, batch_size=batch_size))
        if self.kind == "multilabel":
            return torch.sigmoid(logits).numpy()
        return torch.softmax(logits / self.temperature, dim=1).numpy()

    def predict(self, inputs: Sequence[Any] | pd.DataFrame) -> list[Any]:
        """A class per input, a tuple of labels (multilabel), or a number (regression). None
        where the model's outputs are not finite numbers (an input far beyond anything it
        trained on: `1e300` in a column of numbers), rather than the first class by default."""
        if self.kind == "regression":
            return [float(value) if math.isfinite(value) else None
                    for value in self.outputs(inputs).reshape(-1)]
        if self.kind == "multilabel":
            logits = self.outputs(inputs)
            finite = np.isfinite(logits).all(axis=1)
            return [tuple(self.classes[k] for k in np.flatnonzero(positive(row))) if ok else None
                    for row, ok in zip(logits, finite, strict=True)]
        probabilities = self.predict_proba(inputs)
        finite = np.isfinite(probabilities).all(axis=1)
        return [self.classes[i] if ok else None
                for i, ok in zip(probabilities.argmax(axis=1), finite, strict=True)]


def bundle_folder(path: Path) -> Path:
    """A run folder's `best/`, or the bundle folder itself."""
    if (path / MANIFEST).is_file():
        return path
    if (path / "best" / MANIFEST).is_file():
        return path / "best"
    raise TunesmithError(
        "no model bundle here",
        file=path,
        fix="pass a finished run folder (runs/NAME) or its best/ folder",
    )


def load_predictor(path: str | Path) -> Predictor:
    model, manifest = load_bundle(bundle_folder(Path(path)))
    return Predictor(model, manifest)


@dataclass(frozen=True)
class PredictionInputs:
    sources: list[str]  # where each input came from: "file.csv:row" or an image path
    inputs: list[Any] | pd.DataFrame  # texts, image paths, or the table rows (the good ones)
    errors: dict[int, str] = field(default_factory=dict)  # source position -> why it is skipped

    @property
    def good(self) -> list[int]:
        """The positions in `sources` of the inputs that are predicted, in order."""
        return [i for i in range(len(self.sources)) if i not in self.errors]


def gather_inputs(predictor: Predictor, paths: Sequence[Path]) -> PredictionInputs:
    """Read every input the user named, checking it suits the bundle's modality."""
    sources: list[str] = []
    texts_or_images: list[str] = []
    tables: list[pd.DataFrame] = []
    errors: dict[int, str] = {}
    for path in paths:
        if URL.match(str(path)):  # a Path has folded its "//" into "/"
            raise TunesmithError(
                "tunesmith predict reads local files and folders, not URLs", file=path,
                fix="download the file first and pass its local path")
        if not path.exists():
            raise TunesmithError("input not found", file=path, fix="pass existing files or folders")
        if predictor.modality == "text":
            texts = _read_texts(path, predictor)
            for row, text in enumerate(texts):
                if isinstance(text, str):
                    texts_or_images.append(text)
                else:  # reported in its own output row; the rest goes on
                    errors[len(sources) + row] = text.reason
            sources += [f"{path}:{row}" for row in range(len(texts))]
        elif predictor.modality == "tabular":
            table, unparsed = _read_rows(path, predictor)
            errors.update({len(sources) + row: why for row, why in unparsed.items()})
            sources += [f"{path}:{row}" for row in range(len(table))]
            tables.append(table)
        else:
            images = _image_files(path)
            scan = _scanned(images)
            for image, readable, error in zip(images, scan.readable, scan.errors, strict=True):
                shown = shown_name(image)
                if shown is not None:  # its name could not be written to the output
                    errors[len(sources)] = "the file name is not UTF-8 text: rename it"
                elif not readable:  # reported in its own output row; the rest goes on
                    errors[len(sources)] = f"cannot read the image: {error}"
                else:
                    texts_or_images.append(image)
                sources.append(shown or image)
    if not sources:
        raise TunesmithError(
            "the inputs hold nothing to predict",
            file=", ".join(map(str, paths)),
            fix="pass a file with rows or a folder with images",
        )
    if tables:
        table = pd.concat(tables, ignore_index=True)
        assert predictor.tabular is not None
        for row, why in _unreadable_rows(table, predictor.tabular).items():
            errors.setdefault(row, why)  # a row that could not be parsed says so
        return PredictionInputs(sources, table.drop(index=list(errors)).reset_index(drop=True),
                                errors)
    return PredictionInputs(sources, texts_or_images, errors)


def _in_memory(item: Image.Image | np.ndarray | bytes | bytearray, row: int) -> Image.Image:
    """An image given to `predict` in memory, decoded (a file's bytes) or wrapped (an array)."""
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, np.ndarray):
        try:
            return Image.fromarray(item)
        except (TypeError, ValueError) as error:
            raise TunesmithError(
                f"input {row} is an array of {item.dtype} shaped {item.shape}, which is no "
                f"image ({error})", field="inputs",
                fix="pass uint8 pixels shaped (height, width) or (height, width, 3 or 4)"
            ) from None
    try:
        with Image.open(io.BytesIO(item)) as image:
            image.load()
            return image.copy()
    except DECODE_ERRORS as error:
        raise TunesmithError(f"input {row} holds bytes that are no image file: {error}",
                             field="inputs", fix="pass the bytes of an image file") from None


def _unreadable_rows(table: pd.DataFrame, encoding: TabularEncoding) -> dict[int, str]:
    """Rows the encoding would refuse, {row: why}: a value in a numeric feature column that is
    not a finite number, or an empty cell where the bundle does not impute."""
    bad: dict[int, str] = {}
    columns = [*encoding.numeric, *encoding.categorical]
    gaps = {column: table[column].isna().to_numpy() for column in columns}
    for numeric in encoding.numeric_columns:
        column, values = numeric.name, table[numeric.name]
        gaps[column] = gaps[column] | missing_words(values)  # NA, n/a, ...: gaps, as in training
        parsed = numeric.numbers(values)
        for row in np.flatnonzero(parsed.isna().to_numpy() & ~gaps[column]):
            bad.setdefault(int(row), f"column {column!r}: {values.iloc[row]!r} is not a number")
        finite = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
        for row in np.flatnonzero(np.isinf(finite)):
            bad.setdefault(int(row), f"column {column!r}: {values.iloc[row]!r} is not finite")
        for row in np.flatnonzero(numeric.far_out(finite) & np.isfinite(finite)):
            bad.setdefault(int(row), f"column {column!r}: {values.iloc[row]!r} is "
                                     f"{numeric.far_text(float(finite[row]))}")
    if encoding.impute == "none":
        for column in columns:
            for row in np.flatnonzero(gaps[column]):
                bad.setdefault(int(row), f"column {column!r} is empty and the model was "
                                         "trained without imputation")
    return bad


URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")
TABLE_FIX = "pass a CSV, TSV, JSONL or Parquet file"
CONFIG_ADVICE = re.compile(r"(,? or )?(set data\.|point the config).*$")


def _table(path: Path, modality: str, predictor: Predictor) -> tuple[pd.DataFrame, dict[int, str]]:
    """The file's rows, and {row: why} for those that cannot be parsed (left empty). A CSV is
    read with the training files' delimiter; one whose header then reads as a single column
    holding another likely delimiter (a semicolon file for a model trained on commas, or the
    other way round) with that one. Text is read as UTF-8, or, where it is not, in the training
    files' encoding (UTF-8 rarely decodes what is not, while latin-1 decodes anything)."""
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        raise TunesmithError(f"this model reads {modality}, not images", file=path, fix=TABLE_FIX)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise TunesmithError(f"this model reads {modality} from a table, and cannot tell the "
                             f"format of a {path.suffix or 'suffix-less'} file", file=path,
                             fix=f"{TABLE_FIX}, named with its suffix")
    if path.stat().st_size == 0:
        raise TunesmithError("the file is empty (0 bytes)", file=path,
                             fix=f"{TABLE_FIX} with a header and the rows to predict")
    try:
        try:
            return _table_as_trained(path, predictor, "utf-8")
        except TunesmithError as error:
            if error.field != "data.encoding" or predictor.text_encoding == "utf-8":
                raise
            return _table_as_trained(path, predictor, predictor.text_encoding)
    except TunesmithError as error:
        # The reader's fixes may end in a training config key ("..., or set data.delimiter"),
        # which prediction does not read: the rest of the fix stays.
        fix = CONFIG_ADVICE.sub("", error.fix or "")
        if fix == error.fix:
            raise
        field = "INPUT" if (error.field or "").startswith("data.") else error.field
        raise TunesmithError(error.problem, file=error.file, field=field,
                             fix=fix or f"{TABLE_FIX} with a header and the rows to predict"
                             ) from None


def _table_as_trained(path: Path, predictor: Predictor,
                      encoding: str) -> tuple[pd.DataFrame, dict[int, str]]:
    delimiter = None
    if path.suffix.lower() == ".csv":
        source = open_source(path, field="INPUT", delimiter=predictor.delimiter,
                             encoding=encoding)
        delimiter = wrong_delimiter_hint(source, source.columns()) or predictor.delimiter
    return read_table_rows(path, field="INPUT", delimiter=delimiter, encoding=encoding)


@dataclass(frozen=True)
class Unreadable:
    """An input row that cannot be predicted, and why."""

    reason: str


def _read_texts(path: Path, predictor: Predictor) -> list[str | Unreadable]:
    column = predictor.manifest["inputs"]["text_column"]
    table, unparsed = _table(path, "text", predictor)
    if column not in table.columns:
        raise TunesmithError(
            f"column {column!r} (the text column the model was trained on) not found; "
            f"the file has {list(table.columns)}",
            file=path,
            field=column,
            fix=f"name the text column {column!r}",
        )
    return [Unreadable(unparsed[row]) if row in unparsed else _text(value, column)
            for row, value in enumerate(table[column].tolist())]


def _text(value: Any, column: str) -> str | Unreadable:
    """A cell as text: a number is written out and an empty cell is the empty text, but a JSON
    list or object is no text to predict."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, list | dict):
        return Unreadable(f"column {column!r} holds a JSON {type(value).__name__}, not a text")
    return str(value)


def _read_rows(path: Path, predictor: Predictor) -> tuple[pd.DataFrame, dict[int, str]]:
    table, unparsed = _table(path, "table rows", predictor)
    assert predictor.tabular is not None
    require_columns(table, predictor.tabular, file=path)
    return table, unparsed


def require_columns(table: pd.DataFrame, encoding: TabularEncoding, *, file: Path | None) -> None:
    """Every feature column the model was trained on is in `table` (others are ignored)."""
    needed = [*encoding.numeric, *encoding.categorical]
    absent = [column for column in needed if column not in table.columns]
    if absent:
        raise TunesmithError(
            f"feature column(s) {absent} the model was trained on are not in the "
            f"{'file' if file else 'rows'} (they have {list(table.columns)})",
            file=file,
            field=absent[0],
            fix="give every feature column the model was trained on",
        )


def _scanned(images: list[str]) -> ImageScan:
    """Every image decoded once, with progress, to find the unreadable ones."""
    with progress() as bar:
        task = bar.add_task("read images", total=len(images), status="")
        return scan_images(images, on_progress=lambda n: bar.update(task, completed=n))


def _image_files(path: Path) -> list[str]:
    if path.is_dir():
        # As in training: not a folder named a.jpg/, nor hidden files and folders (macOS'
        # ._a.jpg, .ipynb_checkpoints/). Linked folders are followed (each real one once), and
        # a link to a missing file is listed, to be reported in its own row.
        found, seen = [], set()
        for folder, names, files in os.walk(path, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:
                names[:] = []
                continue
            seen.add(real)
            names[:] = [name for name in names if not name.startswith(".")]
            found += [Path(folder) / name for name in files
                      if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES]
        return [str(p) for p in sorted(found)]
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise TunesmithError(
            "this model reads images, not tables or text",
            file=path,
            fix=f"pass image files ({', '.join(sorted(IMAGE_SUFFIXES))}) or folders",
        )
    return [str(path)]


def predictions_table(predictor: Predictor, batch: PredictionInputs) -> pd.DataFrame:
    """One row per input: where it came from, the prediction and (classes) each probability; an
    input that could not be read has its reason in `error` and no prediction."""
    good = pd.DataFrame({"input": [batch.sources[i] for i in batch.good]})
    if predictor.kind == "regression":
        outputs = np.asarray(predictor.predict(batch.inputs) if len(good) else [], dtype=float)
        good["prediction"] = outputs
        finite = np.isfinite(outputs)
    else:  # the same columns when no input could be read
        if predictor.kind == "multilabel":  # one pass: the labels from its logits
            logits = (predictor.outputs(batch.inputs) if len(good) else
                      np.zeros((0, len(predictor.classes)), dtype=np.float32))
            probabilities = torch.sigmoid(torch.from_numpy(logits)).numpy()
        else:
            probabilities = (predictor.predict_proba(batch.inputs) if len(good) else
                             np.zeros((0, len(predictor.classes)), dtype=np.float32))
        if predictor.kind == "multilabel":
            good["labels"] = [
                LABEL_JOINER.join(predictor.classes[k] for k in np.flatnonzero(positive(row)))
                for row in logits
            ]
        else:
            good["label"] = [predictor.classes[i] for i in probabilities.argmax(axis=1)]
        for column, name in enumerate(predictor.classes):
            # rounded in float64: a float32 0.504202 is 0.5042020082473755 in JSON
            good[f"p_{name}"] = probabilities[:, column].astype(np.float64).round(6)
        finite = np.isfinite(probabilities).all(axis=1)
    errors = dict(batch.errors)
    for row in np.flatnonzero(~finite):  # reported in its own row, not predicted by chance
        errors[batch.good[row]] = ("the model's output is not a finite number (an input far "
                                   "beyond the values it trained on?)")
    if not errors:
        return good
    good.index = pd.Index(batch.good)
    table = good.drop(index=[i for i in batch.good if i in errors]).reindex(
        range(len(batch.sources)))
    table["input"] = batch.sources
    table["error"] = [errors.get(i, "") for i in range(len(batch.sources))]
    return table.reset_index(drop=True)


OUT_SUFFIXES = (".csv", ".jsonl")


def check_out(out: Path, inputs: Sequence[Path] = ()) -> None:
    """Predictions are written as CSV or JSONL, named so, and never over one of the inputs;
    checked before predicting."""
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise TunesmithError(
            f"cannot write predictions as {out.suffix or 'a file without a suffix'}",
            file=out, field="--out", fix="name a .csv or a .jsonl file",
        )
    if out.exists() and any(path.exists() and out.samefile(path) for path in inputs):
        raise TunesmithError(
            "this is one of the input files, which the predictions would replace",
            file=out, field="--out", fix="write the predictions to another file",
        )
    folder = next((parent for parent in out.absolute().parents if parent.exists()), Path("/"))
    problem = ("this is a folder" if out.is_dir() else
               f"{folder} is a file, not a folder" if not folder.is_dir() else
               f"the folder {folder} cannot be written to" if not os.access(folder, os.W_OK)
               else None)
    if problem is not None:  # said before predicting, not after
        raise TunesmithError(f"cannot write the predictions here: {problem}", file=out,
                             field="--out", fix="name a .csv or .jsonl file in a writable folder")


def write_predictions(table: pd.DataFrame, out: Path) -> None:
    """CSV, or JSONL with an unpredicted row's missing values as null (strict JSON)."""
    from tunesmith.io import write_text

    check_out(out)
    if out.suffix.lower() == ".jsonl":
        rows = table.astype(object).where(table.notna(), None).to_dict("records")
        text = "".join(json.dumps(row, allow_nan=False) + "\n" for row in rows)
    else:
        text = table.to_csv(index=False)
    try:
        write_text(out, text)
    except OSError as error:  # a disk that filled up, a folder made read-only meanwhile
        raise TunesmithError(f"cannot write the predictions: {error.strerror or error}",
                             file=out, field="--out",
                             fix="name a .csv or .jsonl file in a writable folder") from None
