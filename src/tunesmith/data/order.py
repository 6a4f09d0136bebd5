"""The order of training batches: a function of the seed and the epoch, and resumable.

A run killed mid-epoch resumes in the very batch it stopped at: each epoch's order is computed
from (seed, epoch) alone, never from a generator's running state, and `skip(n)` makes the next
pass start at batch n without loading the batches before it.

The rows come as `Draw`s: row indices that also carry the seed of that row's random draws this
epoch (its augmentation). An example is then augmented the same way whichever process or worker
loads it and whenever it is loaded: after a resume, in a loader that reads ahead, in DataLoader
workers, the draws do not depend on what drew from the global generator before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils.data import Sampler

EPOCH_STRIDE = 100_003  # seeds of consecutive epochs: seed * stride + epoch, a prime apart
ROW_STRIDE = 1_000_000_007  # a row's draw seed: epoch seed * stride + row
SEED_BITS = 63


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * EPOCH_STRIDE + epoch)


def loader_generator(seed: int) -> torch.Generator:
    """A DataLoader's own generator: without one, every `iter(loader)` draws its workers' base
    seed from the global generator, which dropout also draws from, so a run resumed mid-epoch
    (one more `iter`) would continue with other random numbers than the run it continues."""
    return torch.Generator().manual_seed(seed)


class Draw(int):
    """A row index that carries the seed of the row's random draws (augmentation) this epoch."""

    seed: int

    def __new__(cls, row: int, seed: int) -> Draw:
        draw = super().__new__(cls, row)
        draw.seed = seed
        return draw

    def __reduce__(self) -> tuple[type[Draw], tuple[int, int]]:  # into DataLoader workers
        return Draw, (int(self), self.seed)


def draw_seed(seed: int, epoch: int, row: int) -> int:
    return ((seed * EPOCH_STRIDE + epoch) * ROW_STRIDE + row) % (1 << SEED_BITS)


@contextmanager
def drawing_from(seed: int | None) -> Iterator[None]:
    """Random draws inside come from `seed`, and the global generator is left as it was; with
    None, they come from the global generator."""
    if seed is None:
        yield
        return
    # The CPU generator alone: torch.manual_seed would also queue seeds for every accelerator
    # backend, formatting a stack trace for each (a third of a digit's decode-and-augment time).
    state = torch.get_rng_state()
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)


class ResumableOrder(Sampler[list[int]]):
    """Batches of row indices; subclasses say how an epoch's batches are formed."""

    def __init__(self, rows: int, batch_size: int, *, seed: int) -> None:
        self.rows = rows
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.skipped = 0  # batches the next pass leaves out (a resumed epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, batches: int) -> None:
        self.skipped = batches

    def epoch_batches(self) -> list[list[int]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches()
        skipped, self.skipped = self.skipped, 0
        for batch in batches[skipped:]:
            yield [Draw(row, draw_seed(self.seed, self.epoch, row)) for row in batch]


class ShuffledBatches(ResumableOrder):
    """A fresh permutation every epoch, cut into batches; the last, smaller one dropped when
    `drop_last` (a batch of one row would make batch norm fail)."""

    def __init__(self, rows: int, batch_size: int, *, seed: int, drop_last: bool) -> None:
        super().__init__(rows, batch_size, seed=seed)
        self.drop_last = drop_last

    def __len__(self) -> int:
        return self.rows // self.batch_size if self.drop_last else -(-self.rows // self.batch_size)

    def epoch_batches(self) -> list[list[int]]:
        order = torch.randperm(self.rows, generator=epoch_generator(self.seed, self.epoch)).tolist()
        return [order[i : i + self.batch_size] for i in range(0, len(self) * self.batch_size,
                                                              self.batch_size)]
