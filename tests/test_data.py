"""The data stage: reading, splitting, and batching texts with little padding."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from tunesmith.config import SplitConfig, load_config
from tunesmith.data import load_task_data
from tunesmith.data.split import SplitInputs, Splits, ids_hash, make_splits
from tunesmith.data.text import LengthGroupedSampler, pad_collate, sorted_batches

# ----------------------------------------------------------------------------------------------
# splits


def imbalanced_targets(rows: int = 250, seed: int = 0) -> list[int]:
    """Three classes in proportions 60/30/10, shuffled."""
    rng = np.random.default_rng(seed)
    targets = np.repeat([0, 1, 2], [int(rows * 0.6), int(rows * 0.3), rows - int(rows * 0.9)])
    rng.shuffle(targets)
    return targets.tolist()


def split_rows(y: list[int], split: SplitConfig, *, source: Path, test_given: bool) -> Splits:
    return make_splits(SplitInputs(len(y), classes=np.asarray(y)), split, source=source,
                       test_given=test_given)


def test_test_part_is_sklearns_stratified_split() -> None:
    y = imbalanced_targets()
    parts = split_rows(y, SplitConfig(val=0.1, test=0.2, seed=0), source=Path("t.csv"),
                        test_given=False)
    _, expected_test = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0,
                                        stratify=y)
    assert parts.test == expected_test.tolist()


def test_val_is_cut_from_the_rest_and_parts_cover_every_row_once() -> None:
    y = imbalanced_targets()
    parts = split_rows(y, SplitConfig(val=0.1, test=0.2, seed=0), source=Path("t.csv"),
                        test_given=False)
    rest, _ = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=y)
    expected_train, expected_val = train_test_split(
        rest, test_size=0.1, random_state=0, stratify=np.asarray(y)[rest])
    assert parts.train == expected_train.tolist() and parts.val == expected_val.tolist()
    assert sorted(parts.train + parts.val + parts.test) == list(range(len(y)))
    assert (len(parts.test), len(parts.val), len(parts.train)) == (50, 20, 180)
    # Stratified: each part keeps the 60/30/10 class mix (to within one row per class).
    for part in (parts.train, parts.val, parts.test):
        counts = np.bincount(np.asarray(y)[part], minlength=3)
        assert np.all(np.abs(counts - np.array([0.6, 0.3, 0.1]) * len(part)) <= 1)


def test_same_seed_same_split_other_seed_other_split() -> None:
    y = imbalanced_targets()

    def split(seed: int) -> tuple[list[int], list[int], list[int]]:
        parts = split_rows(y, SplitConfig(seed=seed), source=Path("t.csv"), test_given=False)
        return parts.train, parts.val, parts.test

    assert split(3) == split(3)
    assert split(3)[2] != split(4)[2]
    assert split(3)[1] != split(4)[1]


def test_given_test_file_leaves_every_row_to_train_and_val() -> None:
    y = imbalanced_targets(100)
    parts = split_rows(y, SplitConfig(val=0.25), source=Path("t.csv"), test_given=True)
    assert parts.test == []
    assert (len(parts.train), len(parts.val)) == (75, 25)
    assert sorted(parts.train + parts.val) == list(range(100))


def test_ids_hash_follows_the_ids() -> None:
    ids = [str(i) for i in range(50)]
    assert ids_hash(ids) == ids_hash(list(ids))
    assert ids_hash(ids) != ids_hash([*ids[:-1], "50"])
    assert ids_hash(ids) != ids_hash(ids[::-1])  # the order of a part is part of it
    assert len(ids_hash(ids)) == 16


def test_load_task_data_records_the_split(text_config: Callable[..., Path], text_table) -> None:
    data = load_task_data(load_config(text_config()))
    y = [data.classes.index(label) for label in text_table["label"]]
    _, test_rows = train_test_split(np.arange(300), test_size=0.2, random_state=0, stratify=y)
    assert data.test.inputs == text_table["text"].iloc[test_rows].tolist()
    assert data.classes == ["negative", "positive"]
    parts = data.splits["parts"]
    assert [parts[p]["rows"] for p in ("train", "val", "test")] == [192, 48, 60]
    assert parts["test"]["ids_sha256"] == ids_hash([str(i + 1) for i in test_rows])  # data rows
    assert parts["train"]["ids_sha256"] != parts["val"]["ids_sha256"]


def test_a_given_test_file_is_used_as_is(
    text_config: Callable[..., Path], text_table, tmp_path: Path
) -> None:
    test_csv = tmp_path / "test.csv"
    text_table.iloc[:40].to_csv(test_csv, index=False)
    data = load_task_data(load_config(text_config(data={"test": str(test_csv)})))
    assert data.test.inputs == text_table["text"].iloc[:40].tolist()
    # The 40 test rows also sit in the training file: cleaning drops them from train and val.
    dropped = data.report.cleaning["test_overlap_dropped"]
    assert dropped["train"] + dropped["val"] == 40
    assert len(data.train) + len(data.val) == 260
    assert not set(data.test.inputs) & set(data.train.inputs + data.val.inputs)
    assert data.splits["test"] == "given file"


def test_image_folder_is_read_with_one_class_per_subfolder(
    image_config: Callable[..., Path]
) -> None:
    data = load_task_data(load_config(image_config()))
    assert data.task == "image-classification" and data.classes == ["horizontal", "vertical"]
    rows = len(data.train) + len(data.val) + len(data.test)
    assert rows == 120 and len(data.test) == 24
    labels = data.train.labels + data.val.labels + data.test.labels
    assert labels.count("horizontal") == labels.count("vertical") == 60
    assert all(Path(path).parent.name == label
               for path, label in zip(data.test.inputs, data.test.labels, strict=True))


# ----------------------------------------------------------------------------------------------
# text batching


def test_pad_collate_pads_to_the_longest_in_the_batch_and_masks() -> None:
    collate = pad_collate(pad_id=7)
    batch = collate([([5, 6], 1), ([1, 2, 3, 4], 0), ([9], 1)])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 7], [1, 2, 3, 4], [9, 7, 7, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert batch["labels"].tolist() == [1, 0, 1]
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long


def random_lengths(rows: int = 1000, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(3, 120, size=rows).tolist()


def epoch_batches(sampler: LengthGroupedSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_length_grouped_sampler_yields_every_index_once_per_epoch() -> None:
    lengths = random_lengths(1003)
    sampler = LengthGroupedSampler(lengths, 16, seed=0, group=10)
    for epoch in range(3):
        batches = epoch_batches(sampler, epoch)
        assert len(batches) == len(sampler) == 63
        assert sorted(i for batch in batches for i in batch) == list(range(1003))
        assert all(1 <= len(batch) <= 16 for batch in batches)


def test_length_grouped_sampler_is_seeded_per_epoch() -> None:
    lengths = random_lengths()
    first = LengthGroupedSampler(lengths, 16, seed=5)
    second = LengthGroupedSampler(lengths, 16, seed=5)
    assert epoch_batches(first, 0) == epoch_batches(second, 0)
    assert epoch_batches(first, 1) == epoch_batches(second, 1)
    assert epoch_batches(first, 0) != epoch_batches(first, 1)
    assert epoch_batches(first, 0) != epoch_batches(LengthGroupedSampler(lengths, 16, seed=6), 0)


def mean_padding(batches: list[list[int]], lengths: list[int]) -> float:
    """Padding tokens per example when each batch is padded to its own longest member."""
    padded = sum(max(lengths[i] for i in batch) * len(batch) - sum(lengths[i] for i in batch)
                 for batch in batches)
    return padded / sum(len(batch) for batch in batches)


def test_length_grouping_cuts_padding_against_random_batches() -> None:
    lengths = random_lengths()
    grouped = mean_padding(epoch_batches(LengthGroupedSampler(lengths, 16, seed=0), 0), lengths)
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = mean_padding([order[i:i + 16] for i in range(0, len(order), 16)], lengths)
    # Uniform lengths 3..119 in batches of 16: random batches pad about 51 tokens per example,
    # batches cut from sorted mega-batches of 800 under 2.
    assert shuffled > 40
    assert grouped < 0.1 * shuffled


def test_sorted_batches_cover_every_row_longest_first() -> None:
    lengths = random_lengths(101)
    batches = sorted_batches(lengths, 10)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(101))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
