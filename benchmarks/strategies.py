"""Fine-tuning strategies side by side: the same data, split and wall-time budget for each.

    python benchmarks/strategies.py [--examples sentiment digits] [--budget 240]

For each example (MiniLM on Rotten Tomatoes, EfficientNet-Lite0 on 5,000 MNIST digits) every arm
runs `tunesmith.fit` on the example's config with one strategy and `train.time_budget` set to the
same number of seconds, so the schedule of each is fitted into the same time: linear-probe (head on
cached features), full, lp-ft, full with layer-wise learning-rate decay, and LoRA. The test part
is the same seeded split for every arm, and each arm is scored on it once. Prints a JSON record
per arm and a Markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tunesmith.api import fit
from tunesmith.config import load_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# Layer-wise decay per block: MiniLM has 7 blocks (embeddings and 6 layers), so 0.8 leaves the
# embeddings at 0.26x; EfficientNet-Lite0 has 20, so 0.9 leaves its stem at 0.14x.
LAYER_DECAY = {"sentiment": 0.8, "digits": 0.9}


def arms(example: str) -> dict[str, list[str]]:
    return {
        "linear-probe": ["model.strategy=linear-probe"],
        "full": ["model.strategy=full"],
        "lp-ft": ["model.strategy=lp-ft"],
        "layer-wise decay": ["model.strategy=full", f"train.layer_decay={LAYER_DECAY[example]}"],
        "lora": ["model.strategy=lora"],
    }


def run_arm(example: str, arm: str, overrides: list[str], budget: float, out: Path) -> dict:
    config = EXAMPLES / example / "config.yaml"
    name = f"{example}-{arm.replace(' ', '-')}"
    settings = [*overrides, f"train.time_budget={budget}", f"name={name}",
                f"output_dir={out}"]
    started = time.perf_counter()
    metrics = fit(load_config(config, settings)).metrics
    return {
        "example": example,
        "arm": arm,
        "overrides": overrides,
        "test_accuracy": round(metrics["test"]["accuracy"]["value"], 4),
        "val_accuracy": round(metrics["val"]["accuracy"]["value"], 4),
        "test_rows": metrics["test_rows"],
        "train_wall_s": metrics["train"]["wall_s"],
        "run_wall_s": round(time.perf_counter() - started, 1),
        "steps": metrics["train"]["steps"],
        "stopped": metrics["train"]["stopped"],
        "budget_s": budget,
    }


def table(records: list[dict]) -> str:
    lines = [
        "| example | strategy | test accuracy | val accuracy | training wall s | steps |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['example']} | {r['arm']} | {r['test_accuracy']:.3f} | {r['val_accuracy']:.3f} "
            f"| {r['train_wall_s']:.0f} | {r['steps']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", nargs="+", default=["sentiment", "digits"])
    parser.add_argument("--arms", nargs="+", default=None, help="a subset of the arms")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds of training per arm")
    args = parser.parse_args()
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for example in args.examples:
            for arm, overrides in arms(example).items():
                if args.arms and arm not in args.arms:
                    continue
                record = run_arm(example, arm, overrides, args.budget, Path(tmp))
                print(json.dumps(record), flush=True)
                records.append(record)
    print(table(records))


if __name__ == "__main__":
    main()
