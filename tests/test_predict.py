"""`tunesmith predict` on inputs with bad rows: an unreadable image or a row with a number column
that holds text is reported in its own output row and the rest is predicted; an empty file is an
error."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_wine

from conftest import FinishedRun, config_dict, finish_run
from tunesmith import api
from tunesmith.config import load_config
from tunesmith.errors import TunesmithError


def test_an_unreadable_image_is_reported_in_its_row_and_the_rest_predicted(
    image_run: FinishedRun, image_folder: Path, tmp_path: Path, run_cli: Any
) -> None:
    good = sorted((image_folder / "vertical").iterdir())[:2]
    folder = tmp_path / "photos"
    folder.mkdir()
    for image in good:
        (folder / image.name).write_bytes(image.read_bytes())
    (folder / "broken.png").write_bytes(b"not an image at all")
    (folder / "album.png").mkdir()  # a folder named like an image: its images count, not it
    (folder / "album.png" / good[0].name).write_bytes(good[0].read_bytes())
    out = tmp_path / "predictions.csv"
    result = run_cli(["predict", image_run.run_dir, folder, "--out", out])
    assert result.code == 0, result.err
    table = pd.read_csv(out, keep_default_na=False)
    assert len(table) == 4
    assert not table["input"].str.endswith("album.png").any()
    table = table[~table["input"].str.contains("album.png")]
    broken = table[table["input"].str.endswith("broken.png")].iloc[0]
    assert broken["error"].startswith("cannot read the image") and broken["label"] == ""
    rest = table[table["error"] == ""]
    expected = api.load(image_run.run_dir).predict([str(folder / p.name) for p in good])
    assert sorted(zip(rest["input"].map(lambda p: Path(p).name), rest["label"], strict=True)) == (
        sorted(zip([p.name for p in good], expected, strict=True)))


@pytest.fixture(scope="module")
def table_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[FinishedRun, pd.DataFrame]:
    folder = tmp_path_factory.mktemp("table-run")
    frame = load_wine(as_frame=True).frame.rename(columns={"target": "label"})
    frame.to_csv(folder / "wine.csv", index=False)
    raw = config_dict(folder, data_path=folder / "wine.csv", backbone="scratch:mlp",
                      name="wine", train_settings={"epochs": 20, "precision": "fp32"})
    return finish_run(folder, raw), frame


def test_a_table_row_with_text_in_a_number_column_is_reported_and_the_rest_predicted(
    table_run: tuple[FinishedRun, pd.DataFrame], tmp_path: Path, run_cli: Any
) -> None:
    run, frame = table_run
    rows = frame.drop(columns="label").head(5).astype(object)
    rows.loc[2, "alcohol"] = "lots"
    rows.loc[3, "malic_acid"] = "inf"  # a number, but not one the model can read
    path = tmp_path / "rows.csv"
    rows.to_csv(path, index=False)
    out = tmp_path / "predictions.csv"
    result = run_cli(["predict", run.run_dir, path, "--out", out])
    assert result.code == 0, result.err
    table = pd.read_csv(out, keep_default_na=False, dtype={"label": str})
    assert len(table) == 5
    assert table.loc[2, "error"] == "column 'alcohol': 'lots' is not a number"
    assert table.loc[3, "error"] == "column 'malic_acid': 'inf' is not finite"
    assert table.loc[2, "label"] == table.loc[3, "label"] == ""
    kept = frame.drop(columns="label").head(5).drop(index=[2, 3])
    expected = [str(label) for label in api.load(run.run_dir).predict(kept)]
    assert list(table.drop(index=[2, 3])["label"]) == expected
    assert (table.drop(index=[2, 3])["error"] == "").all()
    # JSONL is strict JSON: the unpredicted rows' label and probabilities are null, not NaN
    out = tmp_path / "predictions.jsonl"
    assert run_cli(["predict", run.run_dir, path, "--out", out]).code == 0

    def strict(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    lines = [json.loads(line, parse_constant=strict) for line in out.read_text().splitlines()]
    assert [line["label"] for line in lines] == [*expected[:2], None, None, *expected[2:]]
    assert lines[3]["p_0"] is None and lines[3]["error"].endswith("is not finite")
    assert abs(sum(lines[0][f"p_{k}"] for k in range(3)) - 1.0) < 1e-5
    # an output named for no format is refused before anything is predicted
    result = run_cli(["predict", run.run_dir, path, "--out", tmp_path / "predictions.json"])
    assert result.code == 2 and "--out" in result.err and ".csv or a .jsonl" in result.err
    assert not (tmp_path / "predictions.json").exists()
    # and so is one that cannot be written (a traceback, after all the predicting)
    (tmp_path / "folder.csv").mkdir()
    for out, problem in ((tmp_path / "folder.csv", "this is a folder"),
                         (path / "x.csv", f"{path} is a file, not a folder")):
        result = run_cli(["predict", run.run_dir, path, "--out", out])
        assert result.code == 2 and "Traceback" not in result.err, result.err
        assert result.err.startswith(f"error: {out}: --out: cannot write the predictions here: "
                                     f"{problem}"), result.err


def test_a_row_that_cannot_be_parsed_is_reported_in_its_row_and_the_rest_predicted(
    table_run: tuple[FinishedRun, pd.DataFrame], text_run: FinishedRun, tmp_path: Path,
    run_cli: Any,
) -> None:
    """A CSV row with more fields than the header, and a JSON line that is broken or not an
    object, each stopped the whole prediction (exit 2); the spec asks for its own output row."""
    run, frame = table_run
    rows = frame.drop(columns="label").head(4)
    # Data row 1 (from 0) has one field too many; then row 0, which pandas read as the index
    # column of every row, shifting each value into its neighbour's column.
    for bad in (1, 0):
        lines = rows.to_csv(index=False).splitlines()
        lines[1 + bad] += ",1.0"
        path = tmp_path / "rows.csv"
        path.write_text("\n".join(lines) + "\n")
        out = tmp_path / "predictions.csv"
        assert run_cli(["predict", run.run_dir, path, "--out", out]).code == 0
        table = pd.read_csv(out, keep_default_na=False, dtype={"label": str})
        assert list(table["input"]) == [f"{path}:{row}" for row in range(4)]
        errors = [""] * 4
        errors[bad] = "row has 14 fields, the header 13"
        assert list(table["error"]) == errors
        expected = [str(label) for label in api.load(run.run_dir).predict(rows.drop(index=[bad]))]
        assert list(table.drop(index=[bad])["label"]) == expected
    # JSON lines, for a text model: the line numbers count the blank line
    path = tmp_path / "reviews.jsonl"
    path.write_text('{"text": "a great film"}\n{"text": broken\n\n[1, 2]\n'
                    '{"text": "an awful plot"}\n')
    out = tmp_path / "reviews.csv"
    assert run_cli(["predict", text_run.run_dir, path, "--out", out]).code == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table["error"]) == [
        "", "line 2 is not valid JSON (Expecting value at column 10)",
        "line 4 is an array, not an object", ""]
    probabilities = api.load(text_run.run_dir).predict_proba(["a great film", "an awful plot"])
    np.testing.assert_allclose(
        table[["p_negative", "p_positive"]].iloc[[0, 3]].to_numpy(dtype=float), probabilities,
        atol=1e-6)
    # a file none of whose rows can be read is still one error
    path.write_text('{"text": broken\n')
    result = run_cli(["predict", text_run.run_dir, path])
    assert result.code == 2 and "line 1 is not valid JSON" in result.err


def test_an_empty_input_file_is_a_clear_error(
    table_run: tuple[FinishedRun, pd.DataFrame], image_run: FinishedRun, tmp_path: Path,
    run_cli: Any,
) -> None:
    run, frame = table_run
    path = tmp_path / "empty.csv"
    frame.drop(columns="label").head(0).to_csv(path, index=False)
    result = run_cli(["predict", run.run_dir, path])
    assert result.code == 2
    assert "empty.csv" in result.err and "header but no rows" in result.err
    # and a folder without images, for an image model
    empty = tmp_path / "no-images"
    empty.mkdir()
    result = run_cli(["predict", image_run.run_dir, empty])
    assert result.code == 2 and "nothing to predict" in result.err and "no-images" in result.err


def test_a_word_for_a_gap_in_a_number_column_is_imputed_as_in_training(
    table_run: tuple[FinishedRun, pd.DataFrame], tmp_path: Path, run_cli: Any
) -> None:
    """Training reads NA, n/a, null, none and nan in a column of numbers as gaps; predict said
    'NA is not a number'. The words give what an empty cell gives."""
    run, frame = table_run
    rows = frame.drop(columns="label").head(6).astype(object)
    words = ["NA", "n/a", "null", "none", "NaN"]
    for row, word in enumerate(words):
        rows.loc[row, "alcohol"] = word
    rows.to_csv(path := tmp_path / "gaps.csv", index=False)
    out = tmp_path / "predictions.csv"
    assert run_cli(["predict", run.run_dir, path, "--out", out]).code == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert "error" not in table.columns  # no row refused
    empty = rows.copy()
    empty.loc[: len(words) - 1, "alcohol"] = None
    expected = api.load(run.run_dir).predict_proba(empty)
    np.testing.assert_allclose(table[[c for c in table.columns if c.startswith("p_")]].to_numpy(),
                               expected, atol=1e-5)


def test_image_mode_l_trains_and_predicts_without_colour(
    tmp_path: Path, tiny_timm_weights: tuple[str, Path], image_folder: Path
) -> None:
    """`data.clean.image_mode: L` was only counted in data_report.json: the model still read
    colour. Now training and the bundle decode to grayscale: an image and its grayscale copy
    are the same input, in the batches trained on and in prediction."""
    from PIL import Image

    from tunesmith.data.image_scan import open_image
    from tunesmith.models.inputs import eval_batches

    name, weights = tiny_timm_weights
    raw = config_dict(tmp_path, data_path=image_folder, backbone=f"timm:{name}?weights={weights}",
                      train_settings={"epochs": 1, "precision": "fp32"}, name="gray",
                      data={"clean": {"image_mode": "L"}})
    run = finish_run(tmp_path, raw)
    prepared = api.prepare(load_config(run.run_dir / "config.yaml"))
    batch = next(iter(eval_batches(prepared.backbone, prepared.data.val.inputs,
                                   batch_size=4).loader))["pixel_values"]
    spec = prepared.backbone.preprocessing()
    pixels = batch * torch.tensor(spec["std"])[:, None, None] + torch.tensor(spec["mean"])[
        :, None, None]
    assert torch.allclose(pixels[:, 0], pixels[:, 1], atol=1e-5)  # grey: every channel alike
    assert torch.allclose(pixels[:, 1], pixels[:, 2], atol=1e-5)

    rng = np.random.default_rng(3)
    colour = tmp_path / "colour.png"
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(colour)
    grey = tmp_path / "grey.png"
    open_image(colour, "L").save(grey)
    predictor = api.load(run.run_dir)
    assert predictor.manifest["inputs"]["image_mode"] == "L"
    both = predictor.predict_proba([str(colour), str(grey)])
    np.testing.assert_allclose(both[0], both[1], atol=1e-6)


def test_prediction_reads_files_written_as_the_training_files_were(
    tmp_path: Path, run_cli: Any
) -> None:
    """A model trained on a semicolon, latin-1 CSV (data.delimiter, data.encoding) could not read
    that same file at prediction, which said to give every feature column the model had."""
    frame = load_wine(as_frame=True).frame.rename(columns={"target": "label"})
    frame = frame.sample(120, random_state=0).reset_index(drop=True)
    frame["origin"] = np.where(np.arange(len(frame)) % 2, "côte", "vallée")
    trained = tmp_path / "wine.csv"
    frame.to_csv(trained, index=False, sep=";", encoding="latin-1")
    raw = config_dict(tmp_path, data_path=trained, backbone="scratch:mlp", name="semi",
                      train_settings={"epochs": 3, "precision": "fp32"},
                      data={"delimiter": ";", "encoding": "latin-1"})
    run = finish_run(tmp_path, raw)
    manifest = json.loads((run.run_dir / "best" / "tunesmith.json").read_text())
    assert (manifest["inputs"]["delimiter"], manifest["inputs"]["encoding"]) == (";", "latin-1")
    rows = frame.drop(columns="label").head(6)
    expected = [str(label) for label in api.load(run.run_dir).predict(rows)]
    probabilities = api.load(run.run_dir).predict_proba(rows)
    comma = tmp_path / "comma.csv"  # and the same rows written the usual way: UTF-8, commas
    rows.to_csv(comma, index=False)
    semicolon = tmp_path / "semicolon.csv"
    rows.to_csv(semicolon, index=False, sep=";", encoding="latin-1")
    for path in (semicolon, comma):
        out = tmp_path / f"{path.stem}-predictions.csv"
        result = run_cli(["predict", run.run_dir, path, "--out", out])
        assert result.code == 0, result.err
        table = pd.read_csv(out, keep_default_na=False, dtype={"label": str})
        assert "error" not in table.columns and list(table["label"]) == expected
        np.testing.assert_allclose(table[[f"p_{c}" for c in (0, 1, 2)]].to_numpy(dtype=float),
                                   probabilities, atol=1e-6)
        assert "training rows did not have" not in result.err  # 'côte' read as written


def test_a_row_whose_output_is_not_finite_is_reported_not_predicted_as_the_first_class(
    table_run: tuple[FinishedRun, pd.DataFrame], tmp_path: Path, run_cli: Any
) -> None:
    """1e300 parses as a finite number but overflows float32: the probabilities were NaN and the
    label the first class, with no word. The row's error names the column and how far out the
    value is; from Python its label is None."""
    run, frame = table_run
    rows = frame.drop(columns="label").head(4).astype(object)
    rows.loc[1, "proline"] = "1e300"
    path = tmp_path / "rows.csv"
    rows.to_csv(path, index=False)
    predictor = api.load(run.run_dir)
    labels = predictor.predict(rows.astype(float))
    assert labels[1] is None and all(label is not None for label in labels[:1] + labels[2:])
    out = tmp_path / "predictions.csv"
    assert run_cli(["predict", run.run_dir, path, "--out", out]).code == 0
    table = pd.read_csv(out, keep_default_na=False, dtype={"label": str})
    assert re.fullmatch(r"column 'proline': '1e300' is 3\.\d+e\+297 standard deviations from "
                        r"the training mean \d+\.\d+ \(at most 1e\+10 are taken\)",
                        table.loc[1, "error"]), table.loc[1, "error"]
    assert table.loc[1, "label"] == "" and table.loc[1, "p_0"] == ""
    assert list(table.drop(index=[1])["label"]) == [str(label) for label in labels if label]


def test_an_image_whose_name_is_not_utf8_gets_its_own_row(
    image_run: FinishedRun, image_folder: Path, tmp_path: Path, run_cli: Any
) -> None:
    import os
    import shutil

    folder = tmp_path / "inputs"
    folder.mkdir()
    good = sorted(image_folder.rglob("*.png"))[:2]
    for path in good:
        shutil.copy(path, folder / path.name)
    shutil.copy(good[0], os.fsencode(folder) + b"/caf\xe9.png")
    out = tmp_path / "predictions.csv"
    result = run_cli(["predict", image_run.run_dir, folder, "--out", out])
    assert result.code == 0, result.err
    table = pd.read_csv(out, keep_default_na=False)
    bad = table[table["error"] != ""]
    assert list(bad["input"]) == [str(folder / "caf\ufffd.png")]
    assert list(bad["error"]) == ["the file name is not UTF-8 text: rename it"]
    assert (table["error"] == "").sum() == 2


def test_the_api_names_an_image_it_cannot_read(
    image_run: FinishedRun, image_folder: Path, tmp_path: Path
) -> None:
    """Predictor.predict failed with Pillow's 'image file is truncated', naming no file."""
    from tunesmith.errors import TunesmithError

    good = sorted(image_folder.rglob("*.png"))[0]
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:60])
    predictor = api.load(image_run.run_dir)
    with pytest.raises(TunesmithError) as raised:
        predictor.predict([str(good), str(cut)])
    assert raised.value.file == str(cut) and "cannot read the image" in raised.value.problem
    assert len(predictor.predict([str(good)])) == 1


