"""bf16 autocast against fp32: MiniLM training samples/s on this machine, same batches, one script.

    python examples/sentiment/prepare.py && python benchmarks/precision.py [--rows 480]

Both arms fine-tune the same pretrained MiniLM from the same seed on the same rows of the
Rotten Tomatoes train part for one epoch through tunesmith's own training loop, so the only
difference is `train.precision`. It prints each arm's samples/s, the ratio, and whether this CPU
has the native bf16 units that `precision: auto` looks for.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pandas as pd
import torch

from tunesmith.api import batches_for, prepare, task_model
from tunesmith.config import config_from_dict
from tunesmith.search import train_settings
from tunesmith.train import train_trial
from tunesmith.train.precision import cpu_bf16_is_fast

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sentiment"


def arm(precision: str, csv: Path, workdir: Path) -> float:
    config = config_from_dict(
        {
            "name": f"precision-{precision}",
            "task": "text-classification",
            "data": {"train": str(csv), "split": {"val": 0.1, "test": 0.1, "seed": 0}},
            "model": {"backbone": f"hf:{EXAMPLE / 'models' / 'all-MiniLM-L6-v2'}"},
            "train": {"epochs": 1, "batch_size": 16, "precision": precision},
            "output_dir": str(workdir),
        },
        source="benchmarks/precision.py",
        base_dir=workdir,
    )
    prepared = prepare(config)
    settings = train_settings(prepared.config, kind=prepared.kind)
    batches = batches_for(prepared, settings.batch_size, seed=0)
    model = task_model(prepared)
    result = train_trial(model, batches.train, batches.val, settings, workdir / precision)
    return result.train_samples_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=480)
    args = parser.parse_args()
    reviews = pd.read_csv(EXAMPLE / "data" / "reviews.csv")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        csv = workdir / "rows.csv"
        reviews.head(args.rows).to_csv(csv, index=False)
        rates = {precision: arm(precision, csv, workdir) for precision in ("fp32", "bf16")}
    report = {
        "rows": args.rows,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "mkldnn_bf16_supported": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "auto_picks_bf16": cpu_bf16_is_fast(),
        "fp32_samples_per_s": round(rates["fp32"], 1),
        "bf16_samples_per_s": round(rates["bf16"], 1),
        "bf16_over_fp32": round(rates["bf16"] / rates["fp32"], 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
