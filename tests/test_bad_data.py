"""Bad data on the command line: each problem gives one message naming file, field and fix.

Every case runs twice: `tunesmith validate CONFIG` (a run's checks without training) must stop with
exit status 2, and `tunesmith inspect DATA` with exit status 1, the status for "this data is
unusable" (2 is kept for wrong options, such as a column the options name that the file lacks).
Then `inspect` on good data: its numbers are checked against data built here, in each format it
reads.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from conftest import CliResult, config_dict, make_texts, stripes, write_yaml
from test_cli import assert_user_error, bad_csv

Cli = Callable[[list[str | Path]], CliResult]


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich folds table cells at 80 columns; a wide console keeps each message on one line, so the
    assertions below see the words a user reads, not where Rich broke them."""
    monkeypatch.setenv("COLUMNS", "2000")


# ----------------------------------------------------------------------------------------------
# helpers


def inspect_cli(run_cli: Cli, data: Path, *options: str | Path) -> tuple[CliResult, Path]:
    # A folder whose path does not contain the data's path: the "wrote ..." line must not be what
    # makes the file name appear in the output.
    out = data.parent / "inspect-reports" / "data_report.json"
    return run_cli(["inspect", data, *options, "--out", out]), out


def assert_inspect_error(
    result: CliResult, out: Path, *expected: str | Path, code: int = 1
) -> None:
    """`inspect` stopped with `code` and said what is wrong, where, and how to fix it.

    Unusable data either stops the reading (one `error:` line, no report) or is a fatal finding
    in the report; either way the terminal output must hold the file, the field and the problem.
    """
    assert result.code == code, (result.code, result.err[-3000:])
    assert "Traceback" not in result.err
    if out.exists():
        report = json.loads(out.read_text())
        fatal = [finding for finding in report["findings"] if finding["severity"] == "fatal"]
        assert fatal, report["findings"]
        first = fatal[0]
        assert first["fix"], first
        said = " ".join(str(first[key]) for key in ("file", "field", "message", "fix"))
        for part in expected:
            assert str(part) in said, (part, first)
        assert first["fix"] in result.err, (first["fix"], result.err)
    else:
        assert result.err.startswith("error: ") and result.err.count("error: ") == 1, result.err
        assert "fix: " in result.err
    for part in expected:
        assert str(part) in result.err, (part, result.err)


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def copy_images(image_folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(image_folder, tmp_path / "images"))


def numeric_targets(rows: int, *, seed: int) -> pd.DataFrame:
    """Texts with a fractional target: what reads as (and is) a regression task."""
    table = make_texts(rows, seed=seed)
    rng = np.random.default_rng(seed)
    return table.assign(label=np.round(rng.uniform(0.0, 5.0, rows), 3))


# ----------------------------------------------------------------------------------------------
# tables


def test_empty_file(text_config: Callable[..., Path], run_cli: Cli, tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "empty.csv", b"")
    expected = (path, "data.train", "the file is empty (0 bytes)")
    assert_user_error(run_cli(["validate", text_config(data_path=path)]), *expected)
    assert_inspect_error(*inspect_cli(run_cli, path), *expected)


def test_header_only_csv(text_config: Callable[..., Path], run_cli: Cli, tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "header.csv", b"text,label\n")
    expected = (path, "data.train", "the file has a header but no rows")
    assert_user_error(run_cli(["validate", text_config(data_path=path)]), *expected)
    assert_inspect_error(*inspect_cli(run_cli, path), *expected)


def test_missing_label_column(text_config: Callable[..., Path], text_table: pd.DataFrame,
                              run_cli: Cli, tmp_path: Path) -> None:
    path = bad_csv(tmp_path, text_table.rename(columns={"label": "sentiment"}))
    expected = (path, "data.label_column", "'label' not found", "'sentiment'")
    assert_user_error(run_cli(["validate", text_config(data_path=path)]), *expected)
    # For inspect the column is an option (--label-column) naming what the file lacks: a usage
    # error, status 2, like the wrong delimiter below.
    result, out = inspect_cli(run_cli, path)
    assert_inspect_error(result, out, *expected, code=2)
    assert "(on the command line: --label-column)" in result.err


@pytest.mark.parametrize("empty", ["", "   "], ids=["empty", "spaces"])
def test_all_labels_missing(empty: str, text_config: Callable[..., Path],
                            text_table: pd.DataFrame, run_cli: Cli, tmp_path: Path) -> None:
    path = bad_csv(tmp_path, text_table.assign(label=empty))
    expected = (path, "data.label_column", f"all {len(text_table)} rows have no label")
    assert_user_error(run_cli(["validate", text_config(data_path=path)]), *expected)
    assert_inspect_error(*inspect_cli(run_cli, path), *expected)