def test_a_predicted_folder_follows_linked_folders_and_names_broken_links(
    image_run: FinishedRun, image_folder: Path, tmp_path: Path, run_cli: Any
) -> None:
    """A linked subfolder's images and a link to a missing file were skipped without a row."""
    import os
    import shutil

    folder = tmp_path / "inputs"
    (folder / "a").mkdir(parents=True)
    first = sorted(image_folder.rglob("*.png"))[0]
    shutil.copy(first, folder / "a" / "ok.png")
    linked = image_folder / "horizontal"
    os.symlink(linked, folder / "linked")
    os.symlink(folder / "missing.png", folder / "a" / "gone.png")
    os.symlink(folder, folder / "a" / "loop")  # a cycle is walked once
    out = tmp_path / "predictions.csv"
    result = run_cli(["predict", image_run.run_dir, folder, "--out", out])
    assert result.code == 0, result.err
    table = pd.read_csv(out, keep_default_na=False)
    expected = sorted([str(folder / "a" / "gone.png"), str(folder / "a" / "ok.png")]
                      + [str(folder / "linked" / p.name) for p in linked.glob("*.png")])
    assert sorted(table["input"]) == expected
    errors = dict(zip(table["input"], table["error"], strict=True))
    assert errors.pop(str(folder / "a" / "gone.png")).startswith("cannot read the image")
    assert set(errors.values()) == {""}


