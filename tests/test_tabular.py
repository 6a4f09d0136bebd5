"""Tabular standardization: statistics from the training part only, a JSON round trip, errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_wine
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from tunesmith.data.tabular import TabularEncoding, column_kinds, fit_tabular
from tunesmith.errors import TunesmithError


def people() -> pd.DataFrame:
    """Two numeric columns (one with gaps), one small and one large categorical (with a gap)."""
    return pd.DataFrame(
        {
            "age": [20.0, 30.0, np.nan, 50.0, 40.0, 30.0],
            "income": [1, 2, 3, 4, 5, 60],
            "city": pd.Series(["Paris", "Lyon", "Paris", None, "Nice", "Paris"], dtype="str"),
            "zip": ["a", "a", "b", "c", "b", "a"],
        }
    )


# ----------------------------------------------------------------------------------------------
# column kinds


def test_column_kinds_on_a_mixed_frame() -> None:
    frame = pd.DataFrame(
        {
            "count": [0, 1, 2, 1],  # few distinct integers: still numeric
            "price": [1.5, np.nan, 2.0, 3.0],
            "numbers_as_object": pd.Series(["1", "2.5", None, "-3e2"], dtype=object),
            "numbers_as_str": pd.Series(["4", np.nan, "5.5", "6"], dtype="str"),
            "words_as_str": pd.Series(["x", "y", np.nan, "x"], dtype="str"),
            "mixed_object": [1, "two", 3, None],
            "flag": [True, False, True, True],
            "flag_as_object": [True, None, False, True],
            "nullable_int": pd.Series([1, None, 3, 4], dtype="Int64"),
        }
    )
    assert frame["numbers_as_str"].dtype == "str" and frame["numbers_as_object"].dtype == object
    assert column_kinds(frame, list(frame.columns)) == {
        "count": "numeric",
        "price": "numeric",
        "numbers_as_object": "numeric",
        "numbers_as_str": "numeric",
        "words_as_str": "categorical",
        "mixed_object": "categorical",
        "flag": "categorical",
        "flag_as_object": "categorical",
        "nullable_int": "numeric",
    }


def test_numbers_written_as_strings_are_encoded_as_numbers() -> None:
    frame = pd.DataFrame({"x": pd.Series(["1", "2", np.nan, "6"], dtype="str")})
    encoding = fit_tabular(frame, ["x"])
    assert encoding.numeric == ["x"] and encoding.categorical == []
    filled = np.array([1.0, 2.0, 2.0, 6.0])  # the median of 1, 2, 6 fills the gap
    expected = (filled - filled.mean()) / filled.std()
    np.testing.assert_allclose(encoding.transform(frame)[:, 0], expected, rtol=1e-6)
    np.testing.assert_array_equal(encoding.transform(frame)[:, 1], [0, 0, 1, 0])


# ----------------------------------------------------------------------------------------------
# numeric columns


@pytest.mark.parametrize(
    ("impute", "fill"), [("median", 30.0), ("mean", 34.0), ("most_frequent", 30.0)]
)
def test_fitted_statistics_are_numpys_on_the_imputed_train_rows(impute: str, fill: float) -> None:
    encoding = fit_tabular(people(), ["age", "income"], impute=impute)
    age, income = encoding.numeric_columns
    filled_age = np.array([20.0, 30.0, fill, 50.0, 40.0, 30.0])
    assert age.fill == fill
    assert age.mean == pytest.approx(filled_age.mean(), abs=1e-12)
    assert age.std == pytest.approx(filled_age.std(ddof=0), abs=1e-12)
    assert age.missing_indicator and not income.missing_indicator
    assert income.mean == pytest.approx(12.5) and income.std == pytest.approx(
        np.std([1, 2, 3, 4, 5, 60])
    )
    assert encoding.feature_names == ["age", "age__missing", "income"]


def test_train_columns_come_out_with_mean_0_and_std_1() -> None:
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"a": rng.normal(50, 7, 200), "b": rng.exponential(3, 200)})
    train.loc[rng.choice(200, 20, replace=False), "a"] = np.nan
    out = fit_tabular(train, ["a", "b"], impute="mean").transform(train)
    assert out.dtype == np.float32 and out.shape == (200, 3)
    scaled = out[:, [0, 2]]  # column 1 is a's missing indicator
    np.testing.assert_allclose(scaled.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(scaled.std(axis=0), 1.0, atol=1e-6)
    assert out[:, 1].sum() == 20


def test_val_gaps_are_filled_with_the_train_median_not_the_vals() -> None:
    train = pd.DataFrame({"x": [1.0, 2.0, 3.0, 10.0, np.nan]})
    val = pd.DataFrame({"x": [np.nan, 5.0, 7.0, 9.0]})  # val's own median would be 7
    encoding = fit_tabular(train, ["x"])
    train_filled = np.array([1.0, 2.0, 3.0, 10.0, 2.5])  # the train median is 2.5
    mean, std = train_filled.mean(), train_filled.std()
    expected = (np.array([2.5, 5.0, 7.0, 9.0]) - mean) / std
    out = encoding.transform(val)
    np.testing.assert_allclose(out[:, 0], expected, rtol=1e-6)
    np.testing.assert_array_equal(out[:, 1], [1, 0, 0, 0])


def test_a_shifted_val_gives_shifted_outputs_not_recentred_ones() -> None:
    train = pd.DataFrame({"x": [1.0, 4.0, 6.0, 9.0]})
    encoding = fit_tabular(train, ["x"])
    shifted = encoding.transform(train + 100.0)
    expected_shift = 100.0 / np.std([1.0, 4.0, 6.0, 9.0])
    np.testing.assert_allclose(shifted - encoding.transform(train), expected_shift, rtol=1e-5)
    assert shifted.mean() == pytest.approx(expected_shift, rel=1e-5)


def test_a_constant_column_is_centred_but_not_scaled() -> None:
    train = pd.DataFrame({"x": [0.1] * 7})
    encoding = fit_tabular(train, ["x"])
    assert encoding.numeric_columns[0].std == 1.0
    np.testing.assert_allclose(
        encoding.transform(pd.DataFrame({"x": [0.1, 2.1]}))[:, 0], [0.0, 2.0], atol=1e-6
    )


def test_wine_matches_sklearns_standard_scaler_fitted_on_the_same_train_rows() -> None:
    wine = load_wine(as_frame=True).frame
    features = [name for name in wine.columns if name != "target"]
    train, test = train_test_split(wine, test_size=0.3, random_state=0, stratify=wine["target"])
    encoding = fit_tabular(train, features)
    assert encoding.numeric == features and encoding.feature_names == features
    scaler = StandardScaler().fit(train[features].to_numpy())
    np.testing.assert_allclose([c.mean for c in encoding.numeric_columns], scaler.mean_, rtol=1e-12)
    np.testing.assert_allclose([c.std for c in encoding.numeric_columns], scaler.scale_, rtol=1e-12)
    for part in (train, test):
        np.testing.assert_allclose(
            encoding.transform(part),
            scaler.transform(part[features].to_numpy()),
            rtol=1e-6,
            atol=1e-6,
        )


# ----------------------------------------------------------------------------------------------
# categorical columns


def test_one_hot_layout_most_frequent_first_with_missing_as_a_category() -> None:
    encoding = fit_tabular(people(), ["city"])
    # Paris 3, then ties of one broken by name; the gap is a category of its own.
    assert encoding.feature_names == ["city=Paris", "city=<missing>", "city=Lyon", "city=Nice"]
    expected = np.array(
        [[1, 0, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0]]
    )
    np.testing.assert_array_equal(encoding.transform(people()), expected)


def test_most_frequent_folds_a_categorical_gap_into_the_top_value() -> None:
    encoding = fit_tabular(people(), ["city"], impute="most_frequent")
    assert encoding.feature_names == ["city=Paris", "city=Lyon", "city=Nice"]
    val = pd.DataFrame({"city": [None, "Nice"]})
    np.testing.assert_array_equal(encoding.transform(val), [[1, 0, 0], [0, 0, 1]])


def test_unseen_categories_give_an_all_zero_one_hot_row() -> None:
    encoding = fit_tabular(people(), ["zip"])
    assert encoding.feature_names == ["zip=a", "zip=b", "zip=c"]
    val = pd.DataFrame({"zip": ["b", "Tokyo", "a"]})
    np.testing.assert_array_equal(encoding.transform(val), [[0, 1, 0], [0, 0, 0], [1, 0, 0]])


def test_unseen_names_new_values_of_one_hot_columns_only() -> None:
    encoding = fit_tabular(pd.DataFrame({"zip": list("aabbc"), "code": list("abcdefghij")[:5]}),
                           ["zip", "code"], max_one_hot=3)
    assert [c.one_hot for c in encoding.categorical_columns] == [True, False]
    rows = pd.DataFrame({"zip": ["b", "Tokyo", "Oslo", "Tokyo"], "code": ["z", "a", "y", "b"]})
    # code is ordinal: training had values outside its kept three too ("other")
    assert encoding.unseen(rows) == {"zip": (["Oslo", "Tokyo"], 3)}
    assert encoding.unseen(rows.iloc[[0]]) == {}


def test_high_cardinality_becomes_one_ordinal_column_by_frequency() -> None:
    train = pd.DataFrame({"zip": list("aaaabbbccde")})
    encoding = fit_tabular(train, ["zip"], max_one_hot=3)
    column = encoding.categorical_columns[0]
    assert not column.one_hot and column.categories == ["a", "b", "c"]
    assert encoding.feature_names == ["zip__ordinal"]
    val = pd.DataFrame({"zip": ["a", "b", "c", "d", "never seen", None]})
    # rank / 3; not kept, unseen and missing all get the "other" code 3 / 3.
    np.testing.assert_allclose(encoding.transform(val)[:, 0], [0, 1 / 3, 2 / 3, 1, 1, 1], rtol=1e-6)


def test_cardinality_equal_to_max_one_hot_is_still_one_hot() -> None:
    encoding = fit_tabular(pd.DataFrame({"c": list("abc")}), ["c"], max_one_hot=3)
    assert encoding.categorical_columns[0].one_hot


def test_3_and_3_point_0_and_the_string_3_are_one_category() -> None:
    """A code column read as ints at training may arrive as floats (a gap) or text (JSON)."""
    train = pd.DataFrame({"code": [3, 7, 3, 7, 7]})
    encoding = fit_tabular(train, ["code"], kinds={"code": "categorical"})
    assert encoding.feature_names == ["code=7", "code=3"]
    val = pd.DataFrame({"code": [3.0, np.nan, "7", 3]}, dtype=object)
    np.testing.assert_array_equal(encoding.transform(val), [[0, 1], [0, 0], [1, 0], [0, 1]])


def test_bools_are_one_hot() -> None:
    encoding = fit_tabular(pd.DataFrame({"flag": [True, False, True]}), ["flag"])
    assert encoding.feature_names == ["flag=True", "flag=False"]
    np.testing.assert_array_equal(
        encoding.transform(pd.DataFrame({"flag": [False, True]})), [[0, 1], [1, 0]]
    )


def test_a_boolean_and_its_word_in_any_case_are_one_category() -> None:
    """A CSV's `true` was the category 'true' and a boolean's (pandas' read_csv of that CSV,
    JSON, Parquet) 'True': the model was given all zeros for the column, silently, when
    training and prediction read the flag differently."""
    from_csv = fit_tabular(pd.DataFrame({"flag": ["true", "false", "true"]}, dtype=object),
                           ["flag"], kinds={"flag": "categorical"})
    from_json = fit_tabular(pd.DataFrame({"flag": [True, False, True]}), ["flag"])
    served = pd.DataFrame({"flag": [False, True, "TRUE", " false", "False"]}, dtype=object)
    expected = [[0, 1], [1, 0], [1, 0], [0, 1], [0, 1]]
    for encoding in (from_csv, from_json):
        assert encoding.feature_names == ["flag=True", "flag=False"]
        np.testing.assert_array_equal(encoding.transform(served), expected)
        assert encoding.unseen(served) == {}
    # a bundle saved before the words were read as booleans holds 'true'/'false': still read
    saved = from_csv.to_dict()
    saved["categorical"][0]["categories"] = ["true", "false"]
    old = TabularEncoding.from_dict(saved)
    np.testing.assert_array_equal(old.transform(served), expected)
    assert old.unseen(pd.DataFrame({"flag": ["maybe"]})) == {"flag": (["maybe"], 1)}


# ----------------------------------------------------------------------------------------------
# saving


def test_json_round_trip_gives_identical_arrays() -> None:
    rng = np.random.default_rng(1)
    train = pd.DataFrame(
        {
            "x": rng.normal(0.3, 1.7, 50),  # floats whose repr must survive exactly
            "y": np.where(rng.random(50) < 0.2, np.nan, rng.random(50)),
            "city": rng.choice(["Paris", "Lyon", "Nice"], 50),
            "zip": [f"z{i}" for i in rng.integers(0, 30, 50)],
        }
    )
    val = train.sample(frac=1.0, random_state=0)
    val.loc[val.index[:3], "city"] = "Rome"
    encoding = fit_tabular(train, ["x", "y", "city", "zip"], max_one_hot=8)
    text = json.dumps(encoding.to_dict())
    loaded = TabularEncoding.from_dict(json.loads(text))
    assert loaded == encoding
    assert loaded.feature_names == encoding.feature_names
    np.testing.assert_array_equal(loaded.transform(val), encoding.transform(val))
    assert type(encoding.to_dict()["numeric"][0]["mean"]) is float


def test_from_dict_rejects_something_else() -> None:
    with pytest.raises(TunesmithError) as caught:
        TabularEncoding.from_dict({"format": "pickle", "version": 1})
    assert caught.value.field == "tabular"
    record = fit_tabular(people(), ["age"]).to_dict()
    del record["numeric"][0]["mean"]
    with pytest.raises(TunesmithError, match="mean"):
        TabularEncoding.from_dict(record)


# ----------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(("column", "count"), [("age", 1), ("city", 1)])
def test_impute_none_rejects_missing_values_naming_column_and_count(
    column: str, count: int
) -> None:
    with pytest.raises(TunesmithError) as caught:
        fit_tabular(people(), [column], impute="none")
    error = caught.value
    assert error.field == "data.clean.impute"
    assert error.fix == "set data.clean.impute to median, mean or most_frequent"
    assert f"'{column}' has {count} missing" in error.problem


def test_impute_none_is_fine_without_gaps_and_still_rejects_them_later() -> None:
    encoding = fit_tabular(people(), ["income", "zip"], impute="none")
    with pytest.raises(TunesmithError, match="'income' has 2 missing"):
        encoding.transform(pd.DataFrame({"income": [1.0, None, None], "zip": ["a", "b", "c"]}))


def test_inf_is_an_error_at_fit_time() -> None:
    train = pd.DataFrame({"x": [1.0, np.inf, 2.0, -np.inf]})
    with pytest.raises(TunesmithError) as caught:
        fit_tabular(train, ["x"])
    assert caught.value.field == "data.feature_columns"
    assert caught.value.fix == "replace or remove inf values"
    assert "'x' has 2 inf" in caught.value.problem


def test_missing_and_empty_columns_are_errors() -> None:
    with pytest.raises(TunesmithError, match="'height'") as caught:
        fit_tabular(people(), ["age", "height"])
    assert caught.value.field == "data.feature_columns"
    encoding = fit_tabular(people(), ["age"])
    with pytest.raises(TunesmithError, match="'age'"):
        encoding.transform(pd.DataFrame({"income": [1]}))
    frame = people().assign(blank=np.nan)
    with pytest.raises(TunesmithError, match="no values") as caught:
        fit_tabular(frame, ["blank"])
    assert caught.value.field == "data.feature_columns"


def test_text_in_a_numeric_column_at_transform_time_is_an_error() -> None:
    encoding = fit_tabular(people(), ["income"])
    with pytest.raises(TunesmithError, match=r"'income'.*'lots'"):
        encoding.transform(pd.DataFrame({"income": ["3", "lots"]}))


def test_words_for_missing_values_in_a_column_of_numbers_are_gaps() -> None:
    """A CSV's cells are text: "NA" (R), "n/a" or "null" in a column of numbers made the whole
    column categorical, one class per distinct number. They are gaps, filled as the empty ones."""
    train = pd.DataFrame({"x": pd.Series(["1", "NA", "3", " n/a ", "10", "null"], dtype=object),
                          "kind": ["a", "NA", "b", "a", "b", "a"]})  # a category may be "NA"
    assert column_kinds(train, ["x", "kind"]) == {"x": "numeric", "kind": "categorical"}
    encoding = fit_tabular(train, ["x", "kind"])
    filled = np.array([1.0, 3.0, 3.0, 3.0, 10.0, 3.0])  # the median of 1, 3, 10 in the gaps
    out = encoding.transform(pd.DataFrame({"x": ["NA", "10"], "kind": ["NA", "a"]}))
    np.testing.assert_allclose(out[:, 0], (np.array([3.0, 10.0]) - filled.mean()) / filled.std(),
                               rtol=1e-6)
    np.testing.assert_array_equal(out[:, 1], [1, 0])  # x's missing indicator
    assert encoding.categorical == ["kind"] and "NA" in encoding.categorical_columns[0].categories
    with pytest.raises(TunesmithError, match="imputation is off"):
        fit_tabular(train, ["x"], impute="none")
    words = pd.DataFrame({"x": pd.Series(["NA", "none"], dtype=object)})
    assert column_kinds(words, ["x"]) == {"x": "categorical"}  # nothing but words: no numbers
