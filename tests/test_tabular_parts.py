"""Tabular val and test parts go through the encoding fitted on train before any training.

A value that encoding cannot take (text or inf in a numeric column, a gap with imputation off) in
a given val or test file, or inf or a gap in a part split off the training file, stops `validate`
and `run` with one message naming the file, the column's field, the data row and the fix; it used
to pass `validate` and stop `run` after the first trial, naming no file. (Text among the numbers
of the training file makes the column categories, whichever part holds it.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from conftest import CliResult, config_dict, write_yaml
from test_bad_data import assert_inspect_error, inspect_cli
from test_cli import assert_user_error
from tunesmith.config import load_config
from tunesmith.data import TaskData, load_task_data
from tunesmith.errors import DataError, TunesmithError

Cli = Callable[[list[str | Path]], CliResult]

NOT_NUMBERS = "use numbers (or leave the cell empty) in this column"


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """One message per line, so the assertions see the words, not where Rich broke them."""
    monkeypatch.setenv("COLUMNS", "2000")


def numbers(rows: int, *, seed: int) -> pd.DataFrame:
    """Two numeric features (x1 as objects, so a test can write text into it), labels 0/1."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "x1": rng.normal(size=rows).round(3).astype(object),
            "x2": rng.normal(size=rows).round(3),
            "label": [0, 1] * (rows // 2),
        }
    )


def write_config(folder: Path, train: pd.DataFrame, **data: Any) -> Path:
    """A one-epoch scratch MLP config on `train`; a data key whose value is a DataFrame (val,
    test) is written to `<key>.csv` next to it."""
    train.to_csv(folder / "tr.csv", index=False)
    for key, value in list(data.items()):
        if isinstance(value, pd.DataFrame):
            value.to_csv(path := folder / f"{key}.csv", index=False)
            data[key] = str(path)
    raw = config_dict(
        folder,
        data_path=folder / "tr.csv",
        backbone="scratch:mlp",
        train_settings={"epochs": 1},
        name="t",
        data={"label_column": "label", **data},
    )
    return write_yaml(folder / "t.yaml", raw)


def load(config: Path) -> TaskData:
    return load_task_data(load_config(config))


def with_value(table: pd.DataFrame, rows: list[int], value: object) -> pd.DataFrame:
    changed = table.copy()
    changed.loc[rows, "x1"] = value
    return changed


# ----------------------------------------------------------------------------------------------
# a given val or test file


@pytest.mark.parametrize("part", ["test", "val"])
@pytest.mark.parametrize(
    ("value", "problem", "fix"),
    [
        (
            "about 3",
            "column 'x1' is numeric in the training part but has 1 value(s) that are not "
            "numbers, e.g. 'about 3' (data row 7)",
            NOT_NUMBERS,
        ),
        ("inf", "column 'x1' has 1 inf value(s) (data row 7)", "replace or remove inf values"),
    ],
    ids=["text", "inf"],
)
def test_a_bad_value_in_a_given_file_stops_validate_and_run_before_training(
    part: str, value: str, problem: str, fix: str, run_cli: Cli, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path, numbers(30, seed=0), **{part: with_value(numbers(10, seed=1), [6], value)}
    )
    file = tmp_path / f"{part}.csv"
    expected = (f"error: {file}: data.feature_columns: {problem}", f"fix: {fix}")
    assert_user_error(run_cli(["validate", config]), *expected)
    assert_user_error(run_cli(["run", config]), *expected)
    assert not (tmp_path / "runs" / "t" / "trials").exists()
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("part", ["test", "val"])
def test_a_number_too_far_out_in_a_given_file_is_refused_naming_its_row(
    part: str, run_cli: Cli, tmp_path: Path
) -> None:
    """1e300 is a finite number, but scaled by the training rows' statistics it overflows the
    network's float32: the run trained, then crashed with a traceback while scoring the test part
    (ECE's bins of NaN), or called the validation loss of NaN a diverged training ("lower
    train.lr"). A value more than 1e10 standard deviations out is refused before training."""
    config = write_config(
        tmp_path, numbers(30, seed=0), **{part: with_value(numbers(10, seed=1), [6], "1e300")}
    )
    file = tmp_path / f"{part}.csv"
    expected = (f"error: {file}: data.feature_columns: column 'x1' has 1 value(s) too far out "
                "for the model, e.g. 1e+300: ", " standard deviations from the training mean ",
                "(at most 1e+10 are taken) (data row 7)", "fix: correct or remove it")
    assert_user_error(run_cli(["validate", config]), *expected)
    assert_user_error(run_cli(["run", config]), *expected)
    assert not (tmp_path / "runs").exists()
    # 1e9 standard deviations out is kept: no real value is refused for being large
    far = float(numbers(30, seed=0)["x1"].astype(float).std()) * 1e9
    config = write_config(
        tmp_path, numbers(30, seed=0), **{part: with_value(numbers(10, seed=1), [6], far)})
    assert run_cli(["validate", config]).code == 0


