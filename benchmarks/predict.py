"""Prediction speed on this CPU: the bundle in eager PyTorch against its ONNX graph in ONNX Runtime.

    python examples/sentiment/prepare.py && python examples/digits/prepare.py
    python benchmarks/predict.py

For MiniLM on Rotten Tomatoes and EfficientNet-Lite0 on MNIST-5k (64x64), a bundle is made by a
short `tunesmith run` (a linear probe: two epochs of the head on frozen features, so the margins
are a trained model's, in a minute or two), exported with `tunesmith export --format onnx`, and both
predict every test row in batches of 64, interleaved (eager, ONNX, eager, ONNX, ...; the best of
three each), through the same input pipeline (tokenization or image decoding included). Reported:
samples/s of each, their ratio, and whether the labels agree on every test row; and, to read
the ratio against what the machine allows, the model's forward FLOPs per row on those batches
(torch's FlopCounterMode) and each arm's share of the fp32 matrix-product rate measured in the same
script (a roofline: a graph already at the matrix units' rate cannot be made much faster).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # the example configs

from tunesmith import api
from tunesmith.config import load_config
from tunesmith.export.onnx import batches, predict_rows

REPEATS = 3
BATCH = 64


def bundle(config: Path, workdir: Path, name: str) -> Path:
    overrides = ["model.strategy=linear-probe", "train.epochs=2", f"name={name}",
                 f"output_dir={workdir}"]
    return api.fit(load_config(config, overrides)).run_dir


def forward_flops(predictor: Any, inputs: Any) -> float:
    """FLOPs of the model's forward pass per row, over the prediction batches of `inputs`."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        for batch in batches(predictor, inputs, BATCH):
            predictor.model(batch)
    return float(counter.get_total_flops()) / len(inputs)


def measure(name: str, config: Path, workdir: Path, gflops: float) -> dict[str, Any]:
    run_dir = bundle(config, workdir, name)
    record = api.export(run_dir, "onnx")
    predictor = api.load(run_dir)
    test = api.prepare(load_config(run_dir / "config.yaml")).data.test
    inputs = test.features if test.features is not None else test.inputs
    session = ort.InferenceSession(record.path, providers=["CPUExecutionProvider"])
    eager_s, onnx_s = [], []
    for _ in range(REPEATS):
        started = time.perf_counter()
        eager = predictor.predict_proba(inputs, batch_size=BATCH)
        eager_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        graph = predict_rows(session, predictor, inputs, record.inputs, record.output,
                             batch_size=BATCH)
        onnx_s.append(time.perf_counter() - started)
    rows = len(test)
    flops = forward_flops(predictor, inputs)
    eager_rate, onnx_rate = rows / min(eager_s), rows / min(onnx_s)
    result = {
        "model": name, "rows": rows,
        "eager_samples_per_s": round(eager_rate, 1),
        "onnx_samples_per_s": round(onnx_rate, 1),
        "onnx_over_eager": round(min(eager_s) / min(onnx_s), 2),
        "labels_identical": bool(np.array_equal(eager.argmax(axis=1), graph.argmax(axis=1))),
        "max_abs_diff": float(np.abs(eager - graph).max()),
        "parity_max_abs_diff": record.parity_max_abs_diff,
        "forward_gflop_per_row": round(flops / 1e9, 3),
        "fp32_matmul_gflops": round(gflops, 1),
        "eager_share_of_matmul_rate": round(flops * eager_rate / (gflops * 1e9), 2),
        "onnx_share_of_matmul_rate": round(flops * onnx_rate / (gflops * 1e9), 2),
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    gflops, _ = throughput.matmul_rate(torch.float32)
    print(json.dumps({"fp32_matmul_gflops": round(gflops, 1)}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure("minilm-rt2", throughput.TEXT_CONFIG, Path(tmp), gflops),
                   measure("lite0-mnist5k", throughput.IMAGE_CONFIG, Path(tmp), gflops)]
    print("| model | test rows | eager samples/s | ONNX Runtime samples/s | ratio | "
          "labels identical | share of the fp32 matmul rate, eager / ONNX |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['rows']} | {r['eager_samples_per_s']} | "
              f"{r['onnx_samples_per_s']} | {r['onnx_over_eager']}x | {r['labels_identical']} | "
              f"{r['eager_share_of_matmul_rate']} / {r['onnx_share_of_matmul_rate']} |")


if __name__ == "__main__":
    main()