def test_one_class_only(text_config: Callable[..., Path], text_table: pd.DataFrame,
                        run_cli: Cli, tmp_path: Path) -> None:
    path = bad_csv(tmp_path, text_table.assign(label="positive"))
    expected = (path, "data.label_column", "single class ('positive')")
    assert_user_error(run_cli(["validate", text_config(data_path=path)]), *expected)
    assert_inspect_error(*inspect_cli(run_cli, path), *expected)


def test_wrong_delimiter(text_config: Callable[..., Path], text_table: pd.DataFrame,
                         run_cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "semicolons.csv"
    text_table.to_csv(path, sep=";", index=False)
    expected = (path, "data.delimiter", "looks separated by ';'", "set data.delimiter: ';'")
    assert_user_error(run_cli(["validate", text_config(data_path=path)]), *expected)
    # check_columns raises a plain TunesmithError: a usage error, which inspect answers with 2.
    result, out = inspect_cli(run_cli, path)
    assert_inspect_error(result, out, *expected, code=2)
    assert "(on the command line: --delimiter)" in result.err
    # Told the delimiter, both read the file.
    fixed = text_config("fixed", data_path=path, data={"delimiter": ";"})
    assert run_cli(["validate", fixed]).code == 0
    result, out = inspect_cli(run_cli, path, "--delimiter", ";")
    assert result.code == 0, result.err[-3000:]
    assert json.loads(out.read_text())["parts"]["train"]["rows"] == len(text_table)


def test_a_first_row_with_a_field_too_many(text_config: Callable[..., Path],
                                           text_table: pd.DataFrame, run_cli: Cli,
                                           tmp_path: Path) -> None:
    """pandas read such a file's first column as the index: every text became its label and
    every label the extra field ('single class' said inspect, of the extra field's value)."""
    lines = text_table.to_csv(index=False).splitlines()
    lines[1] += ",extra"
    path = tmp_path / "shifted.csv"
    path.write_text("\n".join(lines) + "\n")
    expected = (path, "data.train", "data row 1 has 3 fields, the header 2",
                "check that every row has the header's 2 fields")
    assert_user_error(run_cli(["validate", text_config(data_path=path)]), *expected)
    assert_inspect_error(*inspect_cli(run_cli, path), *expected)


@pytest.mark.parametrize("row", [0, -1], ids=["in-the-first-block", "after-8k"])
def test_text_that_is_not_utf8(row: int, text_config: Callable[..., Path],
                               text_table: pd.DataFrame, run_cli: Cli, tmp_path: Path) -> None:
    table = text_table.copy()
    table.iloc[row, table.columns.get_loc("text")] = "un caf\xe9 superb"
    path = tmp_path / "latin1.csv"
    table.to_csv(path, index=False, encoding="latin-1")
    assert path.stat().st_size > 8192  # the last row lies beyond the first block a reader decodes
    expected = (path, "data.encoding", "the file is not utf-8 text", "byte 0xe9")
    assert_user_error(run_cli(["validate", text_config(data_path=path)]), *expected)
    assert_inspect_error(*inspect_cli(run_cli, path), *expected)
    result, _ = inspect_cli(run_cli, path, "--encoding", "latin-1")
    assert result.code == 0, result.err[-3000:]


def test_test_labels_absent_from_train(text_config: Callable[..., Path], text_csv: Path,
                                       run_cli: Cli, tmp_path: Path) -> None:
    test_table = make_texts(40, seed=5)
    test_table.loc[[2, 7], "label"] = "neutral"
    test_path = bad_csv(tmp_path, test_table)
    expected = (test_path, "data.label_column",
                "test labels ['neutral'] never occur in the training data",
                "keep to the training data's label values in test: drop or relabel")
    config = text_config(data={"test": str(test_path)})
    assert_user_error(run_cli(["validate", config]), *expected)
    assert_inspect_error(*inspect_cli(run_cli, text_csv, "--test", test_path), *expected)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("inf", "1 regression target(s) are infinite or not a number (data rows 6)"),
        ("-inf", "1 regression target(s) are infinite or not a number (data rows 6)"),
        # NaN is pandas' missing value, and task.py reads "nan" in a numeric column as a missing
        # target: the rows-without-target message.
        ("nan", "1 row(s) have no target (empty or NaN) (data rows 6)"),
        ("NA", "1 row(s) have no target (empty or NaN) (data rows 6)"),
        # Text that is not a word for a gap is a wrong value, not a missing one.
        ("about 3", "1 regression target(s) are not numbers (data rows 6)"),
    ],
    ids=["inf", "-inf", "nan", "NA", "text"],
)
def test_regression_target_not_finite(value: str, problem: str, text_config: Callable[..., Path],
                                      run_cli: Cli, tmp_path: Path) -> None:
    table = numeric_targets(120, seed=3).astype({"label": object})
    table.loc[5, "label"] = value
    path = bad_csv(tmp_path, table)
    expected = (path, "data.label_column", problem)
    # The api trains only classification; the data problem must be reported before that refusal.
    result = run_cli(["validate", text_config(data_path=path, task="text-regression")])
    assert_user_error(result, *expected)
    assert "tunesmith trains text-classification" not in result.err
    assert_inspect_error(*inspect_cli(run_cli, path, "--task", "text-regression"), *expected)


