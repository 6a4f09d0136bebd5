"""Writes that survive a crash: a temporary file beside the target, then renamed into place."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)`, then rename it to `path`: readers see the old or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    def write(tmp: Path) -> None:
        tmp.write_text(text)

    atomic_write(path, write)


def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """One JSON line, flushed to disk: a killed run keeps every line written before the kill."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


PREDICTIONS = "predictions.npz"  # the chosen model's val and test outputs, for the report
TEST_PREDICTIONS = "test_predictions.csv"
STUDY_FILE = "study.db"  # a search's Optuna study (SQLite) when search.storage is not set
SNAPSHOT_FILE = "study-snapshot.db"  # a copy of a shared study, as the run's search ended


def require_run_folder(path: Path) -> Path:
    """`path`, if it is a run folder (`tunesmith run` wrote its config.yaml there)."""
    from tunesmith.errors import TunesmithError

    if not (path / "config.yaml").is_file():
        raise TunesmithError(
            f"{path} is not a tunesmith run folder (no config.yaml)", file=path,
            field="RUN_DIR", fix="give the folder `tunesmith run` wrote (runs/NAME)")
    return path
