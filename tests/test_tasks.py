"""Every label kind trains end to end: tables (a network from scratch), regression, multilabel.

The tables are scikit-learn's real bundled sets; the multilabel texts are generated with one cue
word per label. Each test runs the real command line and checks the numbers it wrote against what
the test computes itself: the test part's size, the baselines, the bundle's predictions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import tunesmith
import tunesmith.api
import tunesmith.config
from conftest import FILLER, NEGATIVE, POSITIVE, CliResult, config_dict, finish_run

Cli = Callable[[Sequence[str | Path]], CliResult]
# Short runs: the sets are small and the assertions leave room below the recipe's full length.
TABLE_TRAIN = {"epochs": 40, "precision": "fp32"}


def sklearn_table(loader: Callable[..., Any], path: Path) -> pd.DataFrame:
    frame: pd.DataFrame = loader(as_frame=True).frame.rename(columns={"target": "label"})
    frame.to_csv(path, index=False)
    return frame


@pytest.fixture(scope="module")
def cancer_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, pd.DataFrame]:
    from sklearn.datasets import load_breast_cancer

    folder = tmp_path_factory.mktemp("cancer")
    table = sklearn_table(load_breast_cancer, folder / "cancer.csv")
    raw = config_dict(folder, data_path=folder / "cancer.csv", backbone="scratch:mlp",
                      train_settings=TABLE_TRAIN, name="cancer")
    return finish_run(folder, raw), table


def test_a_table_trains_a_network_from_scratch(cancer_run: tuple[Any, pd.DataFrame]) -> None:
    run, table = cancer_run
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert metrics["task"] == "tabular-classification"
    assert metrics["test_rows"] == round(0.2 * len(table)) == 114
    majority = float((table["label"] == 1).mean())  # 357 of 569 are benign
    assert metrics["baselines"]["majority"]["accuracy"] == pytest.approx(majority, abs=0.01)
    # Logistic regression scores about 0.98; validation (46 rows) picks an early epoch here.
    assert metrics["test"]["accuracy"]["value"] > 0.9
    config = tunesmith.config.load_config(run.run_dir / "config.yaml")
    assert config.model.scratch is not None and config.model.scratch.depth == 2
    # 30 numeric features, no gaps: 30 inputs, an MLP twice as wide rounded to a power of 2.
    assert config.model.scratch.width == 64


def test_a_table_bundle_predicts_rows_of_a_csv(cancer_run: tuple[Any, pd.DataFrame], run_cli: Cli,
                                              tmp_path: Path) -> None:
    run, table = cancer_run
    rows = table.drop(columns=["label"]).sample(frac=1.0, random_state=0)  # the rows shuffled
    rows = rows[list(reversed(rows.columns))]  # the column order of a file does not matter
    csv = tmp_path / "rows.csv"
    rows.to_csv(csv, index=False)
    out = tmp_path / "predicted.csv"
    result = run_cli(["predict", run.run_dir, csv, "--out", out])
    assert result.code == 0, result.err[-2000:]
    predicted = pd.read_csv(out)
    assert list(predicted.columns) == ["input", "label", "p_0", "p_1"]
    truth = table.loc[rows.index, "label"].to_numpy()
    assert float((predicted["label"].to_numpy() == truth).mean()) > 0.92
    np.testing.assert_allclose(predicted[["p_0", "p_1"]].sum(axis=1), 1.0, atol=1e-5)
    predictor = tunesmith.load(run.run_dir)
    direct = predictor.predict(rows.head(20))  # a DataFrame straight from Python
    assert direct == [str(label) for label in predicted["label"].head(20)]


def test_a_row_missing_a_feature_column_is_refused(cancer_run: tuple[Any, pd.DataFrame],
                                                   run_cli: Cli, tmp_path: Path) -> None:
    run, table = cancer_run
    csv = tmp_path / "short.csv"
    table.drop(columns=["label", "mean radius"]).head(5).to_csv(csv, index=False)
    result = run_cli(["predict", run.run_dir, csv])
    assert result.code == 2 and "Traceback" not in result.err
    assert "feature column(s) ['mean radius']" in result.err and str(csv) in result.err


def test_regression_predicts_in_the_targets_units(tmp_path: Path, run_cli: Cli) -> None:
    from sklearn.datasets import load_diabetes

    table = sklearn_table(load_diabetes, tmp_path / "diabetes.csv")
    raw = config_dict(tmp_path, data_path=tmp_path / "diabetes.csv", backbone="scratch:mlp",
                      train_settings=TABLE_TRAIN, name="diabetes")
    run = finish_run(tmp_path, raw)
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert metrics["task"] == "tabular-regression" and metrics["primary_metric"] == "rmse"
    mean_rmse = metrics["baselines"]["mean"]["rmse"]
    assert mean_rmse == pytest.approx(float(table["label"].std()), rel=0.15)  # about 77
    assert metrics["test"]["rmse"]["value"] < 0.85 * mean_rmse
    assert metrics["test"]["r2"]["value"] > 0.3

    predictor = tunesmith.load(run.run_dir)
    predictions = np.asarray(predictor.predict(table.drop(columns=["label"])))
    assert predictions.mean() == pytest.approx(table["label"].mean(), rel=0.1)  # not unit scale
    rmse = float(np.sqrt(np.mean((predictions - table["label"].to_numpy()) ** 2)))
    assert rmse < 0.85 * float(table["label"].std())
    # The head ends in the training targets' scale, fitted on the training part only.
    scale = predictor.model.head[-1]
    splits = json.loads((run.run_dir / "splits.json").read_text())
    assert splits["parts"]["train"]["rows"] < len(table)
    assert float(scale.mean) == pytest.approx(table["label"].mean(), rel=0.05)
    with pytest.raises(tunesmith.errors.TunesmithError, match="predicts numbers"):
        predictor.predict_proba(table.drop(columns=["label"]).head(2))
    # The split stratified on the targets' quantiles is recorded by that name, and the resolved
    # config names the method that makes it again: the commands that read it back accept it.
    assert splits["method"] == "quantile-stratified"
    resolved = yaml.safe_load((run.run_dir / "config.yaml").read_text())
    assert resolved["data"]["split"]["method"] == "stratified"
    again = tunesmith.api.prepare(tunesmith.config.load_config(run.run_dir / "config.yaml"))
    assert again.data.splits["parts"] == splits["parts"]
    for command in (["evaluate", run.run_dir], ["export", run.run_dir, "--format", "onnx"]):
        result = run_cli(command)
        assert result.code == 0, result.err


def test_regression_scores_the_same_in_any_units(tmp_path: Path, run_cli: Cli) -> None:
    """A target moved by 1e9, scaled past float32's largest number or into millionths trains and
    scores as the plain one does: in float32 the first moved in steps of 64 (R² outside its own
    interval) and the second was infinite (a traceback); the third's RMSE showed as 0.0001."""
    from sklearn.datasets import load_diabetes

    plain = sklearn_table(load_diabetes, tmp_path / "plain.csv")
    runs = {}
    changes = (("moved", 1e9, 1.0), ("huge", 0.0, 1e38), ("tiny", 0.0, 1e-6))
    for name, shift, scale in (("plain", 0.0, 1.0), *changes):
        table = plain.assign(label=plain["label"] * scale + shift)
        table.to_csv(tmp_path / f"{name}.csv", index=False)
        raw = config_dict(tmp_path / name, data_path=tmp_path / f"{name}.csv",
                          backbone="scratch:mlp", train_settings=TABLE_TRAIN, name=name)
        runs[name] = finish_run(tmp_path / name, raw).run_dir
    metrics = {name: json.loads((run / "metrics.json").read_text()) for name, run in runs.items()}
    arrays = {name: np.load(run / "predictions.npz") for name, run in runs.items()}
    reference = metrics["plain"]["test"]
    for name, shift, scale in changes:
        test = metrics[name]["test"]
        for metric in ("rmse", "mae"):
            assert test[metric]["value"] == pytest.approx(reference[metric]["value"] * scale,
                                                          rel=1e-4)
            assert test[metric]["ci95"] == pytest.approx(
                [bound * scale for bound in reference[metric]["ci95"]], rel=1e-4)
        assert test["r2"]["value"] == pytest.approx(reference["r2"]["value"], abs=1e-4)
        for baseline in ("mean", "gradient_boosting"):  # fitted on standardized targets too
            assert metrics[name]["baselines"][baseline]["rmse"] == pytest.approx(
                metrics["plain"]["baselines"][baseline]["rmse"] * scale, rel=1e-3)
        low, high = test["r2"]["ci95"]
        assert low < test["r2"]["value"] < high
        # the targets kept exactly as written, the outputs in the same units
        assert np.array_equal(arrays[name]["test_targets"],
                              arrays["plain"]["test_targets"] * scale + shift)
        assert arrays[name]["test_outputs"] == pytest.approx(
            arrays["plain"]["test_outputs"] * scale + shift, rel=1e-6, abs=1e-2)
        rmse = test["rmse"]["value"]  # shown to 4 decimals, or 4 digits where those hide it
        shown = f"{rmse:.4f}" if name == "moved" else f"{rmse:.4g}"
        assert f"<b>{shown} <small>[" in (runs[name] / "report.html").read_text(), shown
        predicted = tunesmith.load(runs[name]).predict(plain.drop(columns=["label"]).head(5))
        assert predicted == pytest.approx(
            list(np.asarray(tunesmith.load(runs["plain"]).predict(
                plain.drop(columns=["label"]).head(5))) * scale + shift), rel=1e-6, abs=1e-2)
    # a row far beyond the training data has no number (as a class it has no label), not NaN
    beyond = plain.drop(columns=["label"]).head(3).assign(age=[0.0, 1e300, 0.0])
    predicted = tunesmith.load(runs["plain"]).predict(beyond)
    assert predicted[1] is None and all(isinstance(v, float) for v in predicted[::2])
    # int8 is for the ONNX graph: with safetensors it was ignored without a word
    result = run_cli(["export", runs["plain"], "--format", "safetensors", "--quantize", "int8"])
    assert result.code == 2 and "--quantize" in result.err and "Traceback" not in result.err