def test_duplicate_column_names(text_config: Callable[..., Path], text_table: pd.DataFrame,
                                run_cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "twice.csv"
    table = text_table.assign(other=text_table["text"])
    table.to_csv(path, index=False, header=["text", "label", "text"])
    expected = (path, "data.train", "the header names column(s) ['text'] more than once")
    assert_user_error(run_cli(["validate", text_config(data_path=path)]), *expected)
    assert_inspect_error(*inspect_cli(run_cli, path), *expected)


# ----------------------------------------------------------------------------------------------
# images


@pytest.mark.parametrize(
    ("damage", "problem"),
    [("random-bytes", "cannot identify image file"), ("zero-bytes", "empty file (0 bytes)")],
    ids=["random-bytes", "zero-bytes"],
)
def test_unreadable_image(damage: str, problem: str, image_config: Callable[..., Path],
                          image_folder: Path, run_cli: Cli, tmp_path: Path) -> None:
    images = copy_images(image_folder, tmp_path)
    broken = images / "vertical" / "v007.png"
    broken.write_bytes(np.random.default_rng(0).bytes(700) if damage == "random-bytes" else b"")
    expected = (broken, "data.train", "1 image(s) cannot be read", problem)
    assert_user_error(run_cli(["validate", image_config(data_path=images)]), *expected)
    assert_inspect_error(*inspect_cli(run_cli, images), *expected)


def test_image_folder_without_class_folders(image_config: Callable[..., Path],
                                            image_folder: Path, run_cli: Cli,
                                            tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in sorted(image_folder.rglob("*.png"))[:6]:
        shutil.copy(path, flat / path.name)
    expected = (flat, "data.train", "the image folder has no class subfolders")
    assert_user_error(run_cli(["validate", image_config(data_path=flat)]), *expected)
    assert_inspect_error(*inspect_cli(run_cli, flat), *expected)


def test_class_folder_with_one_image(image_config: Callable[..., Path], image_folder: Path,
                                     run_cli: Cli, tmp_path: Path) -> None:
    images = copy_images(image_folder, tmp_path)
    (images / "diagonal").mkdir()
    stripes("horizontal", np.random.default_rng(9)).rotate(45).save(images / "diagonal" / "d.png")
    expected = (images, "data.train", "1 class(es) have a single example ('diagonal')")
    assert_user_error(run_cli(["validate", image_config(data_path=images)]), *expected)
    assert_inspect_error(*inspect_cli(run_cli, images), *expected)


def test_symlink_out_of_the_image_folder(image_config: Callable[..., Path], image_folder: Path,
                                         run_cli: Cli, tmp_path: Path) -> None:
    images = copy_images(image_folder, tmp_path)
    outside = tmp_path / "outside.png"
    shutil.copy(image_folder / "horizontal" / "h000.png", outside)
    os.symlink(outside, images / "horizontal" / "link.png")
    expected = (images, "data.train", "the image path 'horizontal/link.png' leads outside the "
                f"data folder {images}")
    assert_user_error(run_cli(["validate", image_config(data_path=images)]), *expected)
    assert_inspect_error(*inspect_cli(run_cli, images), *expected)


def test_dotdot_path_out_of_an_image_manifest(image_config: Callable[..., Path],
                                              image_folder: Path, run_cli: Cli,
                                              tmp_path: Path) -> None:
    folder = copy_images(image_folder, tmp_path / "dataset")
    shutil.copy(image_folder / "horizontal" / "h000.png", tmp_path / "dataset" / "outside.png")
    rows = [(str(p.relative_to(folder)), p.parent.name) for p in sorted(folder.rglob("*.png"))]
    rows.insert(3, ("../outside.png", "horizontal"))
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows, columns=["image", "label"]).to_csv(manifest, index=False)
    expected = (manifest, "data.train",
                f"the image path '../outside.png' leads outside the data folder {folder}")
    assert_user_error(run_cli(["validate", image_config(data_path=manifest)]), *expected)
    assert_inspect_error(*inspect_cli(run_cli, manifest), *expected)


def test_empty_path_cell_in_an_image_manifest(image_config: Callable[..., Path],
                                              image_folder: Path, run_cli: Cli,
                                              tmp_path: Path) -> None:
    """An empty path cell is named by its data row; it read as the manifest's own folder
    ('Is a directory')."""
    folder = copy_images(image_folder, tmp_path / "dataset")
    rows = [(str(p.relative_to(folder)), p.parent.name) for p in sorted(folder.rglob("*.png"))]
    rows.insert(6, ("", "horizontal"))
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows, columns=["image", "label"]).to_csv(manifest, index=False)
    expected = (manifest, "data.train", "1 image(s) cannot be read; first data row 7: the image "
                "path cell is empty", "data.clean.drop_unreadable: true")
    assert_user_error(run_cli(["validate", image_config(data_path=manifest)]), *expected)
    assert_inspect_error(*inspect_cli(run_cli, manifest), *expected)