@pytest.mark.parametrize(
    ("value", "problem", "fix"),
    [
        ("about 3", "column 'x1' is numeric in the training part but has 1 value(s) that are not "
         "numbers, e.g. 'about 3' (data row 7)", NOT_NUMBERS),
        ("inf", "column 'x1' has 1 inf value(s) (data row 7)", "replace or remove inf values"),
    ],
    ids=["text", "inf"],
)
def test_inspect_finds_the_bad_value_in_a_test_file_that_run_refuses(
    value: str, problem: str, fix: str, run_cli: Cli, tmp_path: Path
) -> None:
    """`inspect DATA --test FILE` says what `run` would stop on, as a fatal finding (exit 1), and
    a clean test file of the same shape passes."""
    train = tmp_path / "tr.csv"
    numbers(30, seed=0).to_csv(train, index=False)
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    numbers(10, seed=1).to_csv(good, index=False)
    with_value(numbers(10, seed=1), [6], value).to_csv(bad, index=False)
    result, out = inspect_cli(run_cli, train, "--test", good)
    assert result.code == 0, result.err[-3000:]
    assert not [f for f in json.loads(out.read_text())["findings"] if f["severity"] == "fatal"]
    assert_inspect_error(*inspect_cli(run_cli, train, "--test", bad), bad,
                         "data.feature_columns", problem, fix)


@pytest.mark.parametrize("part", ["test", "val"])
def test_the_error_names_the_file_field_and_first_bad_row(part: str, tmp_path: Path) -> None:
    config = write_config(
        tmp_path, numbers(30, seed=0), **{part: with_value(numbers(10, seed=1), [4, 8], "abc")}
    )
    with pytest.raises(DataError) as caught:
        load(config)
    error = caught.value
    assert error.file == str(tmp_path / f"{part}.csv")
    assert error.field == "data.feature_columns"
    assert error.fix == NOT_NUMBERS
    assert error.problem.endswith(
        "2 value(s) that are not numbers, e.g. 'abc' (first at data row 5)"
    )


def test_a_gap_in_the_test_file_with_imputation_off_names_file_and_row(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        numbers(30, seed=0),
        test=with_value(numbers(10, seed=1), [2], None),
        clean={"impute": "none"},
    )
    with pytest.raises(DataError) as caught:
        load(config)
    error = caught.value
    assert (error.file, error.field) == (str(tmp_path / "test.csv"), "data.clean.impute")
    assert error.problem == "column 'x1' has 1 missing value(s) and imputation is off (data row 3)"


# ----------------------------------------------------------------------------------------------
# parts split off the training file, and the training part itself


