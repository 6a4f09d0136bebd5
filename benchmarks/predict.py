"""Prediction speed on this CPU: the bundle in eager PyTorch against its ONNX graph in ONNX Runtime.

    python examples/sentiment/prepare.py && python examples/digits/prepare.py
    python benchmarks/predict.py

For MiniLM on Rotten Tomatoes and EfficientNet-Lite0 on MNIST-5k (64x64), a bundle is made by a
short `tunesmith run` (a linear probe: two epochs of the head on frozen features, so the margins
are a trained model's, in a minute or two) and exported with `tunesmith export --format onnx`.
Every arm predicts every test row in batches of 64 through the same input pipeline (tokenization
or image decoding included), interleaved (after two unmeasured passes of each arm, one pass of
each arm, three times; the best pass each):

- eager: `tunesmith.load(run)`, the bundle in PyTorch, fp32 (the reference);
- onnx-cpu: the graph on ONNX Runtime's own CPU kernels (what `onnxruntime` alone gives);
- onnx: `tunesmith.load(run, engine="onnx")`, as `tunesmith predict --engine onnx` runs it
  (ONNX Runtime's OpenVINO provider where installed, held to fp32);
- onnx-bf16: the same with `precision="bf16"`, the rows near a tie recomputed in fp32, where the
  export found bf16 usable for the model.

The ONNX arms decode the next batch's images in a background thread while the graph runs (the
product's `predict_rows`); eager PyTorch runs as the bundle runs it (a decoding thread beside its
OpenMP threads slowed it down).

Eager PyTorch's speed depends on what a page fault costs on the host: glibc serves its large
tensors from fresh mmaps until its dynamic threshold rises, and some never fall below it. To read
the ratios without that, run it again with the threshold held:

    MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824 python benchmarks/predict.py

Reported: samples/s of each, the ratio to eager, whether the labels agree with eager's on every
test row and the largest difference in probability; and, to read the ratios against what the
machine allows, the model's forward FLOPs per row (torch's FlopCounterMode) and each arm's share
of the fp32 matrix-product rate measured in the same script (a graph already at the matrix units'
rate cannot be made much faster in fp32).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # the example configs

from tunesmith import api
from tunesmith.config import load_config
from tunesmith.export.onnx import CPU, batches, open_session, predict_rows

REPEATS = 3
# Unmeasured passes of every arm first: eager PyTorch gets faster over a process's first passes
# (glibc raises its mmap threshold as large tensors are freed, and the page faults of fresh
# allocations stop; EfficientNet-Lite0 went from 730 to 1,000 samples/s), ONNX Runtime's arena
# much less, so timing a cold process flatters the ONNX arms.
WARMUP = 2
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
    cpu = open_session(Path(record.path), provider=CPU)
    arms: dict[str, Any] = {
        "eager": lambda: predictor.predict_proba(inputs, batch_size=BATCH),
        "onnx-cpu": lambda: predict_rows(cpu, predictor, inputs, record.inputs, record.output,
                                         batch_size=BATCH),
    }
    engine = api.load(run_dir, engine="onnx")
    arms["onnx"] = lambda: engine.predict_proba(inputs, batch_size=BATCH)
    fast = None
    if record.bf16 is not None and record.bf16["recheck_margin"] < 1:
        fast = api.load(run_dir, engine="onnx", precision="bf16")
        arms["onnx-bf16"] = lambda: fast.predict_proba(inputs, batch_size=BATCH)
    seconds: dict[str, list[float]] = {arm: [] for arm in arms}
    found: dict[str, np.ndarray] = {}
    for _ in range(WARMUP):
        for predict in arms.values():
            predict()
    for _ in range(REPEATS):
        for arm, predict in arms.items():
            started = time.perf_counter()
            found[arm] = predict()
            seconds[arm].append(time.perf_counter() - started)
    rows = len(test)
    flops = forward_flops(predictor, inputs)
    rates = {arm: rows / min(s) for arm, s in seconds.items()}
    eager = found["eager"]
    result: dict[str, Any] = {
        "model": name, "rows": rows, "providers": record.providers, "bf16": record.bf16,
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_", "glibc's dynamic"),
        "parity_max_abs_diff": record.parity_max_abs_diff,
        "forward_gflop_per_row": round(flops / 1e9, 3), "fp32_matmul_gflops": round(gflops, 1),
        "arms": {arm: {
            "samples_per_s": round(rate, 1),
            "over_eager": round(rate / rates["eager"], 2),
            "labels_identical": bool(np.array_equal(eager.argmax(1), found[arm].argmax(1))),
            "labels_changed": int(np.sum(eager.argmax(1) != found[arm].argmax(1))),
            "max_abs_diff": float(np.abs(eager - found[arm]).max()),
            "share_of_fp32_matmul_rate": round(flops * rate / (gflops * 1e9), 2),
        } for arm, rate in rates.items()},
    }
    if fast is not None:
        bf16 = result["arms"]["onnx-bf16"]
        bf16["rows_rechecked_in_fp32"] = fast.rechecked
        margin, fast.recheck_margin = fast.recheck_margin, 0.0  # bf16 alone, not timed
        alone = fast.predict_proba(inputs, batch_size=BATCH)
        fast.recheck_margin = margin
        bf16["labels_changed_without_recheck"] = int(np.sum(eager.argmax(1) != alone.argmax(1)))
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    gflops, _ = throughput.matmul_rate(torch.float32)
    print(json.dumps({"fp32_matmul_gflops": round(gflops, 1)}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure("minilm-rt2", throughput.TEXT_CONFIG, Path(tmp), gflops),
                   measure("lite0-mnist5k", throughput.IMAGE_CONFIG, Path(tmp), gflops)]
    print("| model | test rows | arm | samples/s | over eager | labels identical | "
          "share of the fp32 matmul rate |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        for arm, a in r["arms"].items():
            print(f"| {r['model']} | {r['rows']} | {arm} | {a['samples_per_s']} | "
                  f"{a['over_eager']}x | {a['labels_identical']} ({a['labels_changed']} changed) | "
                  f"{a['share_of_fp32_matmul_rate']} |")

if __name__ == "__main__":
    main()
