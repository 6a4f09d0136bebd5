"""The one exception type for problems a user can cause and fix.

Every message names where the problem is (a file and, when it applies, a field) and how to fix it.
The command line turns a `TunesmithError` into that message and exit status 2, never a traceback.
"""

from __future__ import annotations

from pathlib import Path


class TunesmithError(Exception):
    """A problem with the user's input: config, data, model or run folder."""

    def __init__(
        self,
        problem: str = "",
        *,
        file: str | Path | None = None,
        field: str | None = None,
        fix: str | None = None,
        message: str | None = None,
    ) -> None:
        if message is not None:
            problem = _raised_elsewhere(message, type(self).__name__)
        self.problem = problem
        self.file = str(file) if file is not None else None
        self.field = field
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = ": ".join(part for part in (self.file, self.field) if part)
        text = f"{where}: {self.problem}" if where else self.problem
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class DataError(TunesmithError):
    """The data itself is unusable (empty, unreadable, one class), as opposed to a wrong option.

    `tunesmith inspect` exits with status 1 for these and 2 for other errors; a run stops with 2.
    """


def _raised_elsewhere(text: str, name: str) -> str:
    """The message of an error a DataLoader worker raised. torch re-raises it in the main
    process as `type(message=text)` (for an exception class with a `message` attribute), where
    `text` is "Caught DataError in DataLoader worker process 0. Original Traceback ... DataError:
    MESSAGE": MESSAGE is the whole message (file, field, problem and fix) as the worker said it."""
    marker = f"{name}: "
    at = text.rfind(marker)
    return text[at + len(marker):].strip() if at >= 0 else text
