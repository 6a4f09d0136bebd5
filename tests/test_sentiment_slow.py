"""The real thing, shrunk: fine-tune the real all-MiniLM-L6-v2 on 600 real review snippets.

Runs the example's own prepare.py (offline: the data and model come from installed wheels), then
`tunesmith run` on the first 600 reviews for 2 epochs. About a minute or two on two CPU cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.model_selection import train_test_split

import tunesmith
from conftest import ROOT, CliResult

EXAMPLE = ROOT / "examples" / "sentiment"


@pytest.mark.slow
def test_minilm_fine_tunes_on_real_reviews(
    tmp_path: Path, run_cli: Callable[[list[str | Path]], CliResult]
) -> None:
    prepared = subprocess.run([sys.executable, str(EXAMPLE / "prepare.py")], capture_output=True,
                              text=True, timeout=300)
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    model = EXAMPLE / "models" / "all-MiniLM-L6-v2"
    assert (model / "config.json").is_file()

    reviews = pd.read_csv(EXAMPLE / "data" / "reviews.csv", dtype=str, keep_default_na=False)
    assert len(reviews) == 4866
    data = tmp_path / "reviews-600.csv"
    reviews.head(600).to_csv(data, index=False)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "name": "minilm",
        "task": "text-classification",
        "data": {"train": str(data)},
        "model": {"backbone": f"hf:{model.absolute()}"},
        "train": {"epochs": 2, "batch_size": 16, "lr": 1e-4, "precision": "fp32"},
        "seed": 0,
        "output_dir": str(tmp_path / "runs"),
    }))

    result = run_cli(["run", config])
    assert result.code == 0, result.err[-3000:]
    run_dir = tmp_path / "runs" / "minilm"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    print(json.dumps({k: metrics[k] for k in ("test", "val", "baselines", "wall_s")}))

    assert metrics["test_rows"] == 120
    sample = reviews.head(600)
    rest, test_rows = train_test_split(np.arange(600), test_size=0.2, random_state=0,
                                       stratify=sample["label"])
    top = sample["label"].iloc[rest].value_counts().idxmax()
    test = sample.iloc[test_rows]
    majority = float(np.mean(test["label"] == top))
    assert metrics["baselines"]["majority"]["accuracy"] == pytest.approx(majority)
    accuracy = metrics["test"]["accuracy"]["value"]
    assert accuracy >= 0.70
    assert accuracy >= majority + 0.1
    assert metrics["test"]["macro_f1"]["value"] >= 0.65

    # The saved bundle, run on the same test rows, scores what the run reported.
    predicted = tunesmith.load(run_dir).predict(test["text"].tolist())
    agreement = np.asarray(predicted) == test["label"].to_numpy()
    assert float(np.mean(agreement)) == pytest.approx(accuracy)
