"""Files in the shapes users really have, read by `tunesmith.data.sources`.

Each bad file is run through `tunesmith validate`: one message naming the file, the field and the
fix, exit status 2, no traceback. Each good-but-unusual file (a byte-order mark, hidden folders in
an image folder) is read, and what was read is compared with what the test wrote.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from conftest import CliResult, make_texts, stripes
from test_cli import assert_user_error
from tunesmith.data.sources import ID_COLUMN, open_source
from tunesmith.errors import DataError

Cli = Callable[[list[str | Path]], CliResult]
FIX_JSON_LINES = "write one JSON object per line"
ROW = json.dumps({"text": "a great film", "label": "positive"})


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wide console keeps each message on one line, as test_bad_data does."""
    monkeypatch.setenv("COLUMNS", "2000")


def validate(run_cli: Cli, text_config: Callable[..., Path], path: Path) -> CliResult:
    return run_cli(["validate", text_config(data_path=path)])


# ----------------------------------------------------------------------------------------------
# JSON lines


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        # pandas raised TypeError on a list after an object: a traceback
        ("array-line.jsonl", f"{ROW}\n[1, 2]\n", "line 2 is an array, not an object"),
        # read as a column named 0: "column 'label' not found; the file has columns [0]"
        ("string.jsonl", '"just a string"\n', "line 1 is a string, not an object"),
        # one array of objects: read as columns 0, 1 holding whole records
        ("records.json", f"[{ROW}, {ROW}]\n", "line 1 is an array, not an object"),
        # the line number counts the blank line, as an editor does
        ("null-line.jsonl", f"{ROW}\n\nnull\n", "line 3 is null, not an object"),
        ("broken.jsonl", f'{ROW}\n{{"text" "x"}}\n', "line 2 is not valid JSON"),
    ],
    ids=["array-line", "string", "json-array-file", "null-after-blank", "invalid"],
)
def test_json_lines_that_are_not_objects(name: str, content: str, problem: str,
                                         text_config: Callable[..., Path], run_cli: Cli,
                                         tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text(content)
    result = validate(run_cli, text_config, path)
    assert_user_error(result, path, "data.train", problem, FIX_JSON_LINES)


def test_json_keys_that_look_like_numbers_stay_column_names(tmp_path: Path) -> None:
    # When every key reads as a number, pandas' default convert_axes turned "1" and "01" into two
    # columns named 1. Kept as written they are distinct string names, and not mistaken for the
    # positions 0, 1, ... of lines that are arrays.
    path = tmp_path / "numbered.jsonl"
    path.write_text('{"1": "a", "01": "b"}\n{"1": "c", "01": "d"}\n')
    source = open_source(path, field="data.train")
    assert source.columns() == ["1", "01"]
    frame = source.read()
    assert frame["01"].tolist() == ["b", "d"] and frame["1"].tolist() == ["a", "c"]


def test_json_lines_of_blank_lines_have_no_rows(text_config: Callable[..., Path], run_cli: Cli,
                                                tmp_path: Path) -> None:
    path = tmp_path / "blank.jsonl"
    path.write_text("\n\n   \n")
    with pytest.raises(DataError, match="the data has no rows"):  # not "the file has columns []"
        open_source(path, field="data.train").columns()
    result = validate(run_cli, text_config, path)
    assert_user_error(result, path, "data.train", "the data has no rows")
    assert "columns []" not in result.err


# ----------------------------------------------------------------------------------------------
# Parquet


def test_parquet_with_damaged_data_pages(text_config: Callable[..., Path], run_cli: Cli,
                                         tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "damaged.parquet"
    pq.write_table(pa.Table.from_pandas(make_texts(200, seed=1), preserve_index=False), path,
                   compression="NONE")
    data = bytearray(path.read_bytes())
    start = pq.ParquetFile(path).metadata.row_group(0).column(0).data_page_offset
    data[start : start + 64] = b"\xff" * 64  # the first page header; the footer stays intact
    path.write_bytes(bytes(data))
    assert pq.ParquetFile(path).metadata.num_rows == 200  # opening the file still works
    with pytest.raises((OSError, pa.ArrowInvalid)):
        pq.read_table(path)

    result = validate(run_cli, text_config, path)
    assert_user_error(result, path, "data.train", "cannot read the Parquet file",
                      "re-write the file")
    # pyarrow's message spans lines and holds the damaged byte; the user sees error + fix lines.
    assert len(result.err.strip().splitlines()) == 2, result.err
    assert all(char.isprintable() for char in result.err.replace("\n", "")), repr(result.err)


def test_parquet_with_duplicate_column_names(text_config: Callable[..., Path], run_cli: Cli,
                                             tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "twice.parquet"
    rng = np.random.default_rng(0)
    columns = [pa.array(rng.normal(size=40)), pa.array(rng.normal(size=40)),
               pa.array(["a", "b"] * 20)]
    pq.write_table(pa.table(columns, names=["x", "x", "label"]), path)  # Arrow allows it
    result = validate(run_cli, text_config, path)
    # Before, the message blamed data.feature_columns and named no file.
    assert_user_error(result, path, "data.train", "the schema names column(s) ['x'] more than once",
                      "give every column a unique name")


# ----------------------------------------------------------------------------------------------
# a UTF-8 byte-order mark, as Excel and Notepad write it


@pytest.mark.parametrize("encoding", ["utf-8", "UTF8"])
def test_csv_with_a_byte_order_mark(encoding: str, run_cli: Cli, tmp_path: Path) -> None:
    table = make_texts(40, seed=2)
    path = tmp_path / "excel.csv"
    table.to_csv(path, index=False, encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbftext,")
    source = open_source(path, field="data.train", encoding=encoding)
    assert source.columns() == ["text", "label"]  # not '\ufefftext'
    frame = source.read()
    assert list(frame.columns) == [ID_COLUMN, "text", "label"]
    assert frame["text"].tolist() == table["text"].tolist()

    out = tmp_path / "report" / "data_report.json"
    result = run_cli(["inspect", path, "--encoding", encoding, "--out", out])
    assert result.code == 0, result.err[-3000:]
    report = json.loads(out.read_text())
    assert report["task"] == "text-classification"  # not tabular with a column '\ufefftext'
    assert report["parts"]["train"]["rows"] == 40


def test_image_manifest_with_a_byte_order_mark_is_one(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    path.write_bytes(b"\xef\xbb\xbfimage,label\na.png,cat\nb.png,dog\n")
    source = open_source(path, field="data.train")
    assert source.format == "image-manifest"
    frame = source.read()
    assert frame[ID_COLUMN].tolist() == ["a.png", "b.png"]
    assert frame["image"].tolist() == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]


def test_json_lines_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "notepad.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + f"{ROW}\n{ROW}\n".encode())
    frame = open_source(path, field="data.train").read()  # pandas failed on the mark
    assert list(frame.columns) == [ID_COLUMN, "text", "label"]
    assert frame["label"].tolist() == ["positive", "positive"]


# ----------------------------------------------------------------------------------------------
# image folders


def test_image_folder_skips_hidden_folders_and_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    planted = {"horizontal": 3, "vertical": 2}
    for name, count in planted.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            stripes(name, rng).save(root / name / f"{i}.png")
    # What Jupyter, macOS and git leave behind: none of it is a class or an image of one.
    for hidden in [".ipynb_checkpoints/0-checkpoint.png", "horizontal/.ipynb_checkpoints/0.png",
                   "vertical/._0.png", ".git/objects/x.png"]:
        (root / hidden).parent.mkdir(parents=True, exist_ok=True)
        stripes("horizontal", rng).save(root / hidden)

    frame = open_source(root, field="data.train").read()
    assert frame["label"].value_counts().to_dict() == planted
    assert sorted(frame[ID_COLUMN]) == ["horizontal/0.png", "horizontal/1.png",
                                        "horizontal/2.png", "vertical/0.png", "vertical/1.png"]


def test_image_folder_of_hidden_folders_only_has_no_classes(tmp_path: Path) -> None:
    folder = tmp_path / "images" / ".ipynb_checkpoints"
    folder.mkdir(parents=True)
    stripes("vertical", np.random.default_rng(0)).save(folder / "0.png")
    with pytest.raises(DataError, match="the image folder has no class subfolders"):
        open_source(tmp_path / "images", field="data.train").read()

