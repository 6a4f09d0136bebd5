"""The evaluate and report stages of a real run: baselines fitted on the same split, calibration
the bundle applies, the predictions the report reads, `tunesmith evaluate` and `tunesmith report`,
and the page opened in a real browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.ensemble import HistGradientBoostingClassifier

from conftest import FinishedRun, config_dict, finish_run, logged
from tunesmith import api
from tunesmith.config import load_config


def wine_raw(folder: Path, csv: Path, name: str, **train: Any) -> dict[str, Any]:
    return config_dict(folder, data_path=csv, backbone="scratch:mlp", name=name,
                       train_settings={"epochs": 60, "precision": "fp32", **train})


@pytest.fixture(scope="module")
def wine_run(tmp_path_factory: pytest.TempPathFactory, wine_csv: Path) -> FinishedRun:
    folder = tmp_path_factory.mktemp("wine-run")
    return finish_run(folder, wine_raw(folder, wine_csv, "wine"))


@pytest.fixture(scope="module")
def weak_run(tmp_path_factory: pytest.TempPathFactory, wine_csv: Path) -> FinishedRun:
    """A network that barely trains (a learning rate of 1e-7, one epoch): boosted trees beat it,
    and its validation rows are not all right, so a temperature is fitted."""
    folder = tmp_path_factory.mktemp("weak-run")
    return finish_run(folder, wine_raw(folder, wine_csv, "weak", lr=1e-7, epochs=1))


def metrics_of(run: FinishedRun) -> dict[str, Any]:
    return dict(json.loads((run.run_dir / "metrics.json").read_text()))


def test_a_table_run_scores_the_majority_and_boosted_trees_on_the_same_split(
    wine_run: FinishedRun,
) -> None:
    metrics = metrics_of(wine_run)
    prepared = api.prepare(load_config(wine_run.run_dir / "config.yaml"))
    data = prepared.data
    train_y = np.asarray(data.targets(data.train))
    test_y = np.asarray(data.targets(data.test))
    baselines = metrics["baselines"]
    assert set(baselines) == {"majority", "gradient_boosting"}  # no probe of a scratch network
    majority = np.bincount(train_y).argmax()
    assert baselines["majority"]["accuracy"] == pytest.approx(np.mean(test_y == majority))
    trees = HistGradientBoostingClassifier(random_state=0).fit(
        np.asarray(prepared.inputs(data.train)), train_y)
    predicted = trees.predict(np.asarray(prepared.inputs(data.test)))
    boosted = baselines["gradient_boosting"]
    assert boosted["accuracy"] == pytest.approx(np.mean(predicted == test_y))
    # each baseline carries the model's paired difference from it on both parts
    model = metrics["test"]["accuracy"]["value"]
    gap = boosted["difference"]["accuracy"]
    assert gap["value"] == pytest.approx(model - boosted["accuracy"])
    assert gap["ci95"][0] <= gap["value"] <= gap["ci95"][1]
    assert set(boosted["val_difference"]) >= {"accuracy", "log_loss", "auroc"}
    # the fuller metrics of the final model, each with its interval
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "log_loss", "auroc", "ece"):
        low, high = metrics["test"][name]["ci95"]
        assert low <= metrics["test"][name]["value"] <= high, name
    assert sum(row["support"] for row in metrics["per_class"]) == metrics["test_rows"]


def test_a_temperature_fitted_on_overconfident_outputs_undoes_the_overconfidence() -> None:
    from tunesmith.evaluate.calibration import calibrate, fit_temperature

    rng = np.random.default_rng(0)
    honest = rng.normal(0, 1.5, size=(5000, 4))  # labels drawn from softmax(honest): calibrated
    probabilities = np.exp(honest) / np.exp(honest).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(4, p=row) for row in probabilities])
    assert fit_temperature(3.0 * honest, labels) == pytest.approx(3.0, rel=0.1)
    found = calibrate(3.0 * honest, labels)
    assert found.val_ece_after < 0.5 * found.val_ece_before
    # every row right: the log loss falls as T goes to 0, so no temperature is fitted
    assert fit_temperature(np.eye(4)[labels] * 5.0, labels) == 1.0
    # a best beyond the range is approached by its end: T was left at 1 (val log loss 42 where
    # 20 gives 2.1, and 0.05 lowers that of tiny logits)
    for scale, end in ((200.0, np.exp(3.0)), (0.01, np.exp(-3.0))):  # "20" and "0.05"
        right = rng.random(len(labels)) < (0.8 if scale > 1 else 0.9)
        predicted = np.where(right, labels, (labels + 1) % 4)
        logits = np.eye(4)[predicted] * scale
        assert fit_temperature(logits, labels) == pytest.approx(end)
        found = calibrate(logits, labels)
        assert found.fitted and found.temperature == pytest.approx(end)


def test_the_temperature_fitted_on_validation_is_what_the_bundle_applies(
    weak_run: FinishedRun,
) -> None:
    wine_run = weak_run
    metrics = metrics_of(wine_run)
    temperature = metrics["calibration"]["temperature"]
    manifest = json.loads((wine_run.run_dir / "best" / "tunesmith.json").read_text())
    assert manifest["temperature"] == pytest.approx(temperature) and temperature > 0
    # fitted on validation: no other temperature gives the val outputs a lower log loss
    arrays = np.load(wine_run.run_dir / "predictions.npz")
    assert temperature != 1.0
    raw_val = arrays["val_outputs"] * temperature
    targets = arrays["val_targets"].astype(int)

    def val_log_loss(t: float) -> float:
        scaled = raw_val / t
        scaled = scaled - np.logaddexp.reduce(scaled, axis=1, keepdims=True)
        return float(-scaled[np.arange(len(targets)), targets].mean())

    assert all(val_log_loss(temperature) <= val_log_loss(temperature * f) + 1e-9
               for f in (0.5, 0.8, 0.95, 1.05, 1.25, 2.0))
    assert val_log_loss(temperature) <= val_log_loss(1.0) + 1e-9  # never worse than none
    # the bundle's probabilities are the softmax of its outputs over the temperature, and the
    # test log loss in metrics.json is theirs
    predictor = api.load(wine_run.run_dir)
    data = api.prepare(load_config(wine_run.run_dir / "config.yaml")).data
    probabilities = predictor.predict_proba(data.test.features)
    outputs = predictor.outputs(data.test.features) / temperature
    expected = np.exp(outputs - np.logaddexp.reduce(outputs, axis=1, keepdims=True))
    assert probabilities == pytest.approx(expected, abs=1e-6)
    test_y = np.asarray(data.targets(data.test))
    log_loss = -np.mean(np.log(probabilities[np.arange(len(test_y)), test_y]))
    assert metrics["test"]["log_loss"]["value"] == pytest.approx(log_loss, abs=1e-5)


def test_the_test_predictions_table_is_the_bundles_predictions(wine_run: FinishedRun) -> None:
    table = pd.read_csv(wine_run.run_dir / "test_predictions.csv", dtype={"label": str,
                                                                          "predicted": str})
    data = api.prepare(load_config(wine_run.run_dir / "config.yaml")).data
    assert list(table["id"].astype(str)) == [str(i) for i in data.test.ids]
    assert list(table["label"]) == [str(label) for label in data.test.labels]
    assert list(table["predicted"]) == [str(p) for p in api.load(wine_run.run_dir).predict(
        data.test.features)]
    right = np.mean(table["label"] == table["predicted"])
    assert right == pytest.approx(metrics_of(wine_run)["test"]["accuracy"]["value"])


def test_text_and_image_runs_fit_their_classic_baseline_and_a_linear_probe(
    text_run: FinishedRun, image_run: FinishedRun
) -> None:
    for run, classic in ((text_run, "tfidf_logistic"), (image_run, "pixel_logistic")):
        baselines = metrics_of(run)["baselines"]
        assert set(baselines) == {"majority", classic, "linear_probe"}
        for name, baseline in baselines.items():
            assert 0.0 <= baseline["accuracy"] <= 1.0 and baseline["about"], name
            assert "accuracy" in baseline["difference"] and "accuracy" in baseline["val"]
    # the tiny texts carry their label in cue words: TF-IDF finds them
    assert metrics_of(text_run)["baselines"]["tfidf_logistic"]["accuracy"] >= 0.9


def test_a_baseline_that_beats_the_model_on_validation_is_said_plainly(
    weak_run: FinishedRun,
) -> None:
    weak = weak_run
    said = re.sub(r"\s+", " ", weak.result.out + weak.result.err)
    assert "the gradient_boosting baseline (histogram gradient boosting) beats the fine-tuned " \
           "model on validation" in said
    match = re.search(r"the gradient_boosting baseline [^:]*: accuracy [\d.]+ against [\d.]+, "
                      r"a difference of \+(\d\.\d+) \(95% interval \[([+-]\d\.\d+), "
                      r"([+-]\d\.\d+)\]\)", said)
    assert match is not None, said[-2000:]
    metrics = metrics_of(weak)
    gap = metrics["baselines"]["gradient_boosting"]["val_difference"]["accuracy"]
    assert float(match.group(1)) == pytest.approx(-gap["value"], abs=1e-4)
    page = (weak.run_dir / "report.html").read_text()
    assert "beats the fine-tuned model on validation" in page


def assert_scores_new_data(run: FinishedRun, fresh: pd.DataFrame, folder: Path,
                           run_cli: Any) -> Path:
    """`evaluate --data` on `fresh` (written to folder/fresh.csv) scores every row, with the
    accuracy of the bundle's own predictions; returns the file."""
    path = folder / "fresh.csv"
    fresh.to_csv(path, index=False)
    result = run_cli(["evaluate", run.run_dir, "--data", path])
    assert result.code == 0, result.err
    record = json.loads((run.run_dir / "evaluations" / "fresh.json").read_text())
    assert record["rows"] == len(fresh)
    predicted = api.load(run.run_dir).predict(fresh.drop(columns="label"))
    accuracy = np.mean([str(p) == str(t) for p, t in zip(predicted, fresh["label"], strict=True)])
    assert record["scores"]["accuracy"]["value"] == pytest.approx(accuracy)
    return path


