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
and the graph is not kept. The check runs on every execution provider prediction uses: ONNX
Runtime's own CPU kernels and, where it is installed (`onnxruntime-openvino`, Linux on x86-64),
its OpenVINO provider held to float32. `--quantize int8` adds ONNX Runtime's dynamic int8
quantization of the weights, with its change in test accuracy (or RMSE) reported.

`OnnxPredictor` predicts with the graph (`tunesmith predict --engine onnx`). In bf16 (on a CPU that
multiplies bf16 natively, through the OpenVINO provider) a classifier's probabilities move a
little, so the export measures how far on the run's rows (validation, then training), and
prediction recomputes in float32 every row whose labels are within a margin drawn from that of
changing (its top two probabilities that close, or for multilabel, one probability that close
to 0.5): the labels stay float32's.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch
from rich.markup import escape
from torch import nn

from tunesmith.console import console, progress
from tunesmith.errors import TunesmithError
from tunesmith.export.predictor import Predictor, bundle_folder
from tunesmith.io import atomic_write, file_sha256
from tunesmith.models.heads import full_precision

MODEL = "model.onnx"
QUANTIZED = "model.int8.onnx"
RECORD = "export.json"
PARITY_ROWS = 32
PARITY_TOLERANCE = 1e-4
OPSET = 17
TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
CPU = "CPUExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
PRECISIONS = ("fp32", "bf16")
CALIBRATION_ROWS = 1024  # rows on which bf16's change in probabilities is measured
# A label can change only where a row's `decision_gap` is under twice the largest change of one
# probability; rows under RECHECK_SAFETY times that are recomputed in float32.
RECHECK_SAFETY = 4.0
# Batches decoded ahead of the graph (a thread's queue): images decode while the graph runs
PREFETCH = 2

T = TypeVar("T")


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
    sha256: str = ""
    providers: list[str] | None = None  # the execution providers the parity check ran on
    bf16: dict[str, Any] | None = None
    int8: dict[str, Any] | None = None


def providers() -> list[str]:
    """The execution providers prediction uses here: OpenVINO's first where it is installed."""
    import onnxruntime as ort

    return [p for p in (OPENVINO, CPU) if p in ort.get_available_providers()]


def runtime_errors() -> tuple[type[Exception], ...]:
    """What ONNX Runtime raises when a provider cannot load or run a graph."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return (state.Fail, state.EPFail, state.InvalidGraph, state.NotImplemented,
            state.RuntimeException)


def bf16_available() -> bool:
    """Whether bf16 prediction runs here: ONNX Runtime's OpenVINO provider, on a CPU with bf16
    matrix instructions (AVX-512 BF16 or AMX). ONNX Runtime's own CPU kernels have no bf16."""
    if OPENVINO not in providers():
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def open_session(path: Path, precision: str = "fp32", provider: str | None = None) -> Any:
    """An ONNX Runtime session for the graph at `path`: the OpenVINO provider where it is
    installed (or `provider`), its inference precision held to `precision`. OpenVINO would
    otherwise compute in bf16 by itself on a CPU that has it."""
    import onnxruntime as ort

    chosen = provider or providers()[0]
    options = ort.SessionOptions()
    options.log_severity_level = 3  # not the provider's notes on which nodes it left to the CPU
    if chosen == CPU:
        return ort.InferenceSession(str(path), options, providers=[CPU])
    config = {"CPU": {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                      "PERFORMANCE_HINT": "THROUGHPUT"}}
    openvino = {"device_type": "CPU", "precision": "ACCURACY" if precision == "bf16" else "FP32",
                "load_config": json.dumps(config)}
    return ort.InferenceSession(str(path), options, providers=[OPENVINO, CPU],
                                provider_options=[openvino, {}])


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
    evaluation: tuple[Any, np.ndarray] | None = None, calibration: Any = None,
    quantize: bool = False,
) -> ExportRecord:
    """Export `predictor`'s model to `out_dir/model.onnx`; `sample` (at least a few real inputs)
    traces the graph and checks it; `calibration` (inputs of the run: validation, then training)
    measures bf16's change in a classifier's probabilities; `evaluation` (inputs, targets)
    scores the int8 graph."""
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

    ran: list[str] = []  # the providers that ran the graph

    def checked(tmp: Path) -> None:  # a graph that fails the check never takes the place
        nonlocal worst, allowed, rows
        write(tmp)
        for provider in providers():
            try:
                found, allowed, rows = _parity(open_session(tmp, provider=provider), wrapper,
                                               predictor, sample, names, output)
            except runtime_errors() as error:
                if provider == CPU:
                    raise
                console.print(escape(
                    f"ONNX Runtime's {provider} could not run this graph "
                    f"({str(error).splitlines()[0][:200]}): prediction uses its CPU kernels"),
                    style="yellow", highlight=False)
                continue
            worst = max(worst, found)
            ran.append(provider)
        if worst > allowed:
            raise TunesmithError(
                f"the ONNX graph's outputs differ from PyTorch's by up to {worst:.2e} on {rows} "
                f"inputs (at most {allowed:.1e} allowed)", file=path, field="--format",
                fix="export with --format safetensors, or report the model's architecture")

    atomic_write(path, checked)
    record = ExportRecord("onnx", str(path), names, axes, output, rows, worst, allowed,
                          path.stat().st_size // 1024, round(time.perf_counter() - started, 1),
                          file_sha256(path), ran,
                          _bf16_change(path, predictor, names, output, calibration)
                          if OPENVINO in ran else None)
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


