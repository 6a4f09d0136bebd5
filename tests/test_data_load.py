"""The rewritten data stage, checked against numbers the tests compute on their own.

Every table here is built in the test with planted properties (duplicates, rows copied into a test
file, flipped labels, missing values, group/time/part columns); the assertions compare what
`tunesmith.api.inspect` and `load_task_data` report with what was planted.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import config_dict, make_texts, write_yaml
from tunesmith import api
from tunesmith.config import AugmentConfig, load_config
from tunesmith.data import TaskData, load_task_data
from tunesmith.data.scan import Columns, PartScan, scan_part
from tunesmith.data.sources import Source, open_source
from tunesmith.errors import DataError, TunesmithError
from tunesmith.models.inputs import eval_batches, train_batches

# ----------------------------------------------------------------------------------------------
# helpers


def unique_texts(rows: int, *, seed: int) -> pd.DataFrame:
    """`rows` texts of conftest's cue-word data, no two equal (so no planted count is spoiled)."""
    table = make_texts(rows * 2, seed=seed).drop_duplicates("text").head(rows)
    assert len(table) == rows
    return table.reset_index(drop=True)


def normalize(text: str) -> str:
    """What near-duplicate texts share, written here independently of scan.normalized_text."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def load(
    folder: Path, data_path: Path, *, name: str = "cfg", task: str | None = None, **data: Any
) -> TaskData:
    """load_task_data on a config naming `data_path` (the backbone is never built here)."""
    extra: dict[str, Any] = {"data": data} if data else {}
    if task is not None:
        extra["task"] = task
    raw = config_dict(
        folder, data_path=data_path, backbone="hf:unused", train_settings={}, name=name, **extra
    )
    return load_task_data(load_config(write_yaml(folder / f"{name}.yaml", raw)))


def row_numbers(ids: list[str]) -> np.ndarray:
    """Table ids are data row numbers counted from 1: the 0-based positions in the table."""
    return np.array([int(i) - 1 for i in ids], dtype=int)


def text_scan(source: Source, frames: Any) -> PartScan:
    return scan_part(
        "train",
        source,
        frames,
        modality="text",
        kind="classification",
        columns=Columns(label="label", text="text"),
    )


# ----------------------------------------------------------------------------------------------
# 1. chunked reading


@pytest.fixture(scope="module")
def long_table() -> pd.DataFrame:
    """1,000 rows: repeated and case-changed texts, missing texts, notes and labels, and a
    class ("zebra") that first appears after several chunks."""
    rng = np.random.default_rng(3)
    table = make_texts(1000, seed=3)
    table["note"] = rng.choice(np.array(["x", "y", None], dtype=object), size=1000)
    table.loc[700:, "label"] = np.where(rng.random(300) < 0.3, "zebra", table.loc[700:, "label"])
    table.loc[rng.choice(1000, 15, replace=False), "text"] = None
    table.loc[rng.choice(700, 10, replace=False), "label"] = None
    shout = rng.choice(1000, 20, replace=False)
    table.loc[shout, "text"] = table.loc[shout, "text"].map(
        lambda t: t.upper() + "!" if isinstance(t, str) else t
    )
    return table


def test_chunked_scan_equals_one_chunk_and_chunks_stay_bounded(
    tmp_path: Path, long_table: pd.DataFrame
) -> None:
    path = tmp_path / "long.csv"
    long_table.to_csv(path, index=False)
    source = open_source(path, field="data.train")
    sizes: list[int] = []

    def counted(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for frame in frames:
            sizes.append(len(frame))
            yield frame

    chunked = text_scan(source, counted(source.frames(chunk_rows=64)))
    whole = text_scan(source, [source.read()])

    # The bounded-memory contract: no frame above the chunk size, and all rows seen once.
    assert max(sizes) <= 64 and sum(sizes) == 1000 and len(sizes) == -(-1000 // 64)
    assert chunked.rows == whole.rows == 1000
    assert chunked.ids.tolist() == whole.ids.tolist() == [str(i) for i in range(1, 1001)]
    assert chunked.labels.classes == whole.labels.classes == ["negative", "positive", "zebra"]
    np.testing.assert_array_equal(chunked.labels.codes, whole.labels.codes)
    np.testing.assert_array_equal(chunked.exact, whole.exact)
    np.testing.assert_array_equal(chunked.near, whole.near)
    np.testing.assert_array_equal(chunked.empty, whole.empty)
    assert chunked.missing == whole.missing

    # ... and both agree with the table itself.
    expected_codes = (
        long_table["label"]
        .map({"negative": 0, "positive": 1, "zebra": 2})
        .fillna(-1)
        .astype(int)
        .to_numpy()
    )
    np.testing.assert_array_equal(chunked.labels.codes, expected_codes)
    assert chunked.missing == {"text": 15, "note": int(long_table["note"].isna().sum())}
    texts = long_table["text"].fillna("")
    # Equal exact hashes exactly where texts are equal; equal near hashes where normalized are.
    np.testing.assert_array_equal(pd.factorize(chunked.exact)[0], pd.factorize(texts)[0])
    np.testing.assert_array_equal(
        pd.factorize(chunked.near)[0], pd.factorize(texts.map(normalize))[0]
    )
    np.testing.assert_array_equal(chunked.empty, texts.to_numpy() == "")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_inspect_reports_the_same_whether_read_in_small_chunks_or_whole(
    tmp_path: Path, long_table: pd.DataFrame, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    """The whole `inspect` path (task guess, scans, leakage, label-error rows taken back from
    the source) gives the same report when every read is cut into 64-row chunks."""
    table = long_table.dropna(subset=["label"]).reset_index(drop=True)
    train, test = tmp_path / f"train{suffix}", tmp_path / f"test{suffix}"
    for frame, path in ((table, train), (table.iloc[::25], test)):
        if suffix == ".csv":
            frame.to_csv(path, index=False)
        elif suffix == ".jsonl":
            frame.to_json(path, orient="records", lines=True)
        else:
            frame.to_parquet(path, index=False, row_group_size=50)
    whole = api.inspect(train, test=test).to_json()

    sizes: list[int] = []
    original = Source.frames

    def small_frames(self: Source, chunk_rows: int = 64) -> Iterator[pd.DataFrame]:
        for frame in original(self, chunk_rows=min(chunk_rows, 64)):
            sizes.append(len(frame))
            yield frame

    monkeypatch.setattr(Source, "frames", small_frames)
    chunked = api.inspect(train, test=test).to_json()
    assert sizes and max(sizes) <= 64
    assert chunked == whole
    train_part = whole["parts"]["train"]
    assert train_part["rows"] == len(table)
    assert train_part["label_counts"] == table["label"].value_counts().sort_index().to_dict()
    texts = table["text"].fillna("")
    assert whole["leakage_train_test"]["exact"] == int(
        texts.isin(set(texts.iloc[::25]) - {""}).sum()
    )


def test_inspect_gives_the_same_report_twice(tmp_path: Path, long_table: pd.DataFrame) -> None:
    """Same data, same seed: the same findings, likely label errors included."""
    table = long_table.dropna(subset=["label"])
    table.to_csv(path := tmp_path / "t.csv", index=False)
    reports = []
    for global_seed in (1, 2):  # what other code left in numpy's global generator
        np.random.seed(global_seed)
        reports.append(api.inspect(path).to_json())
    assert reports[0]["label_errors"] == reports[1]["label_errors"]
    assert reports[0] == reports[1]


def write_formats(table: pd.DataFrame, folder: Path, classes: list[str]) -> dict[str, Path]:
    import datasets

    paths = {
        "csv": folder / "t.csv",
        "tsv": folder / "t.tsv",
        "jsonl": folder / "t.jsonl",
        "parquet": folder / "t.parquet",
        "hf-dataset": folder / "hf",
    }
    table.to_csv(paths["csv"], index=False)
    table.to_csv(paths["tsv"], index=False, sep="\t")
    table.to_json(paths["jsonl"], orient="records", lines=True)
    table.to_parquet(paths["parquet"], index=False, row_group_size=50)
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=classes)}
    )
    coded = table.assign(label=table["label"].map(classes.index))
    datasets.Dataset.from_pandas(coded, features=features, preserve_index=False).save_to_disk(
        str(paths["hf-dataset"])
    )
    return paths


@pytest.fixture(scope="module")
def format_table() -> pd.DataFrame:
    """300 texts of 3 classes with 9 exact and 4 near (case / punctuation) repeats."""
    table = unique_texts(287, seed=5)
    table.loc[::3, "label"] = "neutral"
    exact = table.iloc[[1, 7, 20, 33, 48, 60, 91, 130, 200]]
    near = table.iloc[[2, 8, 21, 34]].assign(text=lambda t: t["text"].str.capitalize() + "!")
    return pd.concat([table, exact, near], ignore_index=True)


def test_every_chunked_reader_keeps_frames_within_the_chunk_size(
    tmp_path: Path, format_table: pd.DataFrame
) -> None:
    paths = write_formats(format_table, tmp_path, ["negative", "neutral", "positive"])
    for fmt, path in paths.items():
        source = open_source(path, field="data.train")
        assert source.format == fmt
        sizes = [len(frame) for frame in source.frames(chunk_rows=64)]
        assert max(sizes) <= 64 and sum(sizes) == len(format_table), (fmt, sizes)


# ----------------------------------------------------------------------------------------------
# 2. formats


def test_every_format_gives_the_same_report(tmp_path: Path, format_table: pd.DataFrame) -> None:
    classes = ["negative", "neutral", "positive"]
    paths = write_formats(format_table, tmp_path, classes)
    expected_counts = {name: int((format_table["label"] == name).sum()) for name in classes}
    texts = format_table["text"]
    exact = int(texts.duplicated().sum())
    near = int(texts.map(normalize).duplicated().sum()) - exact
    assert (exact, near) == (9, 4)
    for fmt, path in paths.items():
        report = api.inspect(path)
        train = report.to_json()["parts"]["train"]
        assert report.task.name == "text-classification", fmt
        assert report.classes == classes, fmt
        assert train["format"] == fmt
        assert train["rows"] == len(format_table), fmt
        assert train["label_counts"] == expected_counts, fmt
        assert (train["duplicates"]["exact"], train["duplicates"]["near"]) == (exact, near), fmt
        json.dumps(report.to_json())  # the report is plain JSON data


# ----------------------------------------------------------------------------------------------
# 3. task inference


def test_binary_strings_are_text_classification(tmp_path: Path) -> None:
    table = unique_texts(60, seed=1).assign(label=lambda t: np.where(t.index % 3, "yes", "no"))
    table.to_csv(path := tmp_path / "b.csv", index=False)
    report = api.inspect(path)
    assert report.task.name == "text-classification"
    assert report.to_json()["parts"]["train"]["label_counts"] == {"no": 20, "yes": 40}


def test_jsonl_list_labels_are_multilabel(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    names = ["action", "comedy", "drama"]
    sets = [
        sorted(set(rng.choice(names, size=int(rng.integers(0, 3))).tolist())) for _ in range(80)
    ]
    table = unique_texts(80, seed=2).assign(label=sets)
    table.to_json(path := tmp_path / "m.jsonl", orient="records", lines=True)
    report = api.inspect(path)
    assert report.task.name == "text-multilabel"
    expected = {name: sum(name in labels for labels in sets) for name in names}
    assert report.to_json()["parts"]["train"]["label_counts"] == expected


def test_a_label_delimiter_makes_multilabel(tmp_path: Path) -> None:
    joined = ["a|b", "b", "a| c", "c|a|b", "b"] * 12
    table = unique_texts(60, seed=4).assign(label=joined)
    table.to_csv(path := tmp_path / "d.csv", index=False)
    report = api.inspect(path, label_delimiter="|")
    assert report.task.name == "text-multilabel"
    assert report.to_json()["parts"]["train"]["label_counts"] == {"a": 36, "b": 48, "c": 24}


def test_fractional_numbers_in_a_table_without_text_are_tabular_regression(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    table = pd.DataFrame({"x1": rng.normal(size=100), "x2": rng.integers(0, 5, 100)})
    table["label"] = (2.5 * table["x1"] + rng.normal(size=100)).round(3)
    table.to_csv(path := tmp_path / "r.csv", index=False)
    report = api.inspect(path)
    assert report.task.name == "tabular-regression"
    target = report.to_json()["parts"]["train"]["target"]
    assert target["mean"] == pytest.approx(table["label"].mean(), abs=1e-4)
    assert target["max"] == pytest.approx(table["label"].max())


def test_few_whole_numbers_are_classes_and_an_explicit_task_overrides(tmp_path: Path) -> None:
    table = unique_texts(90, seed=7).assign(label=[0, 1, 2] * 30)
    table.to_csv(path := tmp_path / "w.csv", index=False)
    report = api.inspect(path)
    assert report.task.name == "text-classification"
    assert report.classes == ["0", "1", "2"]
    assert report.to_json()["parts"]["train"]["label_counts"] == {"0": 30, "1": 30, "2": 30}

    regression = api.inspect(path, task="text-regression")
    assert regression.task.name == "text-regression"
    assert regression.to_json()["parts"]["train"]["target"]["mean"] == pytest.approx(1.0)
    data = load(tmp_path, path, task="text-regression")
    assert data.task == "text-regression"
    assert sorted(set(data.train.labels + data.val.labels + data.test.labels)) == [0.0, 1.0, 2.0]


# ----------------------------------------------------------------------------------------------
# 4. duplicates and leakage (text)

K_EXACT, M_NEAR, P_LEAK, Q_NEAR_LEAK = 7, 5, 6, 3
TRAIN_ROWS = 200


@pytest.fixture(scope="module")
def leaky_texts(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path, pd.DataFrame, pd.DataFrame]:
    """A train file with K exact and M near repeats, and a test file holding P train rows
    verbatim and Q of them with case and punctuation changed."""
    both = unique_texts(TRAIN_ROWS + 40, seed=11)
    base, fresh = both.iloc[:TRAIN_ROWS], both.iloc[TRAIN_ROWS:]
    rows = np.random.default_rng(0).permutation(TRAIN_ROWS)
    exact_src, near_src = rows[:K_EXACT], rows[K_EXACT : K_EXACT + M_NEAR]
    leak_src = rows[K_EXACT + M_NEAR : K_EXACT + M_NEAR + P_LEAK]
    near_leak_src = rows[K_EXACT + M_NEAR + P_LEAK : K_EXACT + M_NEAR + P_LEAK + Q_NEAR_LEAK]

    def shout(part: pd.DataFrame) -> pd.DataFrame:
        return part.assign(text=part["text"].map(lambda t: t.title().replace(" ", ",  ") + "?!"))

    train = pd.concat([base, base.iloc[exact_src], shout(base.iloc[near_src])], ignore_index=True)
    test = pd.concat(
        [fresh, base.iloc[leak_src], shout(base.iloc[near_leak_src])], ignore_index=True
    )
    folder = tmp_path_factory.mktemp("leaky")
    train.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    return folder / "train.csv", folder / "test.csv", train, test


def test_inspect_counts_planted_duplicates_and_leakage(leaky_texts: Any) -> None:
    train_csv, test_csv, _, _ = leaky_texts
    report = api.inspect(train_csv, test=test_csv).to_json()
    duplicates = report["parts"]["train"]["duplicates"]
    assert (duplicates["exact"], duplicates["near"]) == (K_EXACT, M_NEAR)
    assert duplicates["exact_with_other_label"] == 0
    leakage = report["leakage_train_test"]
    assert (leakage["exact"], leakage["near"]) == (P_LEAK, Q_NEAR_LEAK)
    test_duplicates = report["parts"]["test"]["duplicates"]
    assert (test_duplicates["exact"], test_duplicates["near"]) == (0, 0)
    checks = {finding["check"]: finding["count"] for finding in report["findings"]}
    assert checks["duplicates"] == K_EXACT and checks["near-duplicates"] == M_NEAR
    assert checks["leakage-test"] == P_LEAK + Q_NEAR_LEAK


def test_loading_drops_duplicates_and_test_overlap(tmp_path: Path, leaky_texts: Any) -> None:
    train_csv, test_csv, train, test = leaky_texts
    data = load(tmp_path, train_csv, test=str(test_csv))
    cleaning = data.report.cleaning
    dropped = cleaning["duplicates_dropped"]
    assert dropped["train"] + dropped["val"] == K_EXACT
    overlap = cleaning["test_overlap_dropped"]
    assert overlap["match"] == "near"
    assert overlap["train"] + overlap["val"] == P_LEAK + Q_NEAR_LEAK
    assert len(data.train) + len(data.val) == len(train) - K_EXACT - P_LEAK - Q_NEAR_LEAK
    assert data.test.inputs == test["text"].tolist()  # the test part is never cleaned
    seen = data.train.inputs + data.val.inputs
    assert not set(seen) & set(data.test.inputs)
    assert not {normalize(t) for t in seen} & {normalize(t) for t in data.test.inputs}
    assert len(set(seen)) == len(seen)
    # The rows kept are the file's own: each id's text is the text of that data row.
    for part in (data.train, data.val):
        assert train["text"].iloc[row_numbers(part.ids)].tolist() == part.inputs


def test_exact_overlap_matching_drops_only_verbatim_copies(
    tmp_path: Path, leaky_texts: Any
) -> None:
    train_csv, test_csv, _, _ = leaky_texts
    data = load(tmp_path, train_csv, test=str(test_csv), clean={"drop_test_overlap": "exact"})
    overlap = data.report.cleaning["test_overlap_dropped"]
    assert (overlap["train"] + overlap["val"], overlap["match"]) == (P_LEAK, "exact")


def test_cleaning_switched_off_drops_nothing(tmp_path: Path, leaky_texts: Any) -> None:
    train_csv, test_csv, train, _ = leaky_texts
    data = load(
        tmp_path,
        train_csv,
        test=str(test_csv),
        clean={"drop_test_overlap": "none", "drop_duplicates": False},
    )
    cleaning = data.report.cleaning
    assert cleaning.get("duplicates_dropped", {"train": 0, "val": 0}) == {"train": 0, "val": 0}
    overlap = cleaning.get("test_overlap_dropped", {"train": 0, "val": 0})
    assert overlap["train"] + overlap["val"] == 0
    assert len(data.train) + len(data.val) == len(train)
    ids = sorted(row_numbers(data.train.ids + data.val.ids).tolist())
    assert ids == list(range(len(train)))


# ----------------------------------------------------------------------------------------------
# 5. duplicates and leakage (images)


def smooth_image(rng: np.random.Generator, side: int = 32) -> Image.Image:
    """Random content with structure at several scales (pure noise has no stable low
    frequencies for a perceptual hash to keep)."""
    coarse = rng.uniform(20, 230, size=(4, 4, 3)).astype(np.uint8)
    base = np.asarray(
        Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC), dtype=np.float64
    )
    pixels = base + rng.normal(0, 6, size=(side, side, 3))
    # Headroom at the top, so the brightened copy below is a pure shift: clipped highlights
    # would change the picture itself, not just its brightness.
    return Image.fromarray(np.clip(pixels, 0, 240).astype(np.uint8))


EXACT_COPIES, BRIGHTENED, RESAVED = 2, 2, 2


@pytest.fixture(scope="module")
def leaky_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """Train: 2 classes x 20 images. Test: 2 x 5 new images, plus copies of 6 train images (one
    exact copy, one brightened by 6 levels and one resaved as JPEG per class)."""
    rng = np.random.default_rng(21)
    root = tmp_path_factory.mktemp("leaky-images")
    train, test = root / "train", root / "test"
    sources: list[str] = []
    for name in ("cat", "dog"):
        (train / name).mkdir(parents=True)
        (test / name).mkdir(parents=True)
        for i in range(20):
            smooth_image(rng).save(train / name / f"{name}{i:02d}.png")
        for i in range(5):
            smooth_image(rng).save(test / name / f"new{i:02d}.png")
        shutil.copy(train / name / f"{name}00.png", test / name / "copy.png")
        with Image.open(train / name / f"{name}01.png") as image:
            brighter = np.clip(np.asarray(image, dtype=np.int16) + 6, 0, 255).astype(np.uint8)
            Image.fromarray(brighter).save(test / name / "bright.png")
        with Image.open(train / name / f"{name}02.png") as image:
            image.convert("RGB").save(test / name / "resaved.jpg", quality=90)
        sources += [f"{name}/{name}00.png", f"{name}/{name}01.png", f"{name}/{name}02.png"]
    return train, test, sources


def test_image_leakage_is_counted_and_dropped(tmp_path: Path, leaky_images: Any) -> None:
    train, test, sources = leaky_images
    report = api.inspect(train, test=test).to_json()
    assert report["task"] == "image-classification"
    assert report["parts"]["train"]["label_counts"] == {"cat": 20, "dog": 20}
    assert report["parts"]["test"]["label_counts"] == {"cat": 8, "dog": 8}
    duplicates = report["parts"]["train"]["duplicates"]
    assert (duplicates["exact"], duplicates["near"]) == (0, 0)
    leakage = report["leakage_train_test"]
    assert leakage["exact"] == EXACT_COPIES
    assert leakage["near"] == BRIGHTENED + RESAVED

    data = load(tmp_path, train, test=str(test))
    overlap = data.report.cleaning["test_overlap_dropped"]
    assert overlap["train"] + overlap["val"] == EXACT_COPIES + BRIGHTENED + RESAVED
    kept = set(data.train.ids + data.val.ids)
    assert len(kept) == 40 - len(sources)
    assert not kept & set(sources)
    assert len(data.test) == 16

    exact_only = load(
        tmp_path, train, name="exact", test=str(test), clean={"drop_test_overlap": "exact"}
    )
    overlap = exact_only.report.cleaning["test_overlap_dropped"]
    assert overlap["train"] + overlap["val"] == EXACT_COPIES


def image_dataset(folders: list[Path], path: Path, **extra_columns: list[Any]) -> Path:
    """The images of class folders as a saved Hugging Face dataset with an `Image` column, the
    bytes embedded as `save_to_disk` does, the labels as a ClassLabel."""
    import datasets

    files = [file for folder in folders for file in sorted(folder.glob("*/*"))]
    classes = sorted({file.parent.name for file in files})
    columns = {
        "image": [{"bytes": file.read_bytes(), "path": file.name} for file in files],
        "label": [classes.index(file.parent.name) for file in files],
        **extra_columns,
    }
    features = {"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)}
    features.update({name: datasets.Image() for name in extra_columns})
    dataset = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    dataset.save_to_disk(str(path))
    return path


def test_a_saved_dataset_of_images_reads_as_its_image_folder(
    tmp_path: Path, leaky_images: Any
) -> None:
    train, test, _ = leaky_images
    saved = image_dataset([train], tmp_path / "train-hf")
    saved_test = image_dataset([test], tmp_path / "test-hf")
    folder_report = api.inspect(train, test=test).to_json()
    report = api.inspect(saved, test=saved_test).to_json()
    assert report["task"] == "image-classification"
    assert report["parts"]["train"]["format"] == "hf-dataset"
    for name in ("train", "test"):
        ours, theirs = report["parts"][name], folder_report["parts"][name]
        for key in ("rows", "label_counts", "images", "duplicates"):
            assert ours[key] == theirs[key], (name, key)
    for key in ("exact", "near"):
        assert report["leakage_train_test"][key] == folder_report["leakage_train_test"][key]
    assert report["leakage_train_test"]["exact"] == EXACT_COPIES
    # Rows of a saved dataset are named by their row number (counted from 1), as table rows are.
    assert report["leakage_train_test"]["examples"] == ["1", "21"]

    # The decoded files are the embedded bytes, unchanged, and a second read reuses them.
    data = load(tmp_path, saved, test=str(saved_test))
    first = Path(data.train.inputs[0])
    row = int(data.train.ids[0])
    originals = sorted(train.glob("*/*"))
    assert first.read_bytes() == originals[row - 1].read_bytes()
    written = first.stat().st_mtime_ns
    again = load(tmp_path, saved, name="again", test=str(saved_test))
    assert again.train.inputs == data.train.inputs
    assert first.stat().st_mtime_ns == written
    overlap = data.report.cleaning["test_overlap_dropped"]
    assert overlap["train"] + overlap["val"] == EXACT_COPIES + BRIGHTENED + RESAVED


def test_corrupt_bytes_in_a_saved_image_dataset_are_unreadable_rows(
    tmp_path: Path, leaky_images: Any
) -> None:
    import datasets

    train, _, _ = leaky_images
    files = sorted(train.glob("*/*"))
    cells = [{"bytes": file.read_bytes(), "path": None} for file in files]
    cells[3] = {"bytes": cells[3]["bytes"][:60], "path": None}  # a truncated PNG
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    labels = [file.parent.name for file in files]
    path = tmp_path / "broken-hf"
    datasets.Dataset.from_dict({"image": cells, "label": labels}, features=features).save_to_disk(
        str(path)
    )
    report = api.inspect(path).to_json()
    assert report["parts"]["train"]["images"]["unreadable"] == 1
    unreadable = [f for f in report["findings"] if f["check"] == "unreadable-image"]
    assert unreadable and unreadable[0]["examples"] == ["4"], report["findings"]
    data = load(tmp_path, path, clean={"drop_unreadable": True})
    assert data.report.cleaning["unreadable_dropped"]["train"] == 1
    assert len(data.train) + len(data.val) + len(data.test) == len(files) - 1


def test_a_class_whose_images_are_all_unreadable_is_refused_not_shipped_untrained(
    tmp_path: Path, leaky_images: Any
) -> None:
    """With drop_unreadable, a class folder of unreadable files only kept its name among the
    classes: the model predicted a class it never trained on (four-way log loss on three)."""
    train, _, _ = leaky_images
    folder = tmp_path / "train"
    shutil.copytree(train, folder)
    (folder / "bird").mkdir()
    (folder / "bird" / "empty.png").write_bytes(b"")
    (folder / "bird" / "text.png").write_text("not an image")
    with pytest.raises(DataError) as caught:
        load(tmp_path, folder, clean={"drop_unreadable": True})
    assert caught.value.problem == ("class(es) 'bird' have no training rows left after cleaning "
                                    "dropped unreadable images")
    assert caught.value.file == str(folder) and caught.value.field == "data.clean"
    (folder / "bird" / "one.png").write_bytes((folder / "cat" / "cat00.png").read_bytes())
    shutil.copy(folder / "dog" / "dog00.png", folder / "bird" / "two.png")
    shutil.copy(folder / "dog" / "dog01.png", folder / "bird" / "three.png")
    data = load(tmp_path, folder, clean={"drop_unreadable": True, "drop_duplicates": False,
                                         "drop_test_overlap": "none"})
    assert data.classes == ["bird", "cat", "dog"]


# ----------------------------------------------------------------------------------------------
# 6. split methods through the config


@pytest.fixture(scope="module")
def split_table(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """300 distinct texts with a group (30 groups of 10), a date and an assigned part."""
    rng = np.random.default_rng(8)
    table = unique_texts(300, seed=8)
    table["g"] = [f"user{k}" for k in rng.permutation(np.repeat(np.arange(30), 10))]
    days = rng.permutation(300)
    table["when"] = (pd.Timestamp("2023-01-01") + pd.to_timedelta(days, unit="D")).strftime(
        "%Y-%m-%d"
    )
    table["part"] = rng.permutation(["train"] * 200 + ["valid"] * 40 + ["test"] * 60)
    path = tmp_path_factory.mktemp("split") / "split.csv"
    table.to_csv(path, index=False)
    return path, table


def parts_of(data: TaskData) -> dict[str, np.ndarray]:
    return {name: row_numbers(getattr(data, name).ids) for name in ("train", "val", "test")}


def test_group_split_keeps_each_group_in_one_part(tmp_path: Path, split_table: Any) -> None:
    path, table = split_table
    data = load(tmp_path, path, split={"group_column": "g"})
    assert data.splits["method"] == "group"
    rows = parts_of(data)
    groups = {name: set(table["g"].iloc[part]) for name, part in rows.items()}
    assert not groups["train"] & groups["val"]
    assert not groups["train"] & groups["test"]
    assert not groups["val"] & groups["test"]
    assert sorted(np.concatenate(list(rows.values())).tolist()) == list(range(300))


def test_time_split_puts_the_latest_rows_last(tmp_path: Path, split_table: Any) -> None:
    path, table = split_table
    data = load(tmp_path, path, split={"time_column": "when"})
    assert data.splits["method"] == "time"
    times = pd.to_datetime(table["when"])
    rows = parts_of(data)
    # test: ceil(0.2 * 300); val: ceil(0.1 * 240) of the rest
    assert [len(rows[name]) for name in ("train", "val", "test")] == [216, 24, 60]
    assert times.iloc[rows["test"]].min() > times.iloc[rows["val"]].max()
    assert times.iloc[rows["val"]].min() > times.iloc[rows["train"]].max()


def test_column_split_follows_the_column(tmp_path: Path, split_table: Any) -> None:
    path, table = split_table
    data = load(tmp_path, path, split={"column": "part"})
    assert data.splits["method"] == "column"
    rows = parts_of(data)
    for name, value in (("train", "train"), ("val", "valid"), ("test", "test")):
        assert sorted(rows[name].tolist()) == np.flatnonzero(table["part"] == value).tolist()


def test_default_split_is_recorded_as_stratified(tmp_path: Path, split_table: Any) -> None:
    path, _ = split_table
    data = load(tmp_path, path)
    assert data.splits["method"] == "stratified"
    assert [data.splits["parts"][p]["rows"] for p in ("train", "val", "test")] == [216, 24, 60]


# ----------------------------------------------------------------------------------------------
# 7. tabular


def test_tabular_encoding_standardizes_train_and_counts_imputed_values(tmp_path: Path) -> None:
    from sklearn.datasets import load_wine

    table = load_wine(as_frame=True).frame.rename(columns={"target": "label"})
    features = [c for c in table.columns if c != "label"]
    rng = np.random.default_rng(13)
    holes = rng.choice(len(table) * len(features), 25, replace=False)
    for cell in holes:
        table.iloc[cell // len(features), table.columns.get_loc(features[cell % len(features)])] = (
            np.nan
        )
    table.to_csv(path := tmp_path / "wine.csv", index=False)

    data = load(tmp_path, path)
    assert data.task == "tabular-classification"
    assert data.classes == ["0", "1", "2"]
    assert data.tabular is not None and data.train.features is not None
    train_rows = row_numbers(data.train.ids)
    assert len(train_rows) + len(data.val) + len(data.test) == len(table)

    encoded = data.tabular.transform(data.train.features).astype(np.float64)
    names = data.tabular.feature_names
    numeric = [i for i, name in enumerate(names) if not name.endswith("__missing")]
    assert [names[i] for i in numeric] == features
    np.testing.assert_allclose(encoded[:, numeric].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(encoded[:, numeric].std(axis=0), 1.0, atol=1e-4)

    injected = table[features].iloc[train_rows].isna().sum()
    expected = {column: int(n) for column, n in injected.items() if n}
    imputed = data.report.cleaning["imputed"]
    assert imputed["strategy"] == "median"
    assert imputed["train_values_filled"] == expected
    assert sum(expected.values()) > 0
    # A missing-indicator column exactly for the columns with gaps in train.
    assert [n for n in names if n.endswith("__missing")] == [f"{c}__missing" for c in expected]


# ----------------------------------------------------------------------------------------------
# 8. likely label errors


def test_flipped_text_labels_are_flagged(tmp_path: Path) -> None:
    table = make_texts(400, seed=17)
    flipped = np.random.default_rng(17).choice(400, 20, replace=False)
    table.loc[flipped, "label"] = table.loc[flipped, "label"].map(
        {"positive": "negative", "negative": "positive"}
    )
    table.to_csv(path := tmp_path / "noisy.csv", index=False)
    errors = api.inspect(path).to_json()["label_errors"]
    assert errors["checked"] is True
    assert errors["count"] > 0
    assert len(errors["examples"]) == errors["count"]  # all of them: the finding says so
    flagged = [int(example["id"]) - 1 for example in errors["examples"]]
    hits = len(set(flagged) & set(flipped.tolist()))
    assert hits / len(flagged) >= 0.8, (flagged, sorted(flipped.tolist()))
    for example in errors["examples"]:  # given / suggested name the row's label and the other
        row = int(example["id"]) - 1
        assert example["given"] == table["label"].iloc[row]
        assert example["suggested"] != example["given"]


# ----------------------------------------------------------------------------------------------
# 9. augmentation wiring


def pixels(loader: Any) -> torch.Tensor:
    return torch.cat([batch["pixel_values"] for batch in loader])


def test_augmentation_reaches_training_batches_only(image_config: Callable[..., Path]) -> None:
    prepared = api.prepare(load_config(image_config()))
    backbone, data = prepared.backbone, prepared.data
    one = data.train.subset([0])
    targets = data.targets(one)
    torch.manual_seed(0)

    def train_loader(preset: Literal["light", "none"]) -> Any:
        return train_batches(
            backbone,
            one.inputs,
            targets,
            batch_size=1,
            seed=0,
            augment=AugmentConfig(preset=preset),
            mix_classes=len(data.classes),
        )

    light = train_loader("light")
    first, again = pixels(light), pixels(light)
    light.batch_sampler.set_epoch(1)
    second = pixels(light)
    evaluated = [pixels(eval_batches(backbone, one.inputs, batch_size=1).loader) for _ in range(2)]
    assert first.shape == evaluated[0].shape
    assert torch.equal(first, again)  # an epoch's augmentation is a function of seed and epoch
    assert not torch.equal(first, second)  # ... and each epoch has its own
    assert torch.equal(evaluated[0], evaluated[1])
    plain = pixels(train_loader("none"))
    assert torch.equal(plain, evaluated[0])
    assert not torch.equal(first, evaluated[0])


def test_a_numeric_label_column_read_as_text_has_missing_labels_and_one_class_per_number(
    tmp_path: Path,
) -> None:
    """In a CSV every label is text: `nan` in a column of numbers is a missing label (as NaN is
    in JSON), not a third class, and `1.0` is the class `1`."""
    table = unique_texts(60, seed=3).assign(label=["0", "1"] * 30)
    table.loc[5, "label"] = "1.0"
    table.to_csv(path := tmp_path / "numbers.csv", index=False)
    report = api.inspect(path)
    assert report.classes == ["0", "1"]
    assert report.to_json()["parts"]["train"]["label_counts"] == {"0": 30, "1": 30}
    table.loc[[3, 9], "label"] = ["nan", "NA"]
    table.to_csv(path, index=False)
    with pytest.raises(TunesmithError) as caught:
        load(tmp_path, path)
    assert "2 row(s) have no label (data rows 4, 10)" in caught.value.message
    words = unique_texts(60, seed=4).assign(label=["none", "some"] * 30)  # words stay classes
    words.to_csv(path, index=False)
    assert api.inspect(path).classes == ["none", "some"]


def test_a_table_with_an_image_column_is_read_as_a_table_for_prediction(tmp_path: Path) -> None:
    """A text model's inputs with a column named image (and its text in `body`) were refused by
    `tunesmith predict` as 'cannot read a image-manifest as a table'."""
    from tunesmith.data.sources import read_table, read_table_rows

    path = tmp_path / "posts.csv"
    path.write_text("body,image\na fine film,http://x/1.jpg\nawful,http://x/2.jpg\n")
    table = read_table(path, field="INPUT")
    assert table.to_dict("list") == {"body": ["a fine film", "awful"],
                                     "image": ["http://x/1.jpg", "http://x/2.jpg"]}
    path.write_text("body,image\na fine film,http://x/1.jpg,extra\nawful,http://x/2.jpg\n")
    rows, errors = read_table_rows(path, field="INPUT")
    assert errors == {0: "row has 3 fields, the header 2"} and rows.loc[1, "body"] == "awful"


def test_an_image_task_on_a_table_without_the_image_column_names_data_image_column(
    tmp_path: Path, leaky_images: Any
) -> None:
    """A manifest whose paths are in a column not named `image`: the fix said "set task: auto"
    (which made it a table task) and never named data.image_column."""
    train, _, _ = leaky_images
    shutil.copytree(train, tmp_path / "images")
    files = sorted((tmp_path / "images").glob("*/*.png"))
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"path": [str(f.relative_to(tmp_path)) for f in files],
                  "label": [f.parent.name for f in files]}).to_csv(manifest, index=False)
    with pytest.raises(TunesmithError) as caught:
        load(tmp_path, manifest, task="image-classification")
    assert caught.value.field == "data.image_column" and caught.value.file == str(manifest)
    problem = caught.value.problem
    assert "no column 'image'" in problem and "['path', 'label']" in problem
    data = load(tmp_path, manifest, task="image-classification", image_column="path")
    assert data.classes == ["cat", "dog"]
    # a table for an image task that is no manifest at all still says so
    table = tmp_path / "table.csv"
    pd.DataFrame({"x": [1.0, 2.0], "label": [0, 1]}).to_csv(table, index=False)
    with pytest.raises(TunesmithError, match="no column 'image'"):
        load(tmp_path, table, task="image-classification")


def test_files_an_image_folder_does_not_read_are_named_not_dropped_silently(
    tmp_path: Path, leaky_images: Any
) -> None:
    """A class folder's .heic or .avif files were left out of training without a word (only a
    class left with no image at all was named)."""
    train, _, _ = leaky_images
    folder = tmp_path / "train"
    shutil.copytree(train, folder)
    for name in ("a.heic", "b.heic", "c.avif"):
        (folder / "cat" / name).write_bytes(b"\0" * 10)
    (folder / "dog" / "notes").write_text("no suffix")
    (folder / "dog" / ".DS_Store").write_bytes(b"")  # hidden: no one's picture
    report = api.inspect(folder).to_json()
    left = [f for f in report["findings"] if f["check"] == "files-left-out"]
    assert len(left) == 1 and left[0]["severity"] == "warning" and left[0]["count"] == 4
    assert left[0]["message"].endswith("left out: 1 .avif, 2 .heic, 1 no suffix")
    assert ".png" in left[0]["fix"]
    assert not [f for f in api.inspect(train).to_json()["findings"]
                if f["check"] == "files-left-out"]


def test_class_codes_written_with_leading_zeros_keep_their_spelling(tmp_path: Path) -> None:
    """Labels 01, 02 were renamed 1, 2 (the rule that makes 1 and 1.0 one class): predictions
    and the model card named classes the data never wrote. A number written two ways is still
    one class, and a given test file that writes 1 for train's 01 still matches it."""
    table = unique_texts(60, seed=5).assign(label=["01", "02", "10"] * 20)
    table.to_csv(path := tmp_path / "codes.csv", index=False)
    assert api.inspect(path).classes == ["01", "02", "10"]
    table.loc[4, "label"] = "2.0"  # 02 and 2.0: one number, written two ways
    table.to_csv(path, index=False)
    assert api.inspect(path).classes == ["01", "2", "10"]
    table.loc[4, "label"] = "02"
    table.to_csv(path, index=False)
    test = unique_texts(90, seed=6).tail(12).assign(label=["1", "2", "10"] * 4)
    test.to_csv(test_path := tmp_path / "test.csv", index=False)
    data = load(tmp_path, path, test=str(test_path))
    assert data.classes == ["01", "02", "10"]
    assert sorted(set(data.test.labels)) == ["01", "02", "10"]
    assert data.test.labels[:3] == ["01", "02", "10"]


def test_boolean_labels_match_however_each_file_writes_them(tmp_path: Path) -> None:
    """A CSV's `true` and a JSON file's `true` (a boolean, named `True` as Python spells it) are
    one class: a given test file in the other format matched none of train's classes."""
    import json

    table = unique_texts(60, seed=7).assign(label=["true", "false"] * 30)
    table.to_csv(path := tmp_path / "train.csv", index=False)
    test = unique_texts(90, seed=8).tail(12).assign(label=[True, False] * 6)
    rows = test.to_dict("records")
    (test_path := tmp_path / "test.jsonl").write_text("".join(
        json.dumps({"text": row["text"], "label": row["label"]}) + "\n" for row in rows))
    data = load(tmp_path, path, test=str(test_path))
    assert data.classes == ["false", "true"]
    assert data.test.labels == ["true", "false"] * 6