def test_evaluate_rescores_the_test_part_and_new_data(
    wine_run: FinishedRun, wine_csv: Path, tmp_path: Path, run_cli: Any
) -> None:
    result = run_cli(["evaluate", wine_run.run_dir])
    assert result.code == 0, result.err
    record = json.loads((wine_run.run_dir / "evaluations" / "test.json").read_text())
    test = metrics_of(wine_run)["test"]
    assert record["scores"]["accuracy"]["value"] == pytest.approx(test["accuracy"]["value"])
    assert record["scores"]["log_loss"]["value"] == pytest.approx(test["log_loss"]["value"],
                                                                 abs=1e-5)
    # new labelled data in the training format: every row scored
    fresh = pd.read_csv(wine_csv).sample(40, random_state=1)
    fresh_path = assert_scores_new_data(wine_run, fresh, tmp_path, run_cli)
    # Other data of the same name, or named test, never overwrites an evaluation: it is numbered.
    (tmp_path / "other").mkdir()
    for name, rows in (("fresh", 30), ("test", 20)):
        path = tmp_path / "other" / f"{name}.csv"
        fresh.head(rows).to_csv(path, index=False)
        assert run_cli(["evaluate", wine_run.run_dir, "--data", path]).code == 0
    kept = {p.name: json.loads(p.read_text())["rows"]
            for p in (wine_run.run_dir / "evaluations").iterdir()}
    assert kept == {"test.json": metrics_of(wine_run)["test_rows"], "fresh.json": 40,
                    "fresh-2.json": 30, "test-2.json": 20}
    # the same data again brings its own evaluation up to date
    assert run_cli(["evaluate", wine_run.run_dir, "--data", fresh_path]).code == 0
    assert len(list((wine_run.run_dir / "evaluations").iterdir())) == 4