def saved_images(path: Path, cells: list[dict[str, Any]], labels: list[str],
                 **more_images: list[dict[str, Any]]) -> Path:
    import datasets

    features = {"image": datasets.Image(), "label": datasets.Value("string")}
    features.update({name: datasets.Image() for name in more_images})
    columns = {"image": cells, "label": labels, **more_images}
    datasets.Dataset.from_dict(columns, features=datasets.Features(features)).save_to_disk(
        str(path))
    return path


def image_cells(image_folder: Path) -> tuple[list[dict[str, Any]], list[str]]:
    files = sorted(image_folder.rglob("*.png"))
    cells = [{"bytes": f.read_bytes(), "path": f.name} for f in files]
    return cells, [f.parent.name for f in files]


def test_saved_image_dataset_naming_a_file_outside_its_folder(
        image_config: Callable[..., Path], image_folder: Path, run_cli: Cli,
        tmp_path: Path) -> None:
    import pyarrow as pa

    cells, labels = image_cells(image_folder)
    shutil.copy(image_folder / "horizontal" / "h000.png", tmp_path / "outside.png")
    saved = saved_images(tmp_path / "saved", cells, labels)
    # save_to_disk embeds every image's bytes; an Arrow file written by other tools may instead
    # hold only a path. Rewrite one cell so: no bytes, a path leading out of the folder.
    (arrow,) = saved.glob("*.arrow")
    table = pa.ipc.open_stream(arrow.read_bytes()).read_all()  # in memory, not mapped
    images = table.column("image").to_pylist()
    images[5] = {"bytes": None, "path": "../outside.png"}
    table = table.set_column(0, "image", pa.array(images, type=table.schema.field("image").type))
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    expected = (saved, "data.train",
                f"the image path '../outside.png' leads outside the data folder {saved}")
    assert_user_error(run_cli(["validate", image_config(data_path=saved)]), *expected)
    assert_inspect_error(*inspect_cli(run_cli, saved), *expected)


def test_saved_dataset_with_several_image_columns(image_config: Callable[..., Path],
                                                  image_folder: Path, run_cli: Cli,
                                                  tmp_path: Path) -> None:
    cells, labels = image_cells(image_folder)
    saved = saved_images(tmp_path / "two", cells, labels, mask=cells)
    config = image_config(data_path=saved, data={"image_column": "photo"})
    expected = (saved, "data.image_column", "several image columns ['image', 'mask']",
                "set data.image_column")
    assert_user_error(run_cli(["validate", config]), *expected)
    fixed = image_config(name="fixed", data_path=saved, data={"image_column": "mask"})
    result = run_cli(["validate", fixed])
    assert result.code == 0, result.err[-2000:]
    assert "image-classification, 2 classes" in result.err


# ----------------------------------------------------------------------------------------------
# inspect on good data


def part(report: dict[str, Any], name: str = "train") -> dict[str, Any]:
    details: dict[str, Any] = report["parts"][name]
    return details


def findings(report: dict[str, Any], check: str) -> list[dict[str, Any]]:
    return [finding for finding in report["findings"] if finding["check"] == check]