def test_a_run_trained_in_bf16_scores_what_its_bundle_predicts(
    tmp_path: Path, tiny_bert: Path, text_csv: Path
) -> None:
    """metrics.json's test scores and test outputs were computed under the bf16 autocast that
    trained the model, while the bundle, `evaluate` and ONNX predict in fp32: what was measured
    was not what shipped (probabilities 3e-3 apart on a MiniLM). They are computed in fp32."""
    settings = {"epochs": 2, "batch_size": 16, "lr": 2e-3, "precision": "bf16"}
    run = finish_run(tmp_path, config_dict(tmp_path, data_path=text_csv,
                                           backbone=f"hf:{tiny_bert}", train_settings=settings,
                                           name="bf16", model={"freeze_embeddings": False}))
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert metrics["train"]["precision"] == "bf16"
    evaluation = api.evaluate(run.run_dir)
    for metric in ("accuracy", "log_loss", "ece"):
        assert evaluation.scores[metric]["value"] == pytest.approx(
            metrics["test"][metric]["value"], rel=1e-6, abs=1e-9), metric
    # the same outputs, row by row, as the bundle gives
    recorded = np.load(run.run_dir / "predictions.npz")
    table = pd.read_csv(run.run_dir / "test_predictions.csv", dtype={"id": str})
    texts = pd.read_csv(text_csv, dtype=str)
    by_id = {str(row): text for row, text in enumerate(texts["text"], start=1)}
    predictor = api.load(run.run_dir)
    outputs = predictor.outputs([by_id[i] for i in table["id"]]) / predictor.temperature
    assert np.abs(outputs - recorded["test_outputs"]).max() < 1e-5  # bf16: 1e-4 apart


def test_images_in_memory_predict_as_their_files(image_run: FinishedRun,
                                                 image_folder: Path) -> None:
    """A PIL image, an array of its pixels and its file's bytes predict as the file does (they
    raised a TypeError from Path()); something that is no image says which input and why."""
    from PIL import Image

    files = sorted((image_folder / "vertical").iterdir())[:2]
    predictor = api.load(image_run.run_dir)
    expected = predictor.predict_proba([str(path) for path in files])
    with Image.open(files[0]) as opened:
        image = opened.copy()
    pixels = np.asarray(image.convert("RGB"))
    given = [image, pixels, files[0].read_bytes(), files[1]]
    found = predictor.predict_proba(given)
    assert np.abs(found - expected[[0, 0, 0, 1]]).max() < 1e-6
    assert predictor.predict(given) == predictor.predict([files[0]] * 3 + [files[1]])
    with pytest.raises(TunesmithError, match="predict takes a list of inputs, not one"):
        predictor.predict(image)
    with pytest.raises(TunesmithError, match="input 1 is an array of float64 shaped"):
        predictor.predict([image, np.zeros((4, 4, 7))])
    with pytest.raises(TunesmithError, match="input 0 holds bytes that are no image file"):
        predictor.predict([b"not an image"])