def test_evaluate_on_the_training_file_itself_scores_it_and_says_so(
    wine_run: FinishedRun, wine_csv: Path, tmp_path: Path, run_cli: Any
) -> None:
    """It failed with 'cleaning left the train part empty', naming data.clean, a key of a config
    evaluate does not take."""
    run_dir = Path(shutil.copytree(wine_run.run_dir, tmp_path / "run"))  # its own evaluations
    result = run_cli(["evaluate", run_dir, "--data", wine_csv])
    assert result.code == 0, result.err
    table = pd.read_csv(wine_csv)
    record = json.loads((run_dir / "evaluations" / f"{wine_csv.stem}.json").read_text())
    assert record["rows"] == len(table)
    assert record["training_rows_also_in_data"] == len(table)  # every row: the whole file
    assert f"{len(table)} training row(s) also occur in" in " ".join(result.err.split())
    predicted = api.load(run_dir).predict(table.drop(columns="label"))
    assert record["scores"]["accuracy"]["value"] == pytest.approx(
        np.mean([str(p) == str(t) for p, t in zip(predicted, table["label"], strict=True)]))
    # rows it never trained on: nothing said, none counted
    held = tmp_path / "held.csv"
    table.head(30).assign(alcohol=table["alcohol"].head(30) + 100.0).to_csv(held, index=False)
    result = run_cli(["evaluate", run_dir, "--data", held])
    assert result.code == 0 and "also occur in" not in result.err, result.err
    record = json.loads((run_dir / "evaluations" / "held.json").read_text())
    assert record["training_rows_also_in_data"] == 0