def inspect_ok(run_cli: Cli, data: Path, *options: str | Path) -> dict[str, Any]:
    result, out = inspect_cli(run_cli, data, *options)
    assert result.code == 0, result.err[-3000:]
    assert "Traceback" not in result.err and f"wrote {out}" in result.err
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def test_inspect_counts_rows_labels_duplicates_leakage_and_empty_texts(
    run_cli: Cli, tmp_path: Path
) -> None:
    base = make_texts(140, seed=1).drop_duplicates("text").iloc[:100].reset_index(drop=True)
    assert len(base) == 100
    repeats = base.iloc[[10, 20, 30]]  # three rows written twice
    blanks = pd.DataFrame({"text": ["", "?! ..."], "label": ["positive", "negative"]})
    train = pd.concat([base, repeats, blanks], ignore_index=True)
    train_path = tmp_path / "train.csv"
    train.to_csv(train_path, index=False)

    fresh = make_texts(40, seed=2)
    fresh = fresh[~fresh["text"].isin(base["text"])].drop_duplicates("text").iloc[:20]
    copied = base.iloc[[50, 60, 70, 80]]  # four training rows that also land in test
    test_path = tmp_path / "test.csv"
    pd.concat([fresh, copied], ignore_index=True).to_csv(test_path, index=False)

    report = inspect_ok(run_cli, train_path, "--test", test_path)
    assert report["task"] == "text-classification"
    assert report["classes"] == ["negative", "positive"]
    assert part(report)["rows"] == 105
    assert part(report, "test")["rows"] == 24
    positives = int((base["label"] == "positive").sum()) + int(
        (repeats["label"] == "positive").sum()) + 1
    assert part(report)["label_counts"] == {"negative": 105 - positives, "positive": positives}
    assert part(report)["duplicates"]["exact"] == 3
    assert part(report)["duplicates"]["exact_with_other_label"] == 0
    assert part(report, "test")["duplicates"]["exact"] == 0
    assert report["leakage_train_test"]["exact"] == 4
    assert sorted(report["leakage_train_test"]["examples"]) == ["51", "61", "71", "81"]
    empty = findings(report, "empty-text")
    assert [(f["severity"], f["count"], f["file"]) for f in empty] == [
        ("warning", 2, str(train_path))]
    assert empty[0]["examples"] == ["104", "105"]
    assert part(report)["missing_values"] == {"text": 1}  # "" is a missing value; "?! ..." is not
    assert [f["count"] for f in findings(report, "duplicates")] == [3]


def test_inspect_reads_parquet(text_table: pd.DataFrame, run_cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "reviews.parquet"
    text_table.to_parquet(path, index=False)
    report = inspect_ok(run_cli, path)
    assert report["task"] == "text-classification"
    assert part(report)["format"] == "parquet"
    assert part(report)["rows"] == 300
    assert part(report)["label_counts"] == {"negative": 150, "positive": 150}


def test_inspect_reads_a_saved_hugging_face_dataset(text_table: pd.DataFrame, run_cli: Cli,
                                                    tmp_path: Path) -> None:
    import datasets

    names = ["awful", "fine", "great"]  # three classes, so the counts tell the codes apart
    codes = np.arange(len(text_table)) % 3
    frame = text_table.assign(label=codes)
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}
    )
    path = tmp_path / "hf-dataset"
    datasets.Dataset.from_pandas(frame, features=features, preserve_index=False).save_to_disk(
        str(path))
    report = inspect_ok(run_cli, path)
    assert part(report)["format"] == "hf-dataset"
    assert report["task"] == "text-classification"
    assert report["classes"] == names
    assert part(report)["rows"] == 300
    assert part(report)["label_counts"] == {"awful": 100, "fine": 100, "great": 100}


def test_inspect_infers_multilabel_from_jsonl_lists(text_table: pd.DataFrame, run_cli: Cli,
                                                    tmp_path: Path) -> None:
    tags = [["action"], ["action", "comedy"], ["comedy"], ["drama", "action"]]
    path = tmp_path / "tags.jsonl"
    with path.open("w") as handle:
        for row, text in enumerate(text_table["text"].iloc[:120]):
            handle.write(json.dumps({"text": text, "label": tags[row % 4]}) + "\n")
    report = inspect_ok(run_cli, path)
    assert report["task"] == "text-multilabel"
    assert report["label_kind"] == "multilabel"
    assert report["classes"] == ["action", "comedy", "drama"]
    assert part(report)["rows"] == 120
    assert part(report)["label_counts"] == {"action": 90, "comedy": 60, "drama": 30}


def test_inspect_infers_regression_from_float_labels(run_cli: Cli, tmp_path: Path) -> None:
    table = numeric_targets(150, seed=4)
    path = bad_csv(tmp_path, table)
    report = inspect_ok(run_cli, path)
    assert report["task"] == "text-regression"
    assert report["label_kind"] == "regression"
    assert report["classes"] == []
    target = part(report)["target"]
    assert target["min"] == pytest.approx(table["label"].min())
    assert target["max"] == pytest.approx(table["label"].max())
    assert target["median"] == pytest.approx(table["label"].median())
    assert "label_counts" not in part(report)


