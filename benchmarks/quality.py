"""tunesmith against the classic method a practitioner would try first, same split, one script.

    python examples/sentiment/prepare.py && python benchmarks/quality.py sentiment
    python examples/digits/prepare.py && python benchmarks/quality.py digits

Runs the example's config through `tunesmith.fit` (recipe, training, the one test evaluation), then
fits the peer on the very same train+val rows and scores it on the very same test rows:
  sentiment: TF-IDF of word 1-2 grams + logistic regression, C chosen by 5-fold CV
  digits:    logistic regression on the raw pixels (scaled to [0, 1])
and prints both test accuracies, their difference and both wall times as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.pipeline import Pipeline, make_pipeline

from tunesmith.api import fit
from tunesmith.config import load_config
from tunesmith.data import TaskData, load_task_data

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def peer(task: str) -> Pipeline:
    if task == "text-classification":
        return make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
            LogisticRegressionCV(Cs=np.logspace(-2, 3, 11), cv=5, max_iter=2000),
        )
    return make_pipeline(LogisticRegression(max_iter=2000))


def features(task: str, inputs: list[str]) -> list[str] | np.ndarray:
    if task == "text-classification":
        return inputs
    pixels = [np.asarray(Image.open(path).convert("L"), np.float32).ravel() for path in inputs]
    return np.stack(pixels) / 255


def score_peer(data: TaskData) -> float:
    fit_rows = data.train.inputs + data.val.inputs  # the peer needs no validation part
    targets = data.targets(data.train) + data.targets(data.val)
    model = peer(data.task).fit(features(data.task, fit_rows), targets)
    predicted = model.predict(features(data.task, data.test.inputs))
    return float(np.mean(predicted == np.asarray(data.targets(data.test))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("example", choices=["sentiment", "digits"])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"output_dir={tmp}", *args.overrides]
        config = load_config(EXAMPLES / args.example / "config.yaml", overrides)
        started = time.perf_counter()
        tunesmith_accuracy = fit(config).metrics["test"]["accuracy"]["value"]
        tunesmith_s = time.perf_counter() - started
    started = time.perf_counter()
    data = load_task_data(config)  # the same seeded split tunesmith used
    peer_accuracy = score_peer(data)
    peer_s = time.perf_counter() - started
    report = {
        "example": args.example,
        "overrides": args.overrides,
        "test_rows": len(data.test),
        "tunesmith_accuracy": round(tunesmith_accuracy, 4),
        "peer_accuracy": round(peer_accuracy, 4),
        "difference": round(tunesmith_accuracy - peer_accuracy, 4),
        "tunesmith_wall_s": round(tunesmith_s, 1),
        "peer_wall_s": round(peer_s, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