def test_evaluate_refuses_a_folder_that_is_not_a_run(tmp_path: Path, run_cli: Any) -> None:
    result = run_cli(["evaluate", tmp_path])
    assert result.code == 2
    assert "not a tunesmith run folder" in result.err and str(tmp_path) in result.err


def test_a_run_whose_data_moved_says_where_to_point_it(
    tmp_path: Path, wine_csv: Path, run_cli: Any
) -> None:
    data = tmp_path / "data" / "wine.csv"
    data.parent.mkdir()
    shutil.copy(wine_csv, data)
    run = finish_run(tmp_path, wine_raw(tmp_path, data, "moved", epochs=5))
    moved = tmp_path / "elsewhere.csv"
    data.rename(moved)
    saved = run.run_dir / "config.yaml"
    for command in (["evaluate", run.run_dir], ["export", run.run_dir, "--format", "onnx"]):
        result = run_cli(command)
        assert result.code == 2, result.err
        said = " ".join(result.err.split())  # the console wraps long lines
        assert "no longer where it was" in said and str(data) in said
        assert "data.train" in said and str(saved) in said
    assert not (run.run_dir / "model.onnx").exists()
    # Done as it says, the run's test part is split again from the data in its new place.
    text = saved.read_text()
    assert str(data) in text
    saved.write_text(text.replace(str(data), str(moved)))
    assert run_cli(["evaluate", run.run_dir]).code == 0
    record = json.loads((run.run_dir / "evaluations" / "test.json").read_text())
    assert record["rows"] == metrics_of(run)["test_rows"]
    assert record["scores"]["accuracy"]["value"] == pytest.approx(
        metrics_of(run)["test"]["accuracy"]["value"])


def test_evaluate_refuses_labels_the_model_never_saw(
    wine_run: FinishedRun, wine_csv: Path, tmp_path: Path, run_cli: Any
) -> None:
    other = pd.read_csv(wine_csv).head(30)
    other.loc[:4, "label"] = 7
    path = tmp_path / "other.csv"
    other.to_csv(path, index=False)
    result = run_cli(["evaluate", wine_run.run_dir, "--data", path])
    assert result.code == 2, result.err
    assert re.search(r"labels \['7'\] never occur in the training data", result.err)
    assert "other.csv" in result.err and "data.label_column" in result.err
    assert "drop or relabel the rows with the others" in result.err


