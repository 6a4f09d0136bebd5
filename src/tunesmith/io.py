"""Writes that survive a crash: a temporary file beside the target, then renamed into place."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LABEL_JOINER = "|"  # between a row's labels in the outputs (test_predictions.csv, predict)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp and mkdtemp make private files and folders (0600, 0700); a run folder's are made as
# any other file is, so the other workers and users of a shared output_dir can read them.
UMASK = _umask()
FILE_MODE, FOLDER_MODE = 0o666 & ~UMASK, 0o777 & ~UMASK


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Around a library's write: its failure to write (safetensors' Rust error says 'No space
    left on device (os error 28)') as the OSError it is, naming `path`."""
    try:
        yield
    except OSError:
        raise
    except Exception as error:
        found = re.search(r"os error (\d+)", str(error))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from error


def shareable(folder: Path) -> None:
    """Give a folder staged for a rename, and all it holds, the modes the umask gives new files
    and folders (safetensors writes 0600, mkdtemp makes 0700)."""
    folder.chmod(FOLDER_MODE)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(FOLDER_MODE if path.is_dir() else FILE_MODE)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)`, then rename it to `path`: readers see the old or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
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
METRICS = "metrics.jsonl"  # a trial's log: a line per optimizer step and per epoch
STUDY_FILE = "study.db"  # a search's Optuna study (SQLite) when search.storage is not set
SNAPSHOT_FILE = "study-snapshot.db"  # a copy of a shared study, as the run's search ended


@contextlib.contextmanager
def one_run_at_a_time(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` for this process while it runs: a second `tunesmith run` of the same name
    would move the folder aside under the first and mix their files. The lock is an advisory
    POSIX lock on `.NAME.lock` beside the folder (which a fresh run moves aside, so not inside
    it): the process's own, not shared with the loader workers it forks as `flock`'s would be,
    and released when it ends however it ends; a clean end removes the file."""
    import fcntl

    from tunesmith.errors import TunesmithError

    run_dir.parent.mkdir(parents=True, exist_ok=True)
    path = run_dir.parent / f".{run_dir.name}.lock"
    while True:
        lock = path.open("a+")
        try:
            fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise TunesmithError(
                f"another tunesmith run is writing this run folder ({holder})",
                file=run_dir, field="name",
                fix="wait for that run to end (or stop it), or give this one another name, "
                "e.g. --set name=NAME-2",
            ) from None
        # Locked; but the holder before may have removed the file between our open and flock,
        # and a third process may hold a new one at the path: then try again.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(lock.fileno()).st_ino:
                break
        lock.close()
    with lock:
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # while still held, so no one locks a removed file


def require_run_folder(path: Path) -> Path:
    """`path`, if it is a run folder (`tunesmith run` wrote its config.yaml there)."""
    from tunesmith.errors import TunesmithError

    if not (path / "config.yaml").is_file():
        raise TunesmithError(
            f"{path} is not a tunesmith run folder (no config.yaml)", file=path,
            field="RUN_DIR", fix="give the folder `tunesmith run` wrote (runs/NAME)")
    return path


def logged_epochs(trial_dir: Path) -> list[dict[str, Any]]:
    """The epoch lines a trial logged, in order; a cross-validated trial's are its first fold's
    (each fold logs in `fold-K/`); empty when it logged nothing."""
    path = trial_dir / METRICS
    if not path.is_file():
        path = trial_dir / "fold-0" / METRICS
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            if number < len(lines) - 1:
                raise
            # the last line, cut short by a kill while it was written: the lines before stand
    return [record for record in records
            if isinstance(record, dict) and record.get("event") == "epoch"]