@pytest.mark.parametrize("part", ["test", "valid", "train"])
def test_a_word_in_a_split_off_part_reads_as_one_in_the_training_part(
    part: str, tmp_path: Path
) -> None:
    """The training file decides a column's kind, whichever part its rows are split into (a
    word in a split-off part stopped the run, one in the training part made categories)."""
    table = numbers(30, seed=0)
    table["part"] = ["train"] * 20 + ["valid"] * 4 + ["test"] * 6
    bad = int(np.flatnonzero(table["part"] == part)[1])
    data = load(write_config(tmp_path, with_value(table, [bad], "abc"), split={"column": "part"},
                             feature_columns=["x1", "x2"]))
    assert data.tabular is not None and data.tabular.categorical == ["x1"]
    assert data.report.cleaning["mostly_numbers_read_as_categories"]["x1"] == {
        "text_values": 1, "example": "abc", "row": str(bad + 1)}


def test_inf_in_the_training_part_names_the_training_file_not_the_config(tmp_path: Path) -> None:
    config = write_config(tmp_path, with_value(numbers(30, seed=0), [11], "inf"))
    with pytest.raises(DataError) as caught:
        load(config)
    error = caught.value
    assert (error.file, error.field) == (str(tmp_path / "tr.csv"), "data.feature_columns")
    assert error.problem == "column 'x1' has 1 inf value(s) (data row 12)"


# ----------------------------------------------------------------------------------------------
# what was already fine stays so


def test_an_unseen_category_in_the_test_file_encodes_as_all_zeros(tmp_path: Path) -> None:
    train = numbers(30, seed=0).assign(colour=["red", "blue", "green"] * 10)
    test = numbers(10, seed=1).assign(colour=["red"] * 9 + ["purple"])
    data = load(write_config(tmp_path, train, test=test))
    assert data.tabular is not None and data.test.features is not None
    names = data.tabular.feature_names
    one_hot = [i for i, name in enumerate(names) if name.startswith("colour=")]
    encoded = data.tabular.transform(data.test.features)[:, one_hot]
    red = names.index("colour=red") - one_hot[0]
    assert encoded[:9].tolist() == [[1.0 if i == red else 0.0 for i in range(3)]] * 9
    assert encoded[9].tolist() == [0.0, 0.0, 0.0]


def test_a_feature_column_missing_from_the_test_file_names_that_file(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, numbers(30, seed=0), test=numbers(10, seed=1).drop(columns=["x2"])
    )
    with pytest.raises(TunesmithError) as caught:
        load(config)
    assert (caught.value.file, caught.value.field) == (
        str(tmp_path / "test.csv"),
        "data.feature_columns",
    )
    assert "'x2' not found" in caught.value.problem
    # the fix is the file, not the config, which names the training data's columns
    assert caught.value.fix == "give data.test the columns of data.train (add 'x2')"