def test_tunesmith_report_rebuilds_the_page_without_loading_torch(
    wine_run: FinishedRun, tmp_path: Path
) -> None:
    """The report reads the run folder's files: its command must not pay for torch, timm and
    the model registry (ten seconds of imports on two cores)."""
    copy = tmp_path / "wine"
    shutil.copytree(wine_run.run_dir, copy)
    (copy / "report.html").unlink()
    code = (
        "import sys\n"
        "from tunesmith.cli import main\n"
        f"sys.argv = ['tunesmith', 'report', {str(copy)!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as done:\n"
        "    assert not done.code, done.code\n"
        "print(sorted(m for m in ('torch', 'timm', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
    assert "Test metrics" in (copy / "report.html").read_text()


def test_the_report_says_what_is_missing_instead_of_failing(
    wine_run: FinishedRun, tmp_path: Path, run_cli: Any
) -> None:
    copy = tmp_path / "wine"
    shutil.copytree(wine_run.run_dir, copy)
    (copy / "predictions.npz").unlink()
    (copy / "test_predictions.csv").unlink()
    (copy / "report.html").unlink()
    result = run_cli(["report", copy])
    assert result.code == 0, result.err
    page = (copy / "report.html").read_text()
    assert "predictions.npz is missing from the run folder" in page
    assert "test_predictions.csv is missing from the run folder" in page
    assert "Test metrics, with 95% bootstrap intervals" in page  # the rest is there
    assert page.count('class="chart"') == 1  # the learning curves
    assert "trained the recipe alone: there was no search" in page


@pytest.mark.parametrize("damage", ["cut", "empty", "not-an-object"])
def test_the_report_says_what_is_damaged_instead_of_failing(
    damage: str, wine_run: FinishedRun, tmp_path: Path, run_cli: Any
) -> None:
    """A damaged metrics.json or predictions.npz failed the page with a traceback (an empty
    .npz with only 'Aborted.')."""
    copy = tmp_path / "wine"
    shutil.copytree(wine_run.run_dir, copy)
    (copy / "report.html").unlink()
    metrics, arrays = copy / "metrics.json", copy / "predictions.npz"
    if damage == "cut":
        metrics.write_text(metrics.read_text()[:40])
        arrays.write_bytes(arrays.read_bytes()[:100])
    elif damage == "empty":
        metrics.write_text("")
        arrays.write_bytes(b"")
    else:
        metrics.write_text("[1, 2]")
        np.savez(arrays, values=np.array([object()], dtype=object))  # pickled: never loaded
    result = run_cli(["report", copy])
    assert result.code == 0 and "Traceback" not in result.err, result.err
    page = (copy / "report.html").read_text()
    assert re.search(r"the run folder's metrics\.json \(.+\) cannot be read", page), page[-3000:]
    assert re.search(r"the run folder's predictions\.npz \(.+\) cannot be read", page)
    data = page[page.index("<h2>Data</h2>"):]
    data = data[:data.index("</section>")]
    assert "Not shown" not in data and "<table" in data  # what does not need them is there


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path: Path, run_cli: Any) -> None:
    result = run_cli(["report", tmp_path])
    assert result.code == 2 and "not a tunesmith run folder" in result.err


@pytest.fixture(scope="module")
def lpft_run(tmp_path_factory: pytest.TempPathFactory, wine_csv: Path) -> FinishedRun:
    """lp-ft: 6 epochs of a linear probe, then 4 of the full fine-tune, in one metrics.jsonl."""
    folder = tmp_path_factory.mktemp("lpft-run")
    raw = wine_raw(folder, wine_csv, "lpft", epochs=4, probe_epochs=6)
    raw["model"]["strategy"] = "lp-ft"
    return finish_run(folder, raw)


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory: pytest.TempPathFactory, wine_csv: Path) -> FinishedRun:
    """The wine table's alcohol content (12.37, 14.23, ...) as a regression target."""
    folder = tmp_path_factory.mktemp("regression-run")
    raw = wine_raw(folder, wine_csv, "alcohol", epochs=5)
    raw["data"]["label_column"] = "alcohol"
    return finish_run(folder, raw)


def drawn_curves(run: FinishedRun, monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict[str, Any]]:
    """The learning-curves section of `run`, and what its figure drew: per axis title, each
    line's (label, x, y)."""
    from tunesmith.report import html as report_html

    drawn: dict[str, Any] = {}
    embed = report_html._figure

    def capture(figure: Any, alt: str) -> str:
        for axis in figure.axes:
            drawn[axis.get_title()] = [(line.get_label(), list(line.get_xdata()),
                                        list(line.get_ydata())) for line in axis.lines]
        return embed(figure, alt)

    monkeypatch.setattr(report_html, "_figure", capture)
    return report_html._learning_curves(report_html._Run(run.run_dir)), drawn


