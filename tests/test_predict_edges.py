"""Prediction and the bundle as a user meets them: the inputs a user passes by mistake or by habit
(one text instead of a list, a DataFrame, a folder with hidden files, an input file as --out, an
empty text cell, a URL) and a bundle whose tunesmith.json or backbone/ was edited or lost."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import FinishedRun, write_yaml
from tunesmith import api
from tunesmith.errors import TunesmithError
from tunesmith.export.bundle import MANIFEST


def test_predict_never_writes_over_an_input_file(
    text_run: FinishedRun, tmp_path: Path, run_cli: Any
) -> None:
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"text": ["a great film", "an awful plot"]}).to_csv(path, index=False)
    before = path.read_text()
    result = run_cli(["predict", text_run.run_dir, path, "--out", tmp_path / "." / "reviews.csv"])
    assert result.code == 2
    assert "reviews.csv: --out: this is one of the input files" in result.err
    assert path.read_text() == before


def test_one_text_is_refused_and_a_dataframe_is_read_by_its_text_column(
    text_run: FinishedRun,
) -> None:
    """predict("a great film") predicted each of its 12 characters; a DataFrame predicted its
    column names."""
    predictor = api.load(text_run.run_dir)
    with pytest.raises(TunesmithError, match=r"a list of inputs, not one str"):
        predictor.predict("a great film")
    texts = ["a great film", "an awful plot", "superb"]
    frame = pd.DataFrame({"id": [7, 8, 9], "text": texts})
    assert len(predictor.predict(frame)) == 3
    np.testing.assert_array_equal(predictor.predict_proba(frame), predictor.predict_proba(texts))
    # a missing text is the empty text, as an empty cell is for `tunesmith predict`
    np.testing.assert_array_equal(predictor.predict_proba(["superb", None, np.nan]),
                                  predictor.predict_proba(["superb", "", ""]))


def test_a_json_list_or_object_in_the_text_column_is_reported_in_its_row(
    text_run: FinishedRun, tmp_path: Path, run_cli: Any
) -> None:
    """A JSON list was predicted as the text "['a', 'b']"; an empty cell is the empty text."""
    path = tmp_path / "reviews.jsonl"
    path.write_text('{"text": "a great film"}\n{"text": {"a": 1}}\n{"text": ["a", "b"]}\n'
                    '{"text": null}\n{"text": "an awful plot"}\n')
    out = tmp_path / "predictions.csv"
    assert run_cli(["predict", text_run.run_dir, path, "--out", out]).code == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table["error"]) == ["", "column 'text' holds a JSON dict, not a text",
                                    "column 'text' holds a JSON list, not a text", "", ""]
    assert list(table["label"][[1, 2]]) == ["", ""]
    expected = api.load(text_run.run_dir).predict_proba(["a great film", "", "an awful plot"])
    np.testing.assert_allclose(
        table[["p_negative", "p_positive"]].iloc[[0, 3, 4]].to_numpy(dtype=float), expected,
        atol=1e-6)


def test_hidden_files_in_an_image_folder_are_not_inputs(
    image_run: FinishedRun, image_folder: Path, tmp_path: Path, run_cli: Any
) -> None:
    """Training skips hidden files and folders; predict read macOS' ._x.png (not an image) and
    the copies in .ipynb_checkpoints/."""
    images = sorted((image_folder / "vertical").iterdir())[:2]
    folder = tmp_path / "photos"
    (folder / ".ipynb_checkpoints").mkdir(parents=True)
    for image in images:
        shutil.copy(image, folder / image.name)
        shutil.copy(image, folder / ".ipynb_checkpoints" / image.name)
    (folder / f"._{images[0].name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    out = tmp_path / "predictions.csv"
    assert run_cli(["predict", image_run.run_dir, folder, "--out", out]).code == 0
    table = pd.read_csv(out)
    assert [Path(p).name for p in table["input"]] == [image.name for image in images]
    assert "error" not in table.columns


def test_the_columns_stay_when_no_image_can_be_read(
    image_run: FinishedRun, tmp_path: Path, run_cli: Any
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    out = tmp_path / "predictions.csv"
    assert run_cli(["predict", image_run.run_dir, broken, "--out", out]).code == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == ["input", "label", "p_horizontal", "p_vertical", "error"]
    assert table.loc[0, "error"].startswith("cannot read the image")


def test_jsonl_probabilities_are_the_rounded_numbers(
    text_run: FinishedRun, tmp_path: Path, run_cli: Any
) -> None:
    """Rounded in float32, 0.504202 was written as 0.5042020082473755."""
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"text": ["a great film", "an awful plot", "the cast"]}).to_csv(path, index=False)
    out = tmp_path / "predictions.jsonl"
    assert run_cli(["predict", text_run.run_dir, path, "--out", out]).code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    values = [row[f"p_{name}"] for row in rows for name in ("negative", "positive")]
    assert all(value == round(value, 6) for value in values), values
    expected = api.load(text_run.run_dir).predict_proba(["a great film", "an awful plot",
                                                         "the cast"])
    np.testing.assert_allclose(np.reshape(values, (3, 2)), expected, atol=1e-6)


@pytest.mark.parametrize(("edit", "field"), [
    ({"classes": ["negative"]}, "classes"),
    ({"temperature": "warm"}, "temperature"),
    ({"inputs": {}}, "inputs"),
])
def test_a_hand_edited_manifest_is_a_clear_error(
    text_run: FinishedRun, tmp_path: Path, run_cli: Any, text_csv: Path,
    edit: dict[str, Any], field: str,
) -> None:
    bundle = tmp_path / "best"
    shutil.copytree(text_run.run_dir / "best", bundle)
    manifest = json.loads((bundle / MANIFEST).read_text())
    (bundle / MANIFEST).write_text(json.dumps({**manifest, **edit}))
    result = run_cli(["predict", bundle, text_csv])
    assert result.code == 2
    assert f"{bundle / MANIFEST}: {field}: tunesmith.json's {field} does not fit" in result.err


def test_a_bundle_without_its_backbone_folder_says_so(
    text_run: FinishedRun, tmp_path: Path, run_cli: Any, text_csv: Path
) -> None:
    bundle = tmp_path / "best"
    shutil.copytree(text_run.run_dir / "best", bundle, ignore=shutil.ignore_patterns("backbone"))
    result = run_cli(["predict", bundle, text_csv])
    assert result.code == 2
    assert "the bundle has no backbone/ folder" in result.err


def test_inputs_prediction_cannot_read_are_named_for_prediction(
    text_run: FinishedRun, tmp_path: Path, run_cli: Any
) -> None:
    """An empty file, a .txt file, a latin-1 file and a URL: the fixes spoke of the training
    config ("point the config at the real data file", "set data.format", "set data.encoding")
    or of a missing file."""
    (empty := tmp_path / "new.csv").write_text("")
    result = run_cli(["predict", text_run.run_dir, empty])
    assert result.code == 2 and "new.csv: the file is empty" in result.err
    assert "config" not in result.err
    (notes := tmp_path / "notes.txt").write_text("a great film\n")
    result = run_cli(["predict", text_run.run_dir, notes])
    assert result.code == 2 and "cannot tell the format of a .txt file" in result.err
    assert "data.format" not in result.err
    (latin := tmp_path / "latin.csv").write_bytes("text\ncaf\u00e9\n".encode("latin-1"))
    result = run_cli(["predict", text_run.run_dir, latin])
    assert result.code == 2 and "latin.csv: INPUT: the file is not utf-8 text" in result.err
    assert "fix: re-save the file as UTF-8\n" in result.err
    result = run_cli(["predict", text_run.run_dir, "https://example.com/reviews.csv"])
    assert result.code == 2 and "not URLs" in result.err


def test_the_manifest_names_the_library_versions_that_read_the_bundle(
    text_run: FinishedRun,
) -> None:
    from importlib.metadata import version

    manifest = json.loads((text_run.run_dir / "best" / MANIFEST).read_text())
    assert manifest["versions"]["transformers"] == version("transformers")
    # and the backbone as the config named it, beside how the bundle rebuilds it
    config = yaml.safe_load((text_run.run_dir / "config.yaml").read_text())
    assert manifest["backbone"]["spec"] == config["model"]["backbone"]
    assert manifest["backbone"]["spec"].startswith("hf:")
    assert manifest["versions"]["timm"] == version("timm")


def test_a_category_training_never_saw_is_named_and_still_predicted(
    tmp_path: Path, run_cli: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=120)
    pd.DataFrame({"x": x, "colour": rng.choice(["red", "green"], 120),
                  "label": np.where(x > 0, "high", "low")}).to_csv(tmp_path / "t.csv", index=False)
    raw = {"name": "colours", "task": "tabular-classification",
           "data": {"train": str(tmp_path / "t.csv")}, "model": {"backbone": "scratch:mlp"},
           "train": {"epochs": 2}, "seed": 0, "output_dir": str(tmp_path / "runs")}
    assert run_cli(["run", write_yaml(tmp_path / "c.yaml", raw)]).code == 0
    rows = tmp_path / "rows.csv"
    pd.DataFrame({"x": [1.0, -1.0, 2.0], "colour": ["purple", "red", "[b]teal"]}).to_csv(
        rows, index=False)
    result = run_cli(["predict", tmp_path / "runs" / "colours", rows])
    assert result.code == 0, result.err[-2000:]
    assert ("column 'colour': 2 row(s) hold values the training rows did not have ('[b]teal', "
            "'purple')") in " ".join(result.err.split())
    assert len(pd.read_csv(io.StringIO(result.out))) == 3
    known = run_cli(["predict", tmp_path / "runs" / "colours", tmp_path / "t.csv"])
    assert known.code == 0 and "did not have" not in known.err
    # In Python each value is named once per predictor, whoever predicts row by row; a gap
    # where training had none is an empty cell.
    predictor = api.load(tmp_path / "runs" / "colours")
    capsys.readouterr()
    for colour in ("purple", "purple", None):
        predictor.predict(pd.DataFrame({"x": [1.0], "colour": [colour]}))
    said = " ".join(capsys.readouterr().err.split())
    assert said.count("'purple'") == 1 and said.count("an empty cell") == 1


def test_a_multilabel_label_is_given_as_the_metrics_count_it() -> None:
    """The metrics call a label positive where its logit is above 0; prediction compared the
    float32 sigmoid with 0.5, which rounds a logit of -1e-8 to exactly 0.5: positive there."""
    from tunesmith.evaluate.metrics import multilabel_metrics
    from tunesmith.export.predictor import positive

    logits = np.array([[-1e-8, 1e-8, 0.0, -3.0, 2.0]], dtype=np.float32)
    assert bool((torch.sigmoid(torch.from_numpy(logits)) >= 0.5)[0, 0])  # what it was
    assert positive(logits).tolist() == [[False, True, False, False, True]]
    truth = positive(logits).astype(np.float32)
    assert multilabel_metrics(logits, truth)["subset_accuracy"] == 1.0
