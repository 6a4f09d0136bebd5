"""Predicting with a bundle: texts and table rows from CSV/JSONL files, or image files and folders.

What a prediction is follows the task: a class and its probabilities (classification), the set of
labels whose probability passes 0.5 and every label's probability (multilabel), or a number
(regression).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tunesmith.console import progress
from tunesmith.data.image_scan import scan_images
from tunesmith.data.sources import IMAGE_SUFFIXES, read_table
from tunesmith.data.tabular import TabularEncoding, missing_words
from tunesmith.errors import TunesmithError
from tunesmith.evaluate import collect_logits
from tunesmith.export.bundle import MANIFEST, load_bundle
from tunesmith.models import TaskModel
from tunesmith.models.ensemble import Ensemble
from tunesmith.models.inputs import Inputs, eval_batches

MULTILABEL_THRESHOLD = 0.5


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
        # decoded as in training (bundles from before it was kept: RGB, the only mode used then)
        model.backbone.image_mode = manifest["inputs"].get("image_mode", "RGB")

    @property
    def modality(self) -> str:
        return str(self.model.backbone.modality)

    @property
    def kind(self) -> str:
        return self.task.split("-", 1)[1]

    def encode(self, inputs: Sequence[Any] | pd.DataFrame) -> Inputs:
        """Texts and image paths as they are; table rows (a DataFrame, or dicts) encoded."""
        if self.tabular is None:
            return [str(item) for item in inputs]
        frame = inputs if isinstance(inputs, pd.DataFrame) else pd.DataFrame(list(inputs))
        return self.tabular.transform(frame)

    def outputs(self, inputs: Sequence[Any] | pd.DataFrame, *, batch_size: int = 64) -> np.ndarray:
        """The model's raw outputs: logits, or numbers in the target's units."""
        if len(inputs) == 0:
            width = 1 if self.kind == "regression" else len(self.classes)
            return np.zeros((0, width), dtype=np.float32)
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
        """A class per input, a tuple of labels (multilabel), or a number (regression)."""
        if self.kind == "regression":
            return [float(value) for value in self.outputs(inputs).reshape(-1)]
        probabilities = self.predict_proba(inputs)
        if self.kind == "multilabel":
            return [
                tuple(self.classes[k] for k in np.flatnonzero(row >= MULTILABEL_THRESHOLD))
                for row in probabilities
            ]
        return [self.classes[i] for i in probabilities.argmax(axis=1)]


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
        if not path.exists():
            raise TunesmithError("input not found", file=path, fix="pass existing files or folders")
        if predictor.modality == "text":
            texts = _read_texts(path, predictor.manifest["inputs"]["text_column"])
            sources += [f"{path}:{row}" for row in range(len(texts))]
            texts_or_images += texts
        elif predictor.modality == "tabular":
            table = _read_rows(path, predictor)
            sources += [f"{path}:{row}" for row in range(len(table))]
            tables.append(table)
        else:
            images = _image_files(path)
            scan = scan_images(images)
            for image, readable, error in zip(images, scan.readable, scan.errors, strict=True):
                if not readable:  # reported in its own output row; the rest goes on
                    errors[len(sources)] = f"cannot read the image: {error}"
                else:
                    texts_or_images.append(image)
                sources.append(image)
    if not sources:
        raise TunesmithError(
            "the inputs hold nothing to predict",
            file=", ".join(map(str, paths)),
            fix="pass a file with rows or a folder with images",
        )
    if tables:
        table = pd.concat(tables, ignore_index=True)
        assert predictor.tabular is not None
        bad = _unreadable_rows(table, predictor.tabular)
        errors.update(bad)
        return PredictionInputs(sources, table.drop(index=list(bad)).reset_index(drop=True),
                                errors)
    return PredictionInputs(sources, texts_or_images, errors)


def _unreadable_rows(table: pd.DataFrame, encoding: TabularEncoding) -> dict[int, str]:
    """Rows the encoding would refuse, {row: why}: a value in a numeric feature column that is
    not a finite number, or an empty cell where the bundle does not impute."""
    bad: dict[int, str] = {}
    columns = [*encoding.numeric, *encoding.categorical]
    gaps = {column: table[column].isna().to_numpy() for column in columns}
    for column in encoding.numeric:
        values = table[column]
        gaps[column] = gaps[column] | missing_words(values)  # NA, n/a, ...: gaps, as in training
        parsed = pd.to_numeric(values, errors="coerce")
        for row in np.flatnonzero(parsed.isna().to_numpy() & ~gaps[column]):
            bad.setdefault(int(row), f"column {column!r}: {values.iloc[row]!r} is not a number")
        finite = parsed.to_numpy(dtype=np.float64, na_value=np.nan)
        for row in np.flatnonzero(np.isinf(finite)):
            bad.setdefault(int(row), f"column {column!r}: {values.iloc[row]!r} is not finite")
    if encoding.impute == "none":
        for column in columns:
            for row in np.flatnonzero(gaps[column]):
                bad.setdefault(int(row), f"column {column!r} is empty and the model was "
                                         "trained without imputation")
    return bad


def _table(path: Path, modality: str) -> pd.DataFrame:
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        raise TunesmithError(
            f"this model reads {modality}, not images",
            file=path,
            fix="pass a CSV, TSV, JSONL or Parquet file",
        )
    return read_table(path, field="INPUT")


def _read_texts(path: Path, column: str) -> list[str]:
    table = _table(path, "text")
    if column not in table.columns:
        raise TunesmithError(
            f"column {column!r} (the text column the model was trained on) not found; "
            f"the file has {list(table.columns)}",
            file=path,
            field=column,
            fix=f"name the text column {column!r}",
        )
    return [str(text) for text in table[column].fillna("").tolist()]


def _read_rows(path: Path, predictor: Predictor) -> pd.DataFrame:
    table = _table(path, "table rows")
    assert predictor.tabular is not None
    needed = [*predictor.tabular.numeric, *predictor.tabular.categorical]
    absent = [column for column in needed if column not in table.columns]
    if absent:
        raise TunesmithError(
            f"feature column(s) {absent} the model was trained on are not in the file "
            f"(it has {list(table.columns)})",
            file=path,
            field=absent[0],
            fix="give every feature column the model was trained on",
        )
    return table


def _image_files(path: Path) -> list[str]:
    if path.is_dir():
        return [str(p) for p in sorted(path.rglob("*"))
                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]  # not a folder a.jpg/
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
        good["prediction"] = predictor.predict(batch.inputs) if len(good) else []
    elif len(good):
        probabilities = predictor.predict_proba(batch.inputs)
        if predictor.kind == "multilabel":
            good["labels"] = [
                "|".join(predictor.classes[k] for k in np.flatnonzero(row >= MULTILABEL_THRESHOLD))
                for row in probabilities
            ]
        else:
            good["label"] = [predictor.classes[i] for i in probabilities.argmax(axis=1)]
        for column, name in enumerate(predictor.classes):
            good[f"p_{name}"] = probabilities[:, column].round(6)
    if not batch.errors:
        return good
    good.index = pd.Index(batch.good)
    table = good.reindex(range(len(batch.sources)))
    table["input"] = batch.sources
    table["error"] = [batch.errors.get(i, "") for i in range(len(batch.sources))]
    return table.reset_index(drop=True)


OUT_SUFFIXES = (".csv", ".jsonl")


def check_out(out: Path) -> None:
    """Predictions are written as CSV or JSONL, named so; checked before predicting."""
    if out.suffix.lower() not in OUT_SUFFIXES:
        raise TunesmithError(
            f"cannot write predictions as {out.suffix or 'a file without a suffix'}",
            file=out, field="--out", fix="name a .csv or a .jsonl file",
        )


def write_predictions(table: pd.DataFrame, out: Path) -> None:
    """CSV, or JSONL with an unpredicted row's missing values as null (strict JSON)."""
    from tunesmith.io import write_text

    check_out(out)
    if out.suffix.lower() == ".jsonl":
        rows = table.astype(object).where(table.notna(), None).to_dict("records")
        write_text(out, "".join(json.dumps(row, allow_nan=False) + "\n" for row in rows))
    else:
        write_text(out, table.to_csv(index=False))