def test_the_learning_curves_draw_each_stage_of_lp_ft_as_its_own_line(
    lpft_run: FinishedRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    epochs = logged(lpft_run.run_dir / "trials" / "0")
    probe = [r for r in epochs if r["stage"] == "probe"]
    train = [r for r in epochs if r["stage"] == "train"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4, 5, 6, 1, 2, 3, 4]  # joined: a zig-zag
    body, drawn = drawn_curves(lpft_run, monkeypatch)
    for title, key in (("train loss", "train_loss"), ("val accuracy", "val_accuracy")):
        (probe_label, probe_x, probe_y), (train_label, train_x, train_y) = drawn[title]
        assert (probe_label, train_label) == ("trial 0 probe", "trial 0 train"), title
        # the fine-tune's epochs come after the probe's
        assert probe_x == [1, 2, 3, 4, 5, 6] and train_x == [7, 8, 9, 10], title
        assert probe_y == pytest.approx([r[key] for r in probe]), title
        assert train_y == pytest.approx([r[key] for r in train]), title
    assert "each its own line: probe, then train." in body
    assert 'alt="learning curves"' in (lpft_run.run_dir / "report.html").read_text()


def test_the_learning_curves_of_a_run_of_one_stage_are_one_line_per_trial(
    regression_run: FinishedRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    epochs = logged(regression_run.run_dir / "trials" / "0")
    assert {r["stage"] for r in epochs} == {"train"} and len(epochs) == 5
    body, drawn = drawn_curves(regression_run, monkeypatch)
    (label, x, y), = drawn["val rmse"]
    assert (label, x) == ("trial 0", [1, 2, 3, 4, 5])
    assert y == pytest.approx([r["val_rmse"] for r in epochs])
    assert body.startswith('<img class="chart"')  # no note on stages: nothing to explain


def test_the_worst_errors_of_a_regression_show_ids_as_written_and_rounded_numbers(
    regression_run: FinishedRun,
) -> None:
    page = (regression_run.run_dir / "report.html").read_text()
    section = re.search(r"<h2>Worst errors</h2>(.*?)</section>", page)
    assert section is not None
    cells = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>"
                       r"</tr>", section.group(1))
    written = pd.read_csv(regression_run.run_dir / "test_predictions.csv", dtype=str)
    assert len(cells) == min(12, len(written))
    rows = written.set_index("id")
    errors = []
    for shown_id, label, predicted, error in cells:
        assert shown_id in rows.index, shown_id  # "25", not "25.0"
        row = rows.loc[shown_id]
        truth, guess = float(row["label"]), float(row["predicted"])
        for cell, value in ((label, truth), (predicted, guess), (error, abs(guess - truth))):
            # four significant digits, as the rest of the page: 13.01, not 13.012346
            assert len(re.sub(r"\D", "", cell).lstrip("0")) <= 4, cell
            assert float(cell) == pytest.approx(value, rel=5e-4), cell
        errors.append(abs(guess - truth))
    assert errors == sorted(errors, reverse=True)
    assert max(errors) == pytest.approx(
        (written["predicted"].astype(float) - written["label"].astype(float)).abs().max())


# ------------------------------------------------------------------------------------------------
# a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI runs the browser test: `make test` installs Debian's chromium")
        pytest.skip("no chromium (make test installs it)")
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr",
         "--log-level=0", *extra, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)


def decoded_images(page: Path, profile: Path) -> int:
    """Open `page` headless; the page's own check (written to the body after load) must find
    every image decoded, and the console no error. Returns the number of images."""
    dom = chromium(page, profile, "--dump-dom", "--virtual-time-budget=5000")
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'data-images="(\d+)" data-broken="(\d+)"', dom.stdout)
    assert found is not None, dom.stdout[-2000:]
    assert int(found.group(2)) == 0, "images that did not decode"
    console_errors = [line for line in dom.stderr.splitlines()
                      if "CONSOLE" in line and ("ERROR" in line or "Uncaught" in line)]
    assert not console_errors, console_errors
    return int(found.group(1))


@pytest.fixture(scope="module")
def searched_run(tmp_path_factory: pytest.TempPathFactory, wine_csv: Path) -> FinishedRun:
    folder = tmp_path_factory.mktemp("searched-run")
    raw = wine_raw(folder, wine_csv, "searched", epochs=20)
    raw["search"] = {"trials": 4, "folds": 1, "pruner": "none",
                     "space": {"train.lr": {"low": 1e-3, "high": 3e-2},
                               "model.scratch.depth": [1, 2]}}
    return finish_run(folder, raw)