def _bf16_change(path: Path, predictor: Predictor, names: list[str], output: str,
                 inputs: Any) -> dict[str, Any] | None:
    """How far bf16 moves a classifier's probabilities on the run's rows, and the margin under
    which prediction in bf16 recomputes a row in float32 (None where bf16 does not run here)."""
    if predictor.kind not in ("classification", "multilabel") or inputs is None \
            or not len(inputs) or not bf16_available():
        return None
    rows = inputs[:CALIBRATION_ROWS]
    exact = predict_rows(open_session(path, "fp32"), predictor, rows, names, output)
    fast = predict_rows(open_session(path, "bf16"), predictor, rows, names, output)
    change = float(np.abs(fast - exact).max())
    margin = RECHECK_SAFETY * 2 * change
    changed = labels_of(fast, predictor.kind) != labels_of(exact, predictor.kind)
    return {"rows": len(exact), "max_abs_diff": change, "recheck_margin": margin,
            "rechecked_share": float(np.mean(decision_gap(fast, predictor.kind) < margin)),
            "labels_changed_unrechecked": int(np.sum(changed.reshape(len(exact), -1).any(1)))}


def labels_of(probabilities: np.ndarray, kind: str) -> np.ndarray:
    """Each row's class (classification), or its label set as booleans (multilabel)."""
    return probabilities >= 0.5 if kind == "multilabel" else probabilities.argmax(1)


def decision_gap(probabilities: np.ndarray, kind: str) -> np.ndarray:
    """How far each row is from a change of its labels, scaled so that a change of every
    probability by at most d can change them only where the gap is under 2 d: the top two
    probabilities' difference (classification), or twice the distance of the probability
    closest to 0.5 (multilabel). NaN where one is not finite."""
    if kind == "multilabel":
        return np.asarray(2 * np.abs(probabilities - 0.5).min(axis=1))
    return top_two_gap(probabilities)


def top_two_gap(probabilities: np.ndarray) -> np.ndarray:
    """Each row's largest probability less its second largest (NaN where one is not finite)."""
    if probabilities.shape[1] < 2:
        return np.full(len(probabilities), np.inf)
    top = np.sort(probabilities, axis=1)[:, -2:]
    return np.asarray(top[:, 1] - top[:, 0])


