"""Bootstrap intervals for 100,000 predictions with 1,000 resamples: every evaluation metric of a
classification (2, 10 and 100 classes) and a regression, timed on this machine.

    .venv/bin/python benchmarks/intervals.py
"""

from __future__ import annotations

import time

import numpy as np

from tunesmith.evaluate.intervals import bootstrap_intervals

ROWS = 100_000


def main() -> None:
    rng = np.random.default_rng(0)
    for classes in (2, 10, 100):
        targets = rng.integers(0, classes, ROWS)
        logits = rng.normal(size=(ROWS, classes)).astype(np.float32)
        logits[np.arange(ROWS), targets] += 1.5
        started = time.perf_counter()
        intervals = bootstrap_intervals("classification", logits, targets)
        print(f"classification, {classes} classes: {time.perf_counter() - started:.2f} s for "
              f"{len(intervals)} metrics ({', '.join(intervals)})")
    truth = rng.normal(size=ROWS)
    predictions = (truth + rng.normal(size=ROWS)).reshape(-1, 1)
    started = time.perf_counter()
    bootstrap_intervals("regression", predictions, truth)
    print(f"regression: {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