def test_the_report_renders_its_charts_in_a_real_browser(
    searched_run: FinishedRun, image_run: FinishedRun, tmp_path: Path
) -> None:
    page = searched_run.run_dir / "report.html"
    text = page.read_text()
    # learning curves, search history, parameter importances, confusion matrix, reliability
    assert text.count('class="chart"') == 5, re.findall(r'<p class="missing">[^<]*', text)
    assert decoded_images(page, tmp_path / "profile-search") == 5
    images = image_run.run_dir / "report.html"
    thumbnails = images.read_text().count('class="thumb"')
    assert decoded_images(images, tmp_path / "profile-image") == (
        images.read_text().count('class="chart"') + thumbnails)
    # a screenshot: the charts drew on it (many colours, not a blank page)
    shot = tmp_path / "report.png"
    result = chromium(page, tmp_path / "profile-shot", f"--screenshot={shot}",
                      "--window-size=1200,6000", "--hide-scrollbars")
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    colours = len(np.unique(pixels[:: 7], axis=0))
    ink = np.mean(pixels.min(axis=1) < 200)  # share of pixels darker than near-white
    assert colours > 200 and ink > 0.03, (colours, ink)


def test_the_bundle_carries_a_model_card_with_the_measured_numbers(
    wine_run: FinishedRun,
) -> None:
    card = (wine_run.run_dir / "best" / "README.md").read_text()
    metrics = metrics_of(wine_run)
    accuracy = metrics["test"]["accuracy"]
    low, high = accuracy["ci95"]
    assert f"| accuracy (primary) | {accuracy['value']:.4f} [{low:.4f}, {high:.4f}] |" in card
    assert "`scratch:mlp`" in card and f"{metrics['test_rows']} rows" in card
    boosted = metrics["baselines"]["gradient_boosting"]
    row = f"| gradient_boosting (histogram gradient boosting) | {boosted['accuracy']:.4f} |"
    assert row in card
    assert "## Intended use and limitations" in card
    # fewer than 30 test rows per class: the card says their scores say little
    assert "Classes with fewer than 30 test rows" in card


def test_a_baseline_sure_enough_to_round_a_probability_to_zero_keeps_finite_outputs() -> None:
    from sklearn.linear_model import LogisticRegression

    from tunesmith.evaluate.baselines import Parts, fitted
    from tunesmith.evaluate.metrics import evaluation_metrics

    # Two far-apart clusters and almost no regularization: predict_proba gives exact zeros.
    train = np.array([[-50.0], [-49.0], [49.0], [50.0]])
    targets = np.array([0, 0, 1, 1])
    far = np.array([[-1000.0], [1000.0]])
    made = fitted("sure", "a nearly unregularized logistic regression", "classification",
                  Parts(train, far, far, targets, 2), lambda kind: LogisticRegression(C=1e6))
    assert np.isfinite(made.test).all()
    assert evaluation_metrics("classification", made.test, np.array([0, 1]))["auroc"] == 1.0


def test_evaluate_new_data_on_a_run_split_by_a_column(
    wine_csv: Path, tmp_path: Path, run_cli: Any
) -> None:
    """The split column names the run's test rows; the new file takes their place, where it
    used to be refused as 'data.test given too' (a setting evaluate had made itself)."""
    table = pd.read_csv(wine_csv)
    table["part"] = np.where(np.arange(len(table)) % 5 == 0, "test", "train")
    table.to_csv(split_csv := tmp_path / "split.csv", index=False)
    raw = wine_raw(tmp_path, split_csv, "by-column", epochs=5)
    raw["data"]["split"] = {"column": "part"}
    run = finish_run(tmp_path, raw)
    fresh = pd.read_csv(wine_csv).sample(40, random_state=2)  # no split column: new data
    assert_scores_new_data(run, fresh, tmp_path, run_cli)
    assert run_cli(["evaluate", run.run_dir]).code == 0  # and its own test part, as before
    own = json.loads((run.run_dir / "evaluations" / "test.json").read_text())
    assert own["rows"] == metrics_of(run)["test_rows"] == (np.arange(len(table)) % 5 == 0).sum()


def test_the_worst_errors_of_multilabel_rows_count_the_labels_wrong(tmp_path: Path) -> None:
    """A label set has no probability or absolute error: the column said 0 for every row."""
    from tunesmith.report import html

    (tmp_path / "config.yaml").write_text("name: tags\n")
    (tmp_path / "metrics.json").write_text(json.dumps({"task": "text-multilabel"}))
    (tmp_path / "data_report.json").write_text(json.dumps({"task": "text-multilabel"}))
    pd.DataFrame({
        "id": ["1", "2", "3", "4"], "input": ["a", "b", "c", "d"],
        "label": ["good", "good|bad", "", "bad"],
        "predicted": ["good", "bad", "good|bad", ""],
    }).to_csv(tmp_path / "test_predictions.csv", index=False)
    table = html._worst_errors(html._Run(tmp_path))
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>"
                      r"</tr>", table)
    assert rows == [("c", "", "good|bad", "2"), ("b", "good|bad", "bad", "1"),
                    ("d", "bad", "", "1")]  # most labels wrong first; the right row left out
    assert "<th>labels wrong</th>" in table