def _quantized(
    record: ExportRecord, predictor: Predictor, out_dir: Path, names: list[str], output: str,
    evaluation: tuple[Any, np.ndarray] | None,
) -> ExportRecord:
    """ONNX Runtime's dynamic int8 quantization of the weights, and what it costs in quality."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

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
            session = ort.InferenceSession(str(graph), providers=[CPU])
            outputs = predict_rows(session, predictor, inputs, names, output)
            scores[name] = _quality(predictor.kind, outputs, targets)
        metric = next(iter(scores["fp32"]))
        found.update({"rows": len(targets), "metric": metric, "fp32": scores["fp32"][metric],
                      "int8": scores["int8"][metric],
                      "change": scores["int8"][metric] - scores["fp32"][metric]})
    return ExportRecord(**{**asdict(record), "int8": found})


def predict_rows(session: Any, predictor: Predictor, inputs: Any, names: list[str], output: str,
                 batch_size: int = 64, on_batch: Callable[[int], Any] | None = None) -> np.ndarray:
    """The graph's outputs for `inputs`, in their order (prediction batches texts by length)."""
    from tunesmith.models.inputs import eval_batches

    made = eval_batches(predictor.model.backbone, predictor.encode(inputs), batch_size=batch_size)
    parts = []
    for batch in prefetched(made.loader, PREFETCH):
        parts.append(session.run([output], {n: batch[n].numpy() for n in names})[0])
        if on_batch is not None:
            on_batch(len(parts[-1]))
    stacked = np.concatenate(parts)
    restore = np.empty(len(made.order), dtype=int)
    restore[np.asarray(made.order)] = np.arange(len(made.order))
    return np.asarray(stacked[restore])


