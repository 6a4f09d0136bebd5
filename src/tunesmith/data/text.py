"""Text examples as token ids: tokenized once, padded per batch, batched by similar length.

Padding each batch only to its longest member and grouping similar lengths into a batch is most of
the speed of fine-tuning on short texts: attention cost grows with the padded length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from tunesmith.data.features import stack_targets
from tunesmith.data.order import ResumableOrder, epoch_generator

Tokenize = Callable[[list[str]], list[list[int]]]


class TokenizedTexts(Dataset[tuple[list[int], Any]]):
    """Token ids of each text (already truncated) with its target."""

    def __init__(self, token_ids: list[list[int]], targets: Sequence[Any]) -> None:
        self.token_ids = token_ids
        self.targets = list(targets)

    def __len__(self) -> int:
        return len(self.token_ids)

    def __getitem__(self, index: int) -> tuple[list[int], Any]:
        return self.token_ids[index], self.targets[index]

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.token_ids]


def pad_collate(pad_id: int) -> Callable[[list[tuple[list[int], Any]]], dict[str, torch.Tensor]]:
    """Collate (ids, target) pairs into a batch padded to its own longest sequence."""

    def collate(items: list[tuple[list[int], Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(ids) for ids, _ in items)
        input_ids = torch.full((len(items), longest), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), longest), dtype=torch.long)
        for row, (ids, _) in enumerate(items):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        targets = stack_targets([target for _, target in items])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": targets}

    return collate


class LengthGroupedSampler(ResumableOrder):
    """Random batches of similar length (the scheme of Hugging Face's `group_by_length`).

    Each epoch: shuffle, cut into mega-batches of `group` batches, sort each by length, cut into
    batches, shuffle the batch order. Computed from the seed and the epoch, so a run is
    reproducible and resumes mid-epoch in the same order.
    """

    def __init__(self, lengths: list[int], batch_size: int, *, seed: int, group: int = 50) -> None:
        super().__init__(len(lengths), batch_size, seed=seed)
        self.lengths = lengths
        self.group = group

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def epoch_batches(self) -> list[list[int]]:
        generator = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        span = self.batch_size * self.group
        batches: list[list[int]] = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start : start + span], key=lambda i: -self.lengths[i])
            batches.extend(
                chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)
            )
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[position] for position in shuffled]


def sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Batches in order of length, for evaluation: least padding, order restored by index."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
