"""Predicting with a bundle: texts from CSV/JSONL files, or image files and folders."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tunesmith.console import progress
from tunesmith.data.images import check_images
from tunesmith.data.sources import IMAGE_SUFFIXES, read_table
from tunesmith.errors import TunesmithError
from tunesmith.evaluate import collect_logits
from tunesmith.export.bundle import MANIFEST, load_bundle
from tunesmith.models import Classifier
from tunesmith.models.inputs import eval_batches


class Predictor:
    """A loaded bundle: `predict` gives labels, `predict_proba` class probabilities."""

    def __init__(self, model: Classifier, manifest: dict[str, Any]) -> None:
        self.model = model
        self.manifest = manifest
        self.classes: list[str] = list(manifest["classes"])
        self.task: str = manifest["task"]

    @property
    def modality(self) -> str:
        return str(self.model.backbone.modality)

    def predict_proba(self, inputs: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """Probabilities, one row per input (texts, or image file paths), columns in `classes`."""
        if not inputs:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        batches = eval_batches(self.model.backbone, list(inputs), batch_size=batch_size)
        with progress() as bar:
            task = bar.add_task("predict", total=len(inputs), status="")
            logits, _ = collect_logits(
                self.model, batches, on_batch=lambda n: bar.update(task, advance=n)
            )
        return torch.softmax(torch.from_numpy(logits), dim=1).numpy()

    def predict(self, inputs: Sequence[str]) -> list[str]:
        return [self.classes[i] for i in self.predict_proba(inputs).argmax(axis=1)]


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
    inputs: list[str]


def gather_inputs(predictor: Predictor, paths: Sequence[Path]) -> PredictionInputs:
    """Read every input the user named, checking it suits the bundle's modality."""
    sources: list[str] = []
    inputs: list[str] = []
    for path in paths:
        if not path.exists():
            raise TunesmithError("input not found", file=path, fix="pass existing files or folders")
        if predictor.modality == "text":
            texts = _read_texts(path, predictor.manifest["inputs"]["text_column"])
            sources += [f"{path}:{row}" for row in range(len(texts))]
            inputs += texts
        else:
            images = _image_files(path)
            check_images(images, field="INPUT")
            sources += images
            inputs += images
    if not inputs:
        raise TunesmithError(
            "the inputs hold nothing to predict",
            file=", ".join(map(str, paths)),
            fix="pass a file with rows or a folder with images",
        )
    return PredictionInputs(sources, inputs)


def _read_texts(path: Path, column: str) -> list[str]:
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        raise TunesmithError(
            "this model reads text, not images",
            file=path,
            fix="pass a CSV, TSV or JSONL file with a text column",
        )
    table = read_table(path, field="INPUT")
    if column not in table.columns:
        raise TunesmithError(
            f"column {column!r} (the text column the model was trained on) not found; "
            f"the file has {list(table.columns)}",
            file=path,
            field=column,
            fix=f"name the text column {column!r}",
        )
    return [str(text) for text in table[column].fillna("").tolist()]


def _image_files(path: Path) -> list[str]:
    if path.is_dir():
        return [str(p) for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise TunesmithError(
            "this model reads images, not tables or text",
            file=path,
            fix=f"pass image files ({', '.join(sorted(IMAGE_SUFFIXES))}) or folders",
        )
    return [str(path)]


def predictions_table(
    predictor: Predictor, batch: PredictionInputs, probabilities: np.ndarray
) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "input": batch.sources,
            "label": [predictor.classes[i] for i in probabilities.argmax(axis=1)],
        }
    )
    for column, name in enumerate(predictor.classes):
        table[f"p_{name}"] = probabilities[:, column].round(6)
    return table


def write_predictions(table: pd.DataFrame, out: Path) -> None:
    from tunesmith.io import write_text

    if out.suffix.lower() == ".jsonl":
        write_text(out, "".join(json.dumps(row) + "\n" for row in table.to_dict("records")))
    else:
        write_text(out, table.to_csv(index=False))
