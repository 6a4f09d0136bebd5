"""`tunesmith inspect` at scale, and how well its leakage check finds planted duplicates.

    python examples/sentiment/prepare.py && python examples/digits/prepare.py
    python benchmarks/inspect_data.py            # all measurements, JSON on stdout
    python benchmarks/inspect_data.py --quick    # 10x smaller, for a smoke run

Each measurement runs in a fresh process so its peak resident memory (ru_maxrss) is its own:
- text: 100,000 and 1,000,000 rows of real review snippets (Rotten Tomatoes, two joined per row,
  so most rows are distinct), inspected by `tunesmith.api.inspect`; the peer is what a pandas user
  does first: `read_csv` of the whole file, `duplicated()` and `value_counts()`.
- images: 10,000 PNG files (the 5,000 MNIST digits of examples/digits and a shifted copy of each).
- leakage: a test part of 500 texts / 300 images, and a train part with planted copies of test
  rows, exact and near (texts: case and punctuation changed; images: re-encoded as JPEG and
  brightened). Recall and precision of the train rows flagged as overlapping test, against the
  ground truth computed here independently (planted rows plus any natural duplicates, found by a
  plain Python normalization for texts; for images, planted rows only).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
REVIEWS = EXAMPLES / "sentiment" / "data" / "reviews.csv"
DIGITS = EXAMPLES / "digits" / "data" / "images"


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ----------------------------------------------------------------------------------------------
# data


def write_texts(path: Path, rows: int, seed: int = 0) -> None:
    reviews = pd.read_csv(REVIEWS)
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(reviews), rows)
    second = rng.integers(0, len(reviews), rows)
    texts = reviews["text"].to_numpy()[first] + " " + reviews["text"].to_numpy()[second]
    pd.DataFrame({"text": texts, "label": reviews["label"].to_numpy()[first]}).to_csv(
        path, index=False
    )


def write_images(folder: Path) -> int:
    count = 0
    for source in sorted(DIGITS.rglob("*.png")):
        target = folder / source.parent.name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target / source.name)
        with Image.open(source) as image:
            shifted = Image.new(image.mode, image.size)
            shifted.paste(image, (2, 1))
            shifted.save(target / f"shifted-{source.name}")
        count += 2
    return count


# ----------------------------------------------------------------------------------------------
# measurements, each run in its own process


def measure_inspect(path: str, test: str | None) -> dict[str, Any]:
    from tunesmith.api import inspect

    started = time.perf_counter()
    report = inspect(path, test=test).to_json()
    seconds = time.perf_counter() - started
    rows = report["parts"]["train"]["rows"]
    return {
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds, 1),
        "peak_mb": round(peak_mb(), 1),
        "findings": [finding["check"] for finding in report["findings"]],
        "label_errors_checked_rows": report.get("label_errors", {}).get("checked_rows"),
    }


def measure_pandas(path: str) -> dict[str, Any]:
    started = time.perf_counter()
    frame = pd.read_csv(path)
    duplicates = int(frame["text"].duplicated().sum())
    frame["label"].value_counts()
    seconds = time.perf_counter() - started
    return {
        "rows": len(frame),
        "seconds": round(seconds, 2),
        "peak_mb": round(peak_mb(), 1),
        "duplicates": duplicates,
    }


def measure_overlap(train: str, test: str) -> dict[str, Any]:
    """The train rows inspect flags as overlapping test (their ids)."""
    from tunesmith.api import inspect
    from tunesmith.data.inspect import overlapping_rows

    report = inspect(train, test=test)
    parts = report.parts
    rows = np.union1d(
        overlapping_rows(parts["train"], parts["test"], near=False),
        overlapping_rows(parts["train"], parts["test"], near=True),
    )
    return {"flagged": [str(parts["train"].ids[row]) for row in rows]}


def in_child(kind: str, *args: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", kind, *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ----------------------------------------------------------------------------------------------
# leakage with a known answer


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[\W_]+", " ", text.lower()).split())


def planted_texts(folder: Path, seed: int = 0) -> tuple[Path, Path, set[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    reviews = pd.read_csv(REVIEWS).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    test, train = reviews.iloc[:500], reviews.iloc[500:].reset_index(drop=True)
    rng = random.Random(seed)
    exact = test.sample(100, random_state=seed)
    near = test.drop(exact.index).sample(100, random_state=seed + 1)
    near = near.assign(text=[_nearly(text, rng) for text in near["text"]])
    train = pd.concat([train, exact, near], ignore_index=True)
    train_path, test_path = folder / "train.csv", folder / "test.csv"
    train.to_csv(train_path, index=False)
    test.to_csv(test_path, index=False)
    test_keys = {normalize(text) for text in test["text"]}
    truth = {
        str(row + 1)
        for row, text in enumerate(train["text"])
        if normalize(text) in test_keys and normalize(text)
    }
    return train_path, test_path, truth


def _nearly(text: str, rng: random.Random) -> str:
    changed = text.upper() if rng.random() < 0.5 else text.capitalize()
    return changed.replace(",", " ,").rstrip(".") + " !"


def planted_images(folder: Path, seed: int = 0) -> tuple[Path, Path, set[str]]:
    rng = random.Random(seed)
    paths = sorted(DIGITS.rglob("*.png"))
    rng.shuffle(paths)
    test_paths, train_paths = paths[:300], paths[300:1800]
    truth: set[str] = set()
    for part, chosen in (("test", test_paths), ("train", train_paths)):
        for path in chosen:
            target = folder / part / path.parent.name
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target / path.name)
    for k, path in enumerate(test_paths[:100]):
        target = folder / "train" / path.parent.name
        if k < 50:  # exact copies under another name
            shutil.copy(path, target / f"copy-{path.name}")
            truth.add(f"{path.parent.name}/copy-{path.name}")
        else:  # re-encoded as JPEG and slightly brightened
            with Image.open(path) as image:
                brighter = ImageEnhance.Brightness(image.convert("RGB")).enhance(1.05)
                brighter.save(target / f"near-{path.stem}.jpg", quality=90)
            truth.add(f"{path.parent.name}/near-{path.stem}.jpg")
    return folder / "train", folder / "test", truth


def recall_precision(flagged: list[str], truth: set[str]) -> dict[str, Any]:
    hits = len(set(flagged) & truth)
    return {
        "planted_or_true": len(truth),
        "flagged": len(flagged),
        "found": hits,
        "recall": round(hits / len(truth), 4) if truth else None,
        "precision": round(hits / len(flagged), 4) if flagged else None,
    }


# ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        measure = {"inspect": measure_inspect, "pandas": measure_pandas, "overlap": measure_overlap}
        if kind == "inspect" and len(rest) == 1:
            rest.append(None)
        print(json.dumps(measure[kind](*rest)))
        return
    scale = 10 if args.quick else 1
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for rows in (100_000 // scale, 1_000_000 // scale):
            path = folder / f"texts-{rows}.csv"
            write_texts(path, rows)
            results[f"text_{rows}"] = {
                "file_mb": round(path.stat().st_size / 2**20, 1),
                "tunesmith_inspect": in_child("inspect", str(path)),
                "pandas_read_all": in_child("pandas", str(path)),
            }
            path.unlink()
        images = folder / "images"
        count = write_images(images)
        results[f"images_{count}"] = {"tunesmith_inspect": in_child("inspect", str(images))}
        train, test, truth = planted_texts(folder / "leak-text")
        flagged = in_child("overlap", str(train), str(test))["flagged"]
        results["leakage_text"] = recall_precision(flagged, truth)
        train, test, truth = planted_images(folder / "leak-images")
        flagged = in_child("overlap", str(train), str(test))["flagged"]
        results["leakage_images"] = recall_precision(flagged, truth)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