def test_regression_asked_of_class_labels_says_they_are_not_numbers(
    text_config: Callable[..., Path], text_table: pd.DataFrame, text_csv: Path, run_cli: Cli
) -> None:
    """It said 'all 300 rows have no label', sending the user to look for an empty column."""
    expected = (text_csv, "data.label_column",
                f"{len(text_table)} regression target(s) are not numbers (data rows 1, 2, 3",
                "set task: text-classification if the labels are classes")
    result = run_cli(["validate", text_config(task="text-regression")])
    assert_user_error(result, *expected)
    assert "have no label" not in result.err


def test_a_time_that_is_neither_a_date_nor_a_number_is_named(run_cli: Cli, tmp_path: Path) -> None:
    """It was counted as a row with no time at all."""
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"x": rng.normal(size=40), "label": ["a", "b"] * 20,
                          "when": pd.date_range("2024-01-01", periods=40).astype(str)})
    table.loc[6, "when"] = "yesterday"
    table.to_csv(path := tmp_path / "dated.csv", index=False)
    raw = config_dict(tmp_path, data_path=path, backbone="scratch:mlp", name="dated",
                      train_settings={}, data={"split": {"time_column": "when"}})
    result = run_cli(["validate", write_yaml(tmp_path / "dated.yaml", raw)])
    assert_user_error(result, path, "data.split.time_column", "1 value(s) in the time column "
                      "'when' are neither dates nor numbers, e.g. 'yesterday' (data row 7)")


# ----------------------------------------------------------------------------------------------
# what used to pass the checks and go wrong later (a review found each one)


@pytest.mark.parametrize("dtype", ["string", "Int64", "Float64"])
def test_missing_labels_in_a_parquet_files_nullable_column_are_missing(
    dtype: str, text_config: Callable[..., Path], text_table: pd.DataFrame, run_cli: Cli,
    tmp_path: Path
) -> None:
    """pandas' nullable columns miss with `pd.NA`, which read as a class named '<NA>' (and made a
    Float64 target with gaps a classification of single examples)."""
    table = numeric_targets(len(text_table), seed=3) if dtype == "Float64" else text_table.assign(
        label=np.arange(len(text_table)) % 2 if dtype == "Int64" else text_table["label"])
    table["label"] = table["label"].astype(dtype)
    table.loc[[5, 9, 13], "label"] = pd.NA
    path = tmp_path / "nullable.parquet"
    table.to_parquet(path, index=False)
    what = "target (empty or NaN)" if dtype == "Float64" else "label"
    expected = (path, "data.label_column", f"3 row(s) have no {what} (data rows 6, 10, 14)")
    assert_user_error(run_cli(["validate", text_config(data_path=path)]), *expected)
    result, out = inspect_cli(run_cli, path)
    assert_inspect_error(result, out, *expected)
    report = json.loads(out.read_text())
    assert report["label_kind"] == ("regression" if dtype == "Float64" else "classification")
    assert "<NA>" not in json.dumps(report)


