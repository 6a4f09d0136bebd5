"""Terminal output shared by every stage: one Rich console and the progress bar style."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

# Of the processes of a data-parallel run (RANK set by torchrun / accelerate launch), only the
# first one talks.
console = Console(stderr=True, quiet=os.environ.get("RANK", "0") != "0", emoji=False)


class SamplesPerSecond(ProgressColumn):
    """Throughput in samples/s; tasks advance by samples, not batches."""

    def render(self, task: Task) -> Text:
        # Rich's own speed is a recent-window estimate; once done, the whole-task mean is the truth.
        elapsed = task.elapsed or 0.0
        speed = task.completed / elapsed if task.finished and elapsed > 0 else task.speed
        return Text(f"{speed:,.1f} samples/s" if speed else "– samples/s", style="cyan")


def progress(*, quiet: bool = False) -> Progress:
    """A progress display with samples/s, elapsed time and ETA, and a free-form status field;
    a quiet one shows nothing (the many short epochs of a probe)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        SamplesPerSecond(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        disable=quiet,
    )