def test_a_column_of_numbers_with_a_stray_text_value_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One '12 kg' made a column of numbers one category per distinct number, without a word."""
    train = with_value(numbers(60, seed=0), [9], "12 kg")
    train["city"] = ["Paris", "Lyon", "Nice"] * 20  # categories by nature: not flagged
    data = load(write_config(tmp_path, train))
    assert data.tabular is not None and "x1" in data.tabular.categorical
    flagged = data.report.cleaning["mostly_numbers_read_as_categories"]
    assert "10" in data.train.ids  # the split (seed 0) put the stray value in the training part
    assert flagged == {"x1": {"text_values": 1, "example": "12 kg", "row": "10"}}
    assert "column 'x1' of" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# tables are not deduplicated by default


def passengers(rows: int, *, seed: int) -> pd.DataFrame:
    """Two features of few values (6 combinations) and a label they only partly decide."""
    rng = np.random.default_rng(seed)
    sex = rng.choice(["female", "male"], size=rows)
    pclass = rng.choice([1, 2, 3], size=rows)
    likely = np.where(sex == "female", 0.8, 0.2) - 0.1 * (pclass - 2)
    return pd.DataFrame({"sex": sex, "pclass": pclass,
                         "survived": (rng.random(rows) < likely).astype(int)})


def test_a_table_whose_rows_share_feature_values_trains_on_every_row(tmp_path: Path) -> None:
    """Rows of a table with 6 feature combinations repeat each other and the test part's: by
    default a table's duplicates and test overlap are kept (its frequencies are the data), where
    dropping them emptied the train part ("cleaning left the train part empty"). Set explicitly,
    the drops still apply."""
    table = passengers(300, seed=0)
    config = write_config(tmp_path, table.rename(columns={"survived": "label"}),
                          split={"val": 0.1, "test": 0.2, "seed": 0})
    data = load(config)
    assert len(data.train) + len(data.val) + len(data.test) == 300
    assert len(data.test) == 60 and len(data.val) == 24
    assert not {"duplicates_dropped", "test_overlap_dropped"} & set(data.report.cleaning)
    resolved = load_config(config)
    assert (resolved.data.clean.drop_duplicates, resolved.data.clean.drop_test_overlap) == (
        "auto", "auto")
    assert resolved.data.clean.resolved("tabular").drop_test_overlap == "none"
    assert resolved.data.clean.resolved("text").drop_test_overlap == "near"
    assert resolved.data.clean.resolved("image").drop_duplicates is True
    # asked for, the table's repeats go, and then its train part is empty
    config = write_config(tmp_path, table.rename(columns={"survived": "label"}),
                          split={"val": 0.1, "test": 0.2, "seed": 0},
                          clean={"drop_duplicates": True})
    with pytest.raises(TunesmithError, match=r"cleaning left the (train|val) part empty"):
        load(config)
    config = write_config(tmp_path, table.rename(columns={"survived": "label"}),
                          split={"val": 0.1, "test": 0.2, "seed": 0},
                          clean={"drop_test_overlap": "exact"})
    with pytest.raises(TunesmithError, match=r"cleaning left the (train|val) part empty"):
        load(config)


def test_inspect_reads_a_table_saved_with_its_index_as_run_does(tmp_path: Path) -> None:
    """pandas' to_csv writes the index under an empty name, which the rows read as
    'Unnamed: 0': inspect looked for a column '' and stopped ("column '' not found")."""
    from tunesmith import api

    path = tmp_path / "indexed.csv"
    numbers(30, seed=0).to_csv(path)  # index=True, as pandas does by default
    report = api.inspect(path).to_json()
    assert report["parts"]["train"]["column_names"][0] == "Unnamed: 0"
    assert not [f for f in report["findings"] if f["severity"] == "fatal"]
    # that column holds the rows' numbers: named, as an id counted from 1 is
    counted = [f for f in report["findings"] if f["check"] == "row-numbers"]
    assert len(counted) == 1 and "'Unnamed: 0'" in counted[0]["message"]
    assert counted[0]["field"] == "data.feature_columns"
    with_id = numbers(30, seed=0).assign(id=range(1, 31))
    with_id.to_csv(path, index=False)
    counted = [f for f in api.inspect(path).to_json()["findings"] if f["check"] == "row-numbers"]
    assert len(counted) == 1 and "'id'" in counted[0]["message"]
    with_id.assign(id=[*range(1, 30), 99]).to_csv(path, index=False)  # not every row's number
    assert not [f for f in api.inspect(path).to_json()["findings"] if f["check"] == "row-numbers"]
    config = write_config(tmp_path, pd.read_csv(path))
    assert load(config).tabular is not None


# ----------------------------------------------------------------------------------------------
# decimal commas


def test_a_semicolon_file_with_decimal_commas_reads_its_numbers(tmp_path: Path) -> None:
    """A spreadsheet's European CSV (fields split by `;`, 13,74 for 13.74) trained every number
    column as a 16-value ordinal category without a word; and without data.delimiter the error
    was "data row 1 has 4 fields, the header 1", not the delimiter."""
    from tunesmith.data.tabular import fit_tabular
    from tunesmith.data.task import comma_numbers

    plain = numbers(40, seed=3)
    plain["x1"] = plain["x1"].astype(float) * 1000  # some past a thousand: 1.234,5
    european = plain.astype(object).copy()
    for column in ("x1", "x2"):
        european[column] = [f"{value:,.3f}".replace(",", "_").replace(".", ",").replace("_", ".")
                            for value in plain[column]]
    assert any("." in value and "," in value for value in european["x1"])
    path = tmp_path / "semi.csv"
    european.to_csv(path, sep=";", index=False)
    config = write_config(tmp_path, plain)  # the same table with points, as the reference
    reference = load(config)
    raw = load_config(config)
    semi = raw.data.model_copy(update={"train": path, "delimiter": ";"})
    data = load_task_data(raw.updated(data=semi))
    assert data.tabular is not None and reference.tabular is not None
    assert data.tabular.numeric == ["x1", "x2"] == reference.tabular.numeric
    for ours, theirs in zip(data.tabular.numeric_columns, reference.tabular.numeric_columns,
                            strict=True):
        assert ours.decimal_comma and ours.mean == pytest.approx(theirs.mean, rel=1e-9)
    # prediction reads such a file too, and a point-decimal one, for a model trained so
    encoding = fit_tabular(european, ["x1", "x2"], decimal_comma=True)
    assert np.allclose(encoding.transform(european), encoding.transform(plain))
    # without the delimiter: said so
    with pytest.raises(TunesmithError) as caught:
        load_task_data(raw.updated(data=raw.data.model_copy(update={"train": path})))
    assert caught.value.field == "data.delimiter" and caught.value.fix == "set data.delimiter: ';'"
    # a comma file's quoted 1,234 groups thousands: never a decimal comma there
    assert fit_tabular(pd.DataFrame({"n": ["1,234", "2,345", "3,456"]}), ["n"]).categorical == [
        "n"]
    assert comma_numbers(pd.Series(["1.234,5", "13,74", "x,1", "7"])).tolist() == [
        "1234.5", "13.74", "x,1", "7"]


def test_a_stray_word_in_a_number_column_reads_the_same_whichever_part_it_is_split_into(
    tmp_path: Path
) -> None:
    """'12 kg' among numbers made the column categories (with a warning) when the split put its
    row in train, and stopped the run when it put it in test: the split seed decided. The kind
    is read off the whole training file now; the statistics stay train's."""
    table = with_value(numbers(40, seed=4), [12], "12 kg")
    seen = {}
    for seed in range(20):
        config = write_config(tmp_path, table, split={"val": 0.2, "test": 0.2, "seed": seed})
        data = load(config)
        part = next(name for name in ("train", "val", "test")
                    if "13" in getattr(data, name).ids)
        assert data.tabular is not None and data.tabular.categorical == ["x1"], (seed, part)
        stray = data.report.cleaning["mostly_numbers_read_as_categories"]["x1"]
        assert stray == {"text_values": 1, "example": "12 kg", "row": "13"}
        seen[part] = seed
        if {"train", "test"} <= set(seen):
            break
    assert {"train", "test"} <= set(seen), seen


def test_a_semicolon_files_regression_target_with_decimal_commas_is_numbers(
    tmp_path: Path
) -> None:
    """A `;` file's target of 13,74 read as text: a classification of as many classes as
    distinct values (or a run stopped on its not-numbers), where it is a regression."""
    rng = np.random.default_rng(5)
    table = numbers(40, seed=5).drop(columns="label")
    target = rng.normal(50, 20, size=40).round(2)
    table["label"] = [f"{value:.2f}".replace(".", ",") for value in target]
    path = tmp_path / "semi.csv"
    table.to_csv(path, sep=";", index=False)
    raw = load_config(write_config(tmp_path, numbers(40, seed=5)))
    data = load_task_data(raw.updated(data=raw.data.model_copy(
        update={"train": path, "delimiter": ";"})))
    assert data.spec.kind == "regression"
    rows = [int(i) - 1 for i in data.train.ids]
    assert data.train.labels == pytest.approx(target[rows].tolist())