def test_a_column_of_numbers_with_a_few_words_is_a_regression_that_names_them(
    text_config: Callable[..., Path], run_cli: Cli, tmp_path: Path
) -> None:
    """A '?' for unknown in three of 300 fractional targets made the column a classification,
    the '?' one of its classes, and the run went on."""
    table = numeric_targets(300, seed=4).astype({"label": object})
    table.loc[[7, 23, 41], "label"] = "?"
    path = bad_csv(tmp_path, table)
    expected = (path, "data.label_column",
                "3 regression target(s) are not numbers (data rows 8, 24, 42)",
                "set task: text-classification if the labels are classes")
    assert_user_error(run_cli(["validate", text_config(data_path=path)]), *expected)
    assert_inspect_error(*inspect_cli(run_cli, path), *expected)
    # Words in more than a few rows are classes, as before.
    table.loc[: len(table) // 5, "label"] = "?"
    assert "regression" not in run_cli(["validate", text_config(data_path=bad_csv(
        tmp_path, table))]).err


def test_multilabel_with_one_label_only(text_config: Callable[..., Path],
                                        text_table: pd.DataFrame, run_cli: Cli,
                                        tmp_path: Path) -> None:
    """It passed both checks, trained, and failed in the test metrics with a traceback."""
    path = tmp_path / "one-tag.jsonl"
    path.write_text("".join(json.dumps({"text": text, "label": ["a"]}) + "\n"
                            for text in text_table["text"].iloc[:60]))
    expected = (path, "data.label_column", "single class ('a'); multilabel needs two or more",
                "write it as a classification column of two classes")
    assert_user_error(run_cli(["validate", text_config(data_path=path)]), *expected)
    assert_inspect_error(*inspect_cli(run_cli, path), *expected)


def test_a_multilabel_label_holding_the_outputs_joiner(text_config: Callable[..., Path],
                                                       text_table: pd.DataFrame, run_cli: Cli,
                                                       tmp_path: Path) -> None:
    """test_predictions.csv and `tunesmith predict` join a row's labels with '|': a label 'x|y'
    read back as two, and the report counted labels wrong that were right."""
    path = tmp_path / "tags.jsonl"
    path.write_text("".join(json.dumps({"text": text, "label": [["a", "x|y"], ["b"]][i % 2]})
                            + "\n" for i, text in enumerate(text_table["text"].iloc[:60])))
    expected = (path, "data.label_column", "the label 'x|y' holds '|', which tunesmith's outputs "
                "join a row's labels with", "rename it (e.g. 'x/y')")
    assert_user_error(run_cli(["validate", text_config(data_path=path)]), *expected)
    assert_inspect_error(*inspect_cli(run_cli, path), *expected)


@pytest.mark.parametrize("modality", ["text", "tabular"])
def test_cells_holding_lists_are_named(modality: str, text_config: Callable[..., Path],
                                       text_table: pd.DataFrame, run_cli: Cli,
                                       tmp_path: Path) -> None:
    """A JSON list in a text or feature column failed with a traceback (unhashable type)."""
    path = tmp_path / "lists.jsonl"
    rows = [{"text": text if row % 7 else text.split(), "size": row % 5,
             "tags": ["x", "y"] if row % 3 == 0 else "x", "label": label}
            for row, (text, label) in enumerate(zip(text_table["text"], text_table["label"],
                                                    strict=True))]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    if modality == "text":
        config = text_config(data_path=path)
        expected = (path, "data.text_column",
                    "column 'text' holds 43 cell(s) with several values, not one (data row 1 "
                    "holds a list)", "join each row's text into one string")
    else:
        config = write_yaml(tmp_path / "table.yaml", config_dict(
            tmp_path, data_path=path, backbone="scratch:mlp", train_settings={"epochs": 1},
            data={"text_column": "absent"}))
        expected = (path, "data.feature_columns",
                    "column 'text' holds 43 cell(s) with several values, not one",
                    "leave it out of data.feature_columns")
    assert_user_error(run_cli(["validate", config]), *expected)
    if modality == "text":
        assert_inspect_error(*inspect_cli(run_cli, path), *expected)


def test_an_image_folder_of_split_folders_is_not_two_classes(
    image_config: Callable[..., Path], image_folder: Path, run_cli: Cli, tmp_path: Path
) -> None:
    root = tmp_path / "dataset"
    for image in sorted(image_folder.rglob("*.png")):  # every third image to the test part
        name = "test" if int("".join(filter(str.isdigit, image.stem)) or 0) % 3 == 0 else "train"
        (root / name / image.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, root / name / image.parent.name / image.name)
    expected = (root, "data.train", "named like parts of a split (test, train), not classes",
                f"set data.train to {root / 'train'}, set data.test to {root / 'test'}")
    assert_user_error(run_cli(["validate", image_config(data_path=root)]), *expected)
    assert_inspect_error(*inspect_cli(run_cli, root), *expected)
    # Done as it says, the classes are the image folder's own.
    fixed = image_config(data_path=root / "train", data={"test": str(root / "test")})
    result = run_cli(["validate", fixed])
    assert result.code == 0, result.err
    said = " ".join((result.out + result.err).split())
    assert f"ok: image-classification, {len(list(image_folder.iterdir()))} classes" in said


def test_a_class_folder_without_image_files_is_named(
    image_config: Callable[..., Path], image_folder: Path, run_cli: Cli, tmp_path: Path
) -> None:
    """The class vanished without a word; and JPEG files named .jfif are read."""
    from PIL import Image

    images = copy_images(image_folder, tmp_path)
    (images / "notes").mkdir()
    (images / "notes" / "readme.txt").write_text("not an image")
    (images / "notes" / "list.csv").write_text("a,b\n")
    expected = (images, "data.train",
                "the class folder 'notes' holds no image files (it holds 1 .csv, 1 .txt)")
    assert_user_error(run_cli(["validate", image_config(data_path=images)]), *expected)
    assert_inspect_error(*inspect_cli(run_cli, images), *expected)
    shutil.rmtree(images / "notes")
    (images / "jfif").mkdir()
    pictures = sorted((images / "horizontal").glob("*.png"))[:5]
    for k, path in enumerate(pictures):
        Image.open(path).convert("RGB").save(images / "jfif" / f"{k}.jfif", format="JPEG")
    assert part(inspect_ok(run_cli, images))["label_counts"]["jfif"] == 5


def test_a_data_format_that_contradicts_the_path(
    image_config: Callable[..., Path], image_folder: Path, text_config: Callable[..., Path],
    text_csv: Path, run_cli: Cli
) -> None:
    cases = [(image_config(data_path=image_folder, data={"format": "csv"}), image_folder,
              "data.format is csv but this is a folder", "point data.train at a csv file"),
             (text_config(data_path=text_csv, data={"format": "image-folder"}), text_csv,
              "data.format is image-folder but this is a file", "point data.train at a folder")]
    for config, path, problem, fix in cases:
        assert_user_error(run_cli(["validate", config]), path, "data.format", problem,
                          "set data.format: auto", fix)


def test_saved_datasets_with_class_label_gaps_and_lists(text_table: pd.DataFrame,
                                                         run_cli: Cli, tmp_path: Path) -> None:
    """A null in a ClassLabel column failed with a traceback; a list of ClassLabels (multilabel)
    gave its classes as codes 0, 1, 2."""
    import datasets

    names = ["awful", "fine", "great"]
    texts = text_table["text"].tolist()[:90]
    codes: list[int | None] = [row % 3 for row in range(90)]
    codes[4] = None
    gaps = tmp_path / "gaps"
    datasets.Dataset.from_dict({"text": texts, "label": codes}, features=datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    ).save_to_disk(str(gaps))
    assert_inspect_error(*inspect_cli(run_cli, gaps), gaps, "data.label_column",
                         "1 row(s) have no label (data rows 5)")
    lists = tmp_path / "lists"
    tags = [[row % 3] if row % 2 else [row % 3, (row + 1) % 3] for row in range(90)]
    datasets.Dataset.from_dict({"text": texts, "label": tags}, features=datasets.Features(
        {"text": datasets.Value("string"),
         "label": datasets.Sequence(datasets.ClassLabel(names=names))})
    ).save_to_disk(str(lists))
    report = inspect_ok(run_cli, lists)
    assert report["task"] == "text-multilabel" and report["classes"] == names
    expected = {name: sum(k in tag for tag in tags) for k, name in enumerate(names)}
    assert part(report)["label_counts"] == expected


def test_an_image_folders_class_names_are_taken_as_written(run_cli: Cli, tmp_path: Path) -> None:
    """Folder names went through a table's number rules: '01' and '1' were merged into one
    class, a folder named 'none' was 'no label', and 40 numbered folders a regression."""
    from PIL import Image

    rng = np.random.default_rng(0)

    def folder(root: Path, names: list[str]) -> Path:
        for name in names:
            (root / name).mkdir(parents=True)
            for k in range(3):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(
                    root / name / f"{k}.png")
        return root

    report = inspect_ok(run_cli, folder(tmp_path / "named", ["01", "1", "2", "none", "NA"]))
    assert report["task"] == "image-classification"
    assert sorted(report["classes"]) == ["01", "1", "2", "NA", "none"]
    assert part(report)["label_counts"] == {name: 3 for name in report["classes"]}
    numbered = inspect_ok(run_cli, folder(tmp_path / "numbered", [str(k) for k in range(40)]))
    assert numbered["task"] == "image-classification" and len(numbered["classes"]) == 40


def test_an_image_whose_name_is_not_utf8_is_named(image_config: Callable[..., Path],
                                                  image_folder: Path, run_cli: Cli,
                                                  tmp_path: Path) -> None:
    """A name from a zip made on Windows ('caf\\xe9.png') failed with a traceback."""
    images = copy_images(image_folder, tmp_path)
    first = sorted((images / "horizontal").glob("*.png"))[0]
    os.rename(bytes(first), os.fsencode(images / "horizontal") + b"/caf\xe9.png")
    expected = (images, "data.train", "the name 'horizontal/caf\ufffd.png' is not UTF-8 text",
                "rename it")
    assert_user_error(run_cli(["validate", image_config(data_path=images)]), *expected)
    assert_inspect_error(*inspect_cli(run_cli, images), *expected)


def test_a_label_that_is_a_json_object_is_named(text_config: Callable[..., Path],
                                                text_table: pd.DataFrame, run_cli: Cli,
                                                tmp_path: Path) -> None:
    """It became a class named "{'name': 'positive'}"."""
    path = tmp_path / "objects.jsonl"
    rows = [{"text": text, "label": {"name": label} if row == 4 else label}
            for row, (text, label) in enumerate(zip(text_table["text"], text_table["label"],
                                                    strict=True))]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    expected = (path, "data.label_column", "the label column 'label' holds 1 cell(s) that are "
                "not a label (data row 5 holds an object)", "write each label as a value")
    assert_user_error(run_cli(["validate", text_config(data_path=path)]), *expected)
    assert_inspect_error(*inspect_cli(run_cli, path), *expected)