def test_the_model_card_shows_small_numbers_and_class_names_as_they_are() -> None:
    """0.0000 for every metric of a target in millionths; `<script>` went into the Markdown as
    a tag, `*a*` as emphasis."""
    from tunesmith.export.card import model_card

    score = {"value": 7.474e-06, "ci95": [6.64e-06, 8.25e-06]}
    metrics = {"task": "tabular-regression", "primary_metric": "rmse", "test_rows": 89,
               "test": {"rmse": score}, "val": {"rmse": score},
               "baselines": {"mean": {"rmse": 1.1e-05, "about": "the training mean",
                                      "difference": {"rmse": {"value": -3.5e-06,
                                                              "ci95": [-4e-06, -0.0]}}}},
               "per_class": [{"label": "<script>x</script>", "support": 3}]}
    card = model_card(metrics, {"name": "tiny"},
                      {"classes": ["<script>x</script>", "*a*", "x|y"]})
    assert "| rmse (primary) | 7.474e-06 [6.64e-06, 8.25e-06] | 7.474e-06 [6.64e-06, 8.25e-06] |" \
        in card
    assert "| 1.1e-05 | -3.5e-06 [-4e-06, +0.0000] |" in card
    assert "Classes (3): &lt;script&gt;x&lt;/script&gt;, \\*a\\*, x\\|y" in card
    assert "<script>" not in card


def test_a_report_rebuilt_from_inside_the_run_folder_names_the_run(
    wine_run: FinishedRun, run_cli: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(wine_run.run_dir)
    assert run_cli(["report", "."]).code == 0
    page = (wine_run.run_dir / "report.html").read_text()
    assert "<title>tunesmith: wine</title>" in page and "<h1>wine</h1>" in page


def test_the_data_section_counts_the_classes_it_does_not_list() -> None:
    from tunesmith.report.html import _counts

    counts = {f"c{i:02d}": 10 + i for i in range(25)}
    shown = _counts(counts)
    assert shown.startswith("c00: 10, c01: 11") and "c19: 29" in shown and "c20" not in shown
    assert shown.endswith(", and 5 more classes (160 rows)")  # 30 + 31 + 32 + 33 + 34


@pytest.mark.parametrize(("file", "damage", "shown"), [
    ("test_predictions.csv", "", "test_predictions.csv"),  # EmptyDataError
    ("test_predictions.csv", "id,label\n37,1\n", "test_predictions.csv"),  # KeyError 'predicted'
    ("data_report.json", "[]", "data_report.json"),  # AttributeError on a list
])
def test_a_file_edited_out_of_shape_costs_its_sections_only(
    wine_run: FinishedRun, tmp_path: Path, run_cli: Any, file: str, damage: str, shown: str,
) -> None:
    """Files that read whole but not as a run writes them failed the page with a traceback."""
    copy = tmp_path / "wine"
    shutil.copytree(wine_run.run_dir, copy)
    (copy / file).write_text(damage)
    result = run_cli(["report", copy])
    assert result.code == 0 and "Traceback" not in result.err, result.err
    page = (copy / "report.html").read_text()
    assert re.search(rf"Not shown: [^<]*{re.escape(shown)}[^<]* does not hold what this "
                     r"section reads \(\w+", page), page[-3000:]
    assert "<h2>Summary</h2>" in page


def test_a_metrics_line_cut_by_a_kill_is_left_out(wine_run: FinishedRun, tmp_path: Path) -> None:
    from tunesmith.io import logged_epochs

    copy = tmp_path / "0"
    shutil.copytree(wine_run.run_dir / "trials" / "0", copy)
    whole = logged_epochs(copy)
    log = copy / "metrics.jsonl"
    log.write_text(log.read_text() + '{"event": "epoch", "epo')  # killed mid-write
    assert logged_epochs(copy) == whole and whole
