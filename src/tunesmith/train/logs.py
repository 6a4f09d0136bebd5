"""What a run logs: `metrics.jsonl` in the trial folder, and TensorBoard event files on request.

metrics.jsonl holds one JSON line per optimizer step (`"event": "step"`: loss and learning rate)
and one per evaluation (`"event": "epoch"`: training loss, throughput and every validation
metric). Epoch lines are flushed to disk as they are written, so a killed run keeps every one;
step lines are buffered and flushed with the next epoch line or checkpoint, whose byte offset a
resumed run truncates the file back to.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError
from tunesmith.io import METRICS

TENSORBOARD = "tensorboard"


class RunLog:
    def __init__(self, trial_dir: Path, *, tensorboard: bool, enabled: bool = True) -> None:
        self.path = trial_dir / METRICS
        self.enabled = enabled  # False on every process but the main one
        self._handle: Any = None
        self._writer: Any = None
        if enabled:
            trial_dir.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a")
            if tensorboard:
                self._writer = _summary_writer(trial_dir / TENSORBOARD)

    def step(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._handle.write(json.dumps({"event": "step", **record}) + "\n")
        if self._writer is not None:
            prefix = record.get("stage", "train")
            for key in ("loss", "lr"):
                self._writer.add_scalar(f"{prefix}/{key}", record[key], record["step"])

    def epoch(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._handle.write(json.dumps(record) + "\n")
        self.flush()
        if self._writer is not None:
            prefix = record.get("stage", "train")
            for key, value in record.items():
                if key.startswith(("val_", "train_")) and isinstance(value, int | float):
                    self._writer.add_scalar(f"{prefix}/{key}", value, record["step"])
            self._writer.flush()

    def flush(self) -> int:
        """Write everything to disk; the file's size, the offset a resume truncates to."""
        if not self.enabled:
            return 0
        self._handle.flush()
        os.fsync(self._handle.fileno())
        return int(self._handle.tell())

    def close(self) -> None:
        if self._handle is not None:
            self.flush()
            self._handle.close()
            self._handle = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def truncate_log(trial_dir: Path, offset: int) -> None:
    """Drop what a killed run logged after its last checkpoint: the resumed run logs it again."""
    path = trial_dir / METRICS
    if path.exists() and path.stat().st_size > offset:
        with path.open("r+b") as handle:
            handle.truncate(offset)


def _summary_writer(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TunesmithError(
            "train.log_to: tensorboard needs the tensorboard package",
            field="train.log_to",
            fix="pip install tensorboard (or pip install 'tunesmith[tensorboard]'), or set "
            "train.log_to: none",
        ) from None
    return SummaryWriter(log_dir=str(folder))