def prefetched(items: Iterable[T], depth: int) -> Iterator[T]:
    """`items` in order, made by a background thread up to `depth` ahead of the consumer; what
    making one raises is raised here. The graph's run releases the GIL, and ONNX Runtime's
    threads leave room on the cores, so the next batch's images decode meanwhile (EfficientNet-
    Lite0 on 64-pixel digits: a quarter to a third more samples/s). Eager PyTorch does not gain:
    its OpenMP threads and a decoding thread slow each other down (a sixth fewer samples/s)."""
    ready: queue.Queue[tuple[bool, Any]] = queue.Queue(depth)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def make() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
        except BaseException as error:  # raised again in the consumer
            put((False, error))
            return
        put((False, None))

    thread = threading.Thread(target=make, name="tunesmith-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            more, item = ready.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _quality(kind: str, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    if kind == "regression":
        return {"rmse": float(np.sqrt(np.mean((outputs.reshape(-1) - targets) ** 2)))}
    if kind == "multilabel":
        return {"subset_accuracy": float(np.mean(((outputs >= 0.5) == (targets > 0.5)).all(1)))}
    return {"accuracy": float(np.mean(outputs.argmax(axis=1) == targets))}


def _rows(inputs: Any, positions: np.ndarray) -> Any:
    """The inputs at `positions`: from a list, a DataFrame or encoded rows."""
    if isinstance(inputs, pd.DataFrame):
        return inputs.iloc[positions]
    if isinstance(inputs, np.ndarray):
        return inputs[positions]
    return [inputs[i] for i in positions]


class OnnxPredictor(Predictor):
    """A bundle whose graph ONNX Runtime runs: the bundle's own preprocessing (tokenizer, image
    transforms, table encoding), the exported graph's outputs. In `bf16` the rows whose labels
    are close to changing (`decision_gap` under the export's recheck margin) are recomputed in
    float32; `rechecked` counts them in the last call."""

    def __init__(self, base: Predictor, graph: Path, record: dict[str, Any], precision: str
                 ) -> None:
        super().__init__(base.model, base.manifest)
        self.graph, self.record, self.precision = graph, record, precision
        self.names: list[str] = list(record["inputs"])
        self.output: str = record["output"]
        self.recheck_margin = 0.0
        self.rechecked = 0
        if precision == "bf16":
            self.recheck_margin = self._recheck_margin()
        # the providers the export's check ran the graph on (older exports: any here)
        checked = record.get("providers") or providers()
        self.provider = next((p for p in providers() if p in checked), CPU)
        self.session = open_session(graph, "fp32", self.provider)
        self.fast = open_session(graph, "bf16", OPENVINO) if precision == "bf16" else None

    def _recheck_margin(self) -> float:
        fallback = "use --precision fp32"
        if self.kind == "regression":
            raise TunesmithError(
                "bf16 prediction recomputes the rows whose labels are close to changing; a "
                "regression model has none", field="--precision", fix=fallback)
        if not bf16_available():
            raise TunesmithError(
                "bf16 prediction needs ONNX Runtime's OpenVINO provider and a CPU with bf16 "
                f"instructions (AVX-512 BF16 or AMX); here there are {', '.join(providers())}",
                field="--precision", fix=fallback)
        if OPENVINO not in (self.record.get("providers") or []):
            raise TunesmithError(
                "the export did not run this graph on ONNX Runtime's OpenVINO provider, which "
                "bf16 prediction uses", file=self.graph, field="--precision",
                fix="export again here (tunesmith export RUN_DIR), or " + fallback)
        change = self.record.get("bf16")
        if not change:
            raise TunesmithError(
                "the export has no measure of bf16's change in this model's probabilities "
                "(made where bf16 did not run, or by an older tunesmith)", file=self.graph,
                field="--precision", fix="export again here (tunesmith export RUN_DIR), or "
                + fallback)
        margin = float(change["recheck_margin"])
        if margin >= 1.0:
            raise TunesmithError(
                f"bf16 moved this model's probabilities by up to {change['max_abs_diff']:.2f} on "
                f"{change['rows']} of the run's rows: every row would be recomputed in float32",
                file=self.graph, field="--precision", fix=fallback)
        return margin

    def _run(self, session: Any, inputs: Any, batch_size: int, label: str) -> np.ndarray:
        with progress() as bar:
            task = bar.add_task(label, total=len(inputs), status="")
            return predict_rows(session, self, inputs, self.names, self.output,
                                batch_size=batch_size,
                                on_batch=lambda n: bar.update(task, advance=n))

    def _graph_outputs(self, inputs: Any, batch_size: int) -> np.ndarray:
        self._require_many(inputs)
        self.rechecked = 0
        if len(inputs) == 0:
            return np.zeros((0, 1 if self.kind == "regression" else len(self.classes)),
                            dtype=np.float32)
        if self.fast is None:
            return self._run(self.session, inputs, batch_size, "predict (onnx)")
        found = self._run(self.fast, inputs, batch_size, "predict (onnx, bf16)")
        gap = decision_gap(found, self.kind)
        close = np.flatnonzero(~(gap >= self.recheck_margin))  # NaN rows too
        if len(close):
            found[close] = self._run(self.session, _rows(inputs, close), batch_size,
                                     "recheck (onnx, fp32)")
        self.rechecked = len(close)
        return found

    def predict_proba(
        self, inputs: Sequence[Any] | pd.DataFrame, *, batch_size: int = 64
    ) -> np.ndarray:
        if self.kind == "regression":
            return super().predict_proba(inputs)  # refused, as the bundle refuses it
        return self._graph_outputs(inputs, batch_size)

    def outputs(self, inputs: Sequence[Any] | pd.DataFrame, *, batch_size: int = 64) -> np.ndarray:
        """The graph's numbers (regression); for classes, logits recovered from its
        probabilities: log-odds per label (multilabel), or the log-probabilities times the
        temperature, which differ from the model's logits by a constant per row."""
        found = self._graph_outputs(inputs, batch_size)
        if self.kind == "regression":
            return found
        probabilities = found.astype(np.float64)
        with np.errstate(divide="ignore"):
            if self.kind == "multilabel":
                return np.log(probabilities) - np.log1p(-probabilities)
            return self.temperature * np.log(probabilities)


def load_onnx_predictor(path: str | Path, precision: str = "fp32") -> OnnxPredictor:
    """The ONNX engine for a run folder exported with `tunesmith export` (or its `best/`)."""
    from tunesmith.export.predictor import load_predictor

    if precision not in PRECISIONS:
        raise TunesmithError(f"unknown precision {precision!r}", field="--precision",
                             fix="use --precision fp32 or --precision bf16")
    folder = Path(path)
    bundle = bundle_folder(folder)
    run = folder if bundle != folder else folder.parent  # the export sits beside best/
    record_path, graph = run / RECORD, run / MODEL
    if not record_path.is_file() or not graph.is_file():
        raise TunesmithError("this run has no ONNX graph", file=graph, field="--engine",
                             fix=f"export it first: tunesmith export {run} --format onnx "
                             "(or predict with --engine torch)")
    record = json.loads(record_path.read_text())
    if record.get("sha256") and file_sha256(graph) != record["sha256"]:
        raise TunesmithError(
            f"the ONNX graph is not the one exported (its checksum differs from {RECORD}'s)",
            file=graph, field="sha256", fix=f"export again: tunesmith export {run} --format onnx")
    return OnnxPredictor(load_predictor(bundle), graph, record, precision)