def multilabel_texts(rows: int, *, seed: int) -> list[dict[str, Any]]:
    """Texts carrying a positive cue word (label `good`), a negative one (`bad`), both or none."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(rows):
        words = list(rng.choice(FILLER, size=int(rng.integers(3, 10))))
        labels = []
        if rng.random() < 0.5:
            words.insert(0, str(rng.choice(POSITIVE)))
            labels.append("good")
        if rng.random() < 0.4:
            words.append(str(rng.choice(NEGATIVE)))
            labels.append("bad")
        records.append({"text": " ".join(words), "label": labels})
    return records


def test_multilabel_texts_train_and_predict_label_sets(tiny_bert: Path, tmp_path: Path,
                                                       run_cli: Cli) -> None:
    records = multilabel_texts(400, seed=1)
    data = tmp_path / "tagged.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    raw = config_dict(tmp_path, data_path=data, backbone=f"hf:{tiny_bert}", name="tags",
                      train_settings={"epochs": 6, "batch_size": 16, "lr": 2e-3,
                                      "head_lr": 5e-3, "precision": "fp32"},
                      data={"split": {"val": 0.2}},
                      # The tiny BERT is random: its embeddings have the cue words to learn,
                      # and a random head lets them learn from the first step (the recipe's
                      # zero head waits for pretrained features to train it first).
                      model={"freeze_embeddings": False, "head": {"init": "xavier_uniform"}})
    run = finish_run(tmp_path, raw)
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert metrics["task"] == "text-multilabel" and metrics["primary_metric"] == "micro_f1"
    baseline = metrics["baselines"]["majority"]["micro_f1"]
    assert metrics["test"]["micro_f1"]["value"] > max(0.9, baseline + 0.3)
    report = json.loads((run.run_dir / "data_report.json").read_text())
    good = sum("good" in record["label"] for record in records)
    trained = report["trained_on"]
    assert sum(trained[part]["label_counts"].get("good", 0) for part in trained) <= good

    predictor = tunesmith.load(run.run_dir)
    sets = predictor.predict(["superb film", "the plot was awful", "great cast but clumsy",
                              "the story"])
    assert sets[0] == ("good",) and sets[1] == ("bad",)
    assert set(sets[2]) == {"bad", "good"} and sets[3] == ()
    probabilities = predictor.predict_proba(["superb film"])
    assert probabilities.shape == (1, 2)  # a sigmoid per label, not a softmax over them
    assert probabilities[0, predictor.classes.index("good")] > 0.5 > probabilities[0, 0]
    # split iteratively stratified, recorded so; the commands that read the config back run
    assert json.loads((run.run_dir / "splits.json").read_text())["method"] == (
        "iterative-stratified")
    for command in (["evaluate", run.run_dir], ["export", run.run_dir, "--format", "onnx"]):
        result = run_cli(command)
        assert result.code == 0, result.err
    # the ONNX engine gives the same label sets and probabilities (its logits recovered from
    # the graph's sigmoids)
    texts = [record["text"] for record in records[:60]]
    engine = tunesmith.load(run.run_dir, engine="onnx")
    assert engine.predict(texts) == predictor.predict(texts)
    np.testing.assert_allclose(engine.predict_proba(texts), predictor.predict_proba(texts),
                               atol=1e-5)
    logits, recovered = predictor.outputs(texts), engine.outputs(texts)
    assert (np.sign(recovered) == np.sign(logits)).all()
    moderate = np.abs(logits) < 8  # beyond, float32 sigmoids keep too few digits of 1 - p
    assert moderate.mean() > 0.5
    np.testing.assert_allclose(recovered[moderate], logits[moderate], atol=1e-3)
    assert_bf16_keeps_the_label_sets(run.run_dir, texts, predictor)


def assert_bf16_keeps_the_label_sets(run_dir: Path, texts: list[str], predictor: Any) -> None:
    """bf16 with the recheck: the label sets are float32's; the rows rechecked are those with a
    probability within the margin of 0.5, and they are float32's, the others bf16's."""
    from tunesmith.export.onnx import bf16_available, decision_gap

    if not bf16_available():
        return
    change = json.loads((run_dir / "export.json").read_text())["bf16"]
    assert 0 < change["max_abs_diff"] < 0.05 and change["recheck_margin"] < 1
    exact = tunesmith.load(run_dir, engine="onnx")
    fast = tunesmith.load(run_dir, engine="onnx", precision="bf16")
    assert fast.predict(texts) == predictor.predict(texts)
    fast.recheck_margin = 0.0  # bf16 alone
    alone = fast.predict_proba(texts)
    assert fast.rechecked == 0 and np.abs(alone - exact.predict_proba(texts)).max() > 0
    gap = 2 * np.abs(alone - 0.5).min(axis=1)  # a label flips only where p crosses 0.5
    np.testing.assert_allclose(decision_gap(alone, "multilabel"), gap)
    fast.recheck_margin = float(np.median(gap))
    got = fast.predict_proba(texts)
    close = gap < fast.recheck_margin
    assert 0 < fast.rechecked == close.sum() < len(texts)
    np.testing.assert_allclose(got[close], exact.predict_proba(texts)[close], atol=1e-5)
    np.testing.assert_allclose(got[~close], alone[~close], atol=1e-6)


PYTHON_NET = '''
import torch
import yaml
from torch import nn


def tabular_net(in_features):
    """A user's own trunk: two layers, 24 features out."""
    net = nn.Sequential(nn.Linear(in_features, 48), nn.ReLU(), nn.Linear(48, 24), nn.Tanh())
    net.num_features = 24
    return net
