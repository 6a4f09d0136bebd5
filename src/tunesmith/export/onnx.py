"""`tunesmith export RUN_DIR --format onnx`: the bundle as an ONNX graph, checked against PyTorch.

The graph takes what the backbone reads after preprocessing (token ids and attention mask, pixel
values, or encoded feature rows: the names and order are in `export.json`), with a dynamic batch
axis and, for text, a dynamic sequence axis. It outputs what `Predictor.predict_proba` returns:
softmax of the outputs over the bundle's temperature (one sigmoid per label for multilabel), or
the predicted numbers for regression. Tokenizers and image preprocessing stay outside the graph:
`best/backbone/` and `tunesmith.json` hold them.

After the export, ONNX Runtime runs the graph on real inputs (the run's test rows, in batches of
different lengths) and the largest absolute difference from PyTorch's outputs is reported; above
`PARITY_TOLERANCE` (for a regression, that share of the largest output) the export is an error
and the graph is not kept. `--quantize int8` adds ONNX Runtime's dynamic int8
quantization of the weights, with its change in test accuracy (or RMSE) reported.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tunesmith.errors import TunesmithError
from tunesmith.export.predictor import Predictor
from tunesmith.models.heads import full_precision

MODEL = "model.onnx"
QUANTIZED = "model.int8.onnx"
RECORD = "export.json"
PARITY_ROWS = 32
PARITY_TOLERANCE = 1e-4
OPSET = 17
TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class Exported(nn.Module):
    """The bundle's model with positional inputs and its probabilities (or numbers) out."""

    def __init__(self, model: nn.Module, names: list[str], kind: str, temperature: float) -> None:
        super().__init__()
        self.model, self.names, self.kind = model, names, kind
        self.temperature = temperature

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        outputs = full_precision(self.model(dict(zip(self.names, tensors, strict=True))))
        if self.kind == "multilabel":
            return torch.sigmoid(outputs)
        if self.kind == "classification":
            return torch.softmax(outputs / self.temperature, dim=1)
        return outputs


@dataclass(frozen=True)
class ExportRecord:
    format: str
    path: str
    inputs: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    output: str
    parity_rows: int
    parity_max_abs_diff: float
    parity_allowed: float
    onnx_kb: int
    export_s: float
    int8: dict[str, Any] | None = None


def batches(
    predictor: Predictor, inputs: Any, batch_size: int
) -> Iterator[dict[str, torch.Tensor]]:
    """The model's input tensors for `inputs`, in batches as prediction makes them."""
    from tunesmith.models.inputs import eval_batches

    loader = eval_batches(predictor.model.backbone, predictor.encode(inputs),
                          batch_size=batch_size).loader
    for batch in loader:
        batch = dict(batch)
        batch.pop("labels", None)
        yield batch


