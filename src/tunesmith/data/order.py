"""The order of training batches: a function of the seed and the epoch, and resumable.

A run killed mid-epoch resumes in the very batch it stopped at: each epoch's order is computed
from (seed, epoch) alone, never from a generator's running state, and `skip(n)` makes the next
pass start at batch n without loading the batches before it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

EPOCH_STRIDE = 100_003  # seeds of consecutive epochs: seed * stride + epoch, a prime apart


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * EPOCH_STRIDE + epoch)


def loader_generator(seed: int) -> torch.Generator:
    """A DataLoader's own generator: without one, every `iter(loader)` draws its workers' base
    seed from the global generator, which dropout also draws from, so a run resumed mid-epoch
    (one more `iter`) would continue with other random numbers than the run it continues."""
    return torch.Generator().manual_seed(seed)


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
        yield from batches[skipped:]


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