'''


def test_a_users_own_module_trains_and_reloads_from_the_bundle(tmp_path: Path) -> None:
    from sklearn.datasets import load_wine

    (tmp_path / "user_nets.py").write_text(PYTHON_NET)
    table = sklearn_table(load_wine, tmp_path / "wine.csv")
    raw = config_dict(tmp_path, data_path=tmp_path / "wine.csv",
                      backbone="python:user_nets:tabular_net", name="wine",
                      train_settings={**TABLE_TRAIN, "epochs": 60})
    run = finish_run(tmp_path, raw)
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert metrics["test_rows"] == 36
    assert metrics["test"]["accuracy"]["value"] >= 0.85  # logistic regression scores about 0.97
    manifest = json.loads((run.run_dir / "best" / "tunesmith.json").read_text())
    assert manifest["backbone"]["target"] == "user_nets:tabular_net"
    assert manifest["backbone"]["search"] == str(tmp_path)
    predictor = tunesmith.load(run.run_dir)
    features = table.drop(columns=["label"])
    outputs = predictor.outputs(features.head(8))
    encoded = torch.from_numpy(predictor.tabular.transform(features.head(8)))  # type: ignore[union-attr]
    with torch.no_grad():
        expected = predictor.model.head(predictor.model.backbone.network(encoded))
    np.testing.assert_allclose(outputs, expected.numpy(), atol=1e-6)


def test_scratch_cnn_learns_the_stripes(image_folder: Path, tmp_path: Path) -> None:
    raw = config_dict(tmp_path, data_path=image_folder, backbone="scratch:cnn", name="cnn",
                      train_settings={"epochs": 12, "precision": "fp32", "batch_size": 16},
                      model={"scratch": {"depth": 2, "channels": 8}})
    run = finish_run(tmp_path, raw)
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert metrics["task"] == "image-classification"
    assert metrics["test"]["accuracy"]["value"] >= 0.9  # horizontal vs vertical stripes
    config = tunesmith.config.load_config(run.run_dir / "config.yaml")
    assert config.data.image_size == 32  # a network from scratch reads the images' own size
    assert config.model.scratch is not None and config.model.scratch.channels == 8


def test_a_network_from_scratch_is_the_same_in_every_process(tmp_path: Path) -> None:
    """The seed fixes a scratch network's initialization, whatever the process ran before."""
    from sklearn.datasets import load_wine

    from test_cli import assert_same_run, console_script

    sklearn_table(load_wine, tmp_path / "wine.csv")
    torch.manual_seed(123)  # this process's random state must not matter
    raw = config_dict(tmp_path, data_path=tmp_path / "wine.csv", backbone="scratch:mlp",
                      train_settings={**TABLE_TRAIN, "epochs": 5}, name="in-process")
    in_process = finish_run(tmp_path, raw)
    finished = console_script("run", in_process.config, "--set", "name=subprocess")
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert_same_run(in_process.run_dir, tmp_path / "runs" / "subprocess")


def test_a_hugging_face_vision_model_trains_and_its_bundle_scores_the_same(
    image_folder: Path, tmp_path: Path
) -> None:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    from tunesmith.data import load_task_data

    folder = tmp_path / "vit"
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, image_size=32, patch_size=8)
    ViTModel(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    raw = config_dict(tmp_path, data_path=image_folder, backbone=f"hf:{folder}", name="vit",
                      train_settings={"epochs": 10, "precision": "fp32", "batch_size": 16,
                                      "lr": 2e-3})
    run = finish_run(tmp_path, raw)
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    resolved = tunesmith.config.load_config(run.run_dir / "config.yaml")
    assert resolved.data.image_size == 32  # a ViT keeps the size its positions were made for
    # The same seeded split gives the test images; the bundle scores them as the run did.
    test = load_task_data(resolved).test
    predicted = tunesmith.load(run.run_dir).predict(test.inputs)
    accuracy = float(np.mean([p == t for p, t in zip(predicted, test.labels, strict=True)]))
    assert accuracy == pytest.approx(metrics["test"]["accuracy"]["value"], abs=1e-12)
    assert accuracy > 0.6  # stripes: a 2-layer ViT from random weights learns them in 10 epochs