def export_onnx(
    predictor: Predictor, out_dir: Path, sample: Any, *,
    evaluation: tuple[Any, np.ndarray] | None = None, quantize: bool = False,
) -> ExportRecord:
    """Export `predictor`'s model to `out_dir/model.onnx`; `sample` (at least a few real inputs)
    traces the graph and checks it; `evaluation` (inputs, targets) scores the int8 graph."""
    import onnxruntime as ort

    from tunesmith.io import atomic_write

    started = time.perf_counter()
    first = next(batches(predictor, sample[:2] if len(sample) > 2 else sample, 2))
    names = sorted(first)
    axes = {name: ({0: "batch", 1: "sequence"} if name in TEXT_KEYS else {0: "batch"})
            for name in names}
    output = "predictions" if predictor.kind == "regression" else "probabilities"
    axes[output] = {0: "batch"}
    wrapper = Exported(predictor.model, names, predictor.kind, predictor.temperature).eval()

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
            torch.onnx.export(wrapper, tuple(first[n] for n in names), str(tmp),
                              input_names=names, output_names=[output], dynamic_axes=axes,
                              opset_version=OPSET, dynamo=False)

    path = out_dir / MODEL
    worst, allowed, rows = 0.0, PARITY_TOLERANCE, 0

    def checked(tmp: Path) -> None:  # a graph that fails the check never takes the place
        nonlocal worst, allowed, rows
        write(tmp)
        worst, allowed, rows = _parity(ort.InferenceSession(
            str(tmp), providers=["CPUExecutionProvider"]), wrapper, predictor, sample, names,
            output)
        if worst > allowed:
            raise TunesmithError(
                f"the ONNX graph's outputs differ from PyTorch's by up to {worst:.2e} on {rows} "
                f"inputs (at most {allowed:.1e} allowed)", file=path, field="--format",
                fix="export with --format safetensors, or report the model's architecture")

    atomic_write(path, checked)
    record = ExportRecord("onnx", str(path), names, axes, output, rows, worst, allowed,
                          path.stat().st_size // 1024, round(time.perf_counter() - started, 1))
    if quantize:
        record = _quantized(record, predictor, out_dir, names, output, evaluation)
    (out_dir / RECORD).write_text(json.dumps(asdict(record), indent=2) + "\n")
    return record


def _parity(session: Any, wrapper: Exported, predictor: Predictor, sample: Any, names: list[str],
            output: str) -> tuple[float, float, int]:
    """The largest absolute difference between the graph's and PyTorch's outputs on the first
    `PARITY_ROWS` of `sample`, what is allowed, and the rows compared. Probabilities may differ
    by `PARITY_TOLERANCE`; a regression's numbers, in the target's units, by that share of the
    largest of them (float32 carries about 7 digits: a target near 1e5 moves in steps of 0.008)."""
    worst, largest, rows = 0.0, 0.0, 0
    for batch in batches(predictor, sample[:PARITY_ROWS], 8):  # batches of several lengths
        with torch.no_grad():
            expected = wrapper(*(batch[n] for n in names)).numpy()
        got = session.run([output], {n: batch[n].numpy() for n in names})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
        largest = max(largest, float(np.abs(expected).max()))
        rows += len(expected)
    scale = max(1.0, largest) if predictor.kind == "regression" else 1.0
    return worst, PARITY_TOLERANCE * scale, rows


def _quantized(
    record: ExportRecord, predictor: Predictor, out_dir: Path, names: list[str], output: str,
    evaluation: tuple[Any, np.ndarray] | None,
) -> ExportRecord:
    """ONNX Runtime's dynamic int8 quantization of the weights, and what it costs in quality."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from tunesmith.io import atomic_write

    path = out_dir / QUANTIZED
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process the graph is for static quantization
    try:
        atomic_write(path, lambda tmp: quantize_dynamic(str(out_dir / MODEL), str(tmp),
                                                        weight_type=QuantType.QInt8))
    finally:
        root.setLevel(level)
    found: dict[str, Any] = {"path": str(path), "onnx_kb": path.stat().st_size // 1024}
    if evaluation is not None:
        inputs, targets = evaluation
        scores = {}
        for name, graph in (("fp32", out_dir / MODEL), ("int8", path)):
            session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
            outputs = predict_rows(session, predictor, inputs, names, output)
            scores[name] = _quality(predictor.kind, outputs, targets)
        metric = next(iter(scores["fp32"]))
        found.update({"rows": len(targets), "metric": metric, "fp32": scores["fp32"][metric],
                      "int8": scores["int8"][metric],
                      "change": scores["int8"][metric] - scores["fp32"][metric]})
    return ExportRecord(**{**asdict(record), "int8": found})


def predict_rows(session: Any, predictor: Predictor, inputs: Any, names: list[str], output: str,
                 batch_size: int = 64) -> np.ndarray:
    """The graph's outputs for `inputs`, in their order (prediction batches texts by length)."""
    from tunesmith.models.inputs import eval_batches

    made = eval_batches(predictor.model.backbone, predictor.encode(inputs), batch_size=batch_size)
    parts = []
    for batch in made.loader:
        parts.append(session.run([output], {n: batch[n].numpy() for n in names})[0])
    stacked = np.concatenate(parts)
    restore = np.empty(len(made.order), dtype=int)
    restore[np.asarray(made.order)] = np.arange(len(made.order))
    return np.asarray(stacked[restore])


def _quality(kind: str, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    if kind == "regression":
        return {"rmse": float(np.sqrt(np.mean((outputs.reshape(-1) - targets) ** 2)))}
    if kind == "multilabel":
        return {"subset_accuracy": float(np.mean(((outputs >= 0.5) == (targets > 0.5)).all(1)))}
    return {"accuracy": float(np.mean(outputs.argmax(axis=1) == targets))}
