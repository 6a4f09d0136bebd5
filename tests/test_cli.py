"""The command line end to end on the tiny models: run, validate, predict, and user errors.

`tunesmith run` is called in process (see `invoke_cli` in conftest.py); a few calls go through the
real console script to check what a user's shell sees.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file
from sklearn.model_selection import train_test_split

import tunesmith
from conftest import (
    CliResult,
    FinishedRun,
    config_dict,
    finish_run,
    logged,
    write_image_folder,
    write_yaml,
)

RUN_FILES = ["config.yaml", "splits.json", "data_report.json", "trials/0/metrics.jsonl",
             "trials/0/config.yaml", "trials/0/best.safetensors", "best/model.safetensors",
             "best/tunesmith.json", "metrics.json"]

Cli = Callable[[list[str | Path]], CliResult]


def read_json(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------------------------
# tunesmith run


@pytest.mark.parametrize("which", ["text", "image"])
def test_run_writes_the_run_folder(which: str, request: pytest.FixtureRequest) -> None:
    run: FinishedRun = request.getfixturevalue(f"{which}_run")
    assert run.result.code == 0
    assert run.result.out.strip() == f"run folder: {run.run_dir}"
    for name in RUN_FILES:
        assert (run.run_dir / name).is_file(), name
    epochs = 12 if which == "text" else 8
    assert [line["epoch"] for line in logged(run.run_dir / "trials/0")] == list(
        range(1, epochs + 1))


@pytest.mark.parametrize(("which", "rows", "test_rows"), [("text", 300, 60), ("image", 120, 24)])
def test_run_records_splits_and_data_report(which: str, rows: int, test_rows: int,
                                            request: pytest.FixtureRequest) -> None:
    run: FinishedRun = request.getfixturevalue(f"{which}_run")
    splits = read_json(run.run_dir / "splits.json")
    counts = {name: part["rows"] for name, part in splits["parts"].items()}
    assert sum(counts.values()) == rows and counts["test"] == test_rows
    assert splits["method"] == "stratified" and splits["seed"] == 0
    assert len({part["ids_sha256"] for part in splits["parts"].values()}) == 3
    report = read_json(run.run_dir / "data_report.json")
    assert report["task"] == f"{which}-classification"
    assert report["parts"]["train"]["rows"] == rows  # the source, before the split
    assert report["findings"] == [] and report["cleaning"]["duplicates_dropped"]["train"] == 0
    for name, part in report["trained_on"].items():
        assert part["rows"] == counts[name]
        assert sum(part["label_counts"].values()) == part["rows"]
        assert set(part["label_counts"]) == set(report["classes"])


@pytest.mark.parametrize(("which", "threshold"), [("text", 0.9), ("image", 0.85)])
def test_metrics_file_follows_the_schema(which: str, threshold: float,
                                         request: pytest.FixtureRequest) -> None:
    run: FinishedRun = request.getfixturevalue(f"{which}_run")
    metrics = read_json(run.run_dir / "metrics.json")
    assert metrics["task"] == f"{which}-classification"
    assert metrics["primary_metric"] == "accuracy"
    for name in ("accuracy", "macro_f1"):
        assert 0.0 <= metrics["test"][name]["value"] <= 1.0
        assert 0.0 <= metrics["val"][name]["value"] <= 1.0
    assert set(metrics["search"]) >= {"trials_completed", "trials_pruned", "best_trial",
                                      "best_params"}
    assert metrics["search"]["trials_completed"] == 1
    assert metrics["wall_s"] > 0
    import sklearn
    import transformers

    versions = metrics["versions"]
    assert versions["tunesmith"] == tunesmith.__version__ and versions["torch"] == torch.__version__
    assert versions["transformers"] == transformers.__version__
    assert versions["scikit-learn"] == sklearn.__version__
    splits = read_json(run.run_dir / "splits.json")
    assert metrics["test_rows"] == splits["parts"]["test"]["rows"]

    # The majority baseline, recomputed from the label counts of the data report.
    report = read_json(run.run_dir / "data_report.json")
    train_counts = report["trained_on"]["train"]["label_counts"]
    top = max(report["classes"], key=lambda c: (train_counts[c], -report["classes"].index(c)))
    test_counts = report["trained_on"]["test"]["label_counts"]
    majority = test_counts[top] / metrics["test_rows"]
    assert metrics["baselines"]["majority"]["accuracy"] == pytest.approx(majority)

    # The data is learnable: the tiny models get far above the majority class.
    accuracy = metrics["test"]["accuracy"]["value"]
    assert accuracy >= threshold
    assert accuracy >= majority + 0.3
    assert metrics["val"]["accuracy"]["value"] == max(
        line["val_accuracy"] for line in logged(run.run_dir / "trials/0"))


@pytest.mark.parametrize("which", ["text", "image"])
def test_run_folder_config_is_fully_resolved(which: str, request: pytest.FixtureRequest) -> None:
    run: FinishedRun = request.getfixturevalue(f"{which}_run")
    text = (run.run_dir / "config.yaml").read_text()
    config = tunesmith.config.load_config(run.run_dir / "config.yaml")
    assert config.task == f"{which}-classification"
    assert config.train.epochs == (12 if which == "text" else 8)
    assert [line.strip() for line in text.splitlines() if line.strip().endswith(": auto")] == []


def test_text_test_metrics_match_the_bundle_on_the_test_rows(
    text_run: FinishedRun, text_table: pd.DataFrame
) -> None:
    """The reported test accuracy is that of the saved bundle on sklearn's test rows."""
    y = (text_table["label"] == "positive").astype(int).to_numpy()
    _, test_rows = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=y)
    test = text_table.iloc[test_rows]
    predicted = tunesmith.load(text_run.run_dir).predict(test["text"].tolist())
    accuracy = float(np.mean(np.asarray(predicted) == test["label"].to_numpy()))
    metrics = read_json(text_run.run_dir / "metrics.json")
    assert accuracy == pytest.approx(metrics["test"]["accuracy"]["value"])


def history(run_dir: Path) -> list[dict[str, float]]:
    """The per-epoch log without its timing column (throughput varies from run to run)."""
    return [{k: v for k, v in line.items() if k != "train_samples_per_s"}
            for line in logged(run_dir / "trials/0")]


def assert_same_run(first: Path, second: Path) -> None:
    assert read_json(first / "splits.json") == read_json(second / "splits.json")
    metrics = [read_json(run / "metrics.json") for run in (first, second)]
    assert metrics[0]["test"] == metrics[1]["test"]
    assert metrics[0]["val"] == metrics[1]["val"]
    assert history(first) == history(second)
    first_weights = load_file(str(first / "best/model.safetensors"))
    second_weights = load_file(str(second / "best/model.safetensors"))
    assert [k for k in first_weights if not torch.equal(first_weights[k], second_weights[k])] == []


def test_same_seed_gives_identical_runs(text_run: FinishedRun, tmp_path: Path) -> None:
    """Two runs in one process (as two `tunesmith.fit` calls in a notebook) with the same seed."""
    raw = yaml.safe_load(text_run.config.read_text())
    again = finish_run(tmp_path, {**raw, "output_dir": str(tmp_path / "runs")})
    assert_same_run(text_run.run_dir, again.run_dir)


def test_same_seed_gives_identical_runs_across_processes(
    text_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = text_config("twin", train={"epochs": 2})
    runs = []
    for name in ("first", "second"):
        finished = console_script("run", config, "--set", f"name={name}")
        assert finished.returncode == 0, finished.stderr[-2000:]
        runs.append(tmp_path / "runs" / name)
    assert_same_run(*runs)


def test_another_seed_gives_another_run(text_run: FinishedRun, text_config: Callable[..., Path],
                                        run_cli: Cli) -> None:
    result = run_cli(["run", text_config("seed1"), "--set", "seed=1", "--set",
                      "data.split.seed=1", "--set", "train.epochs=2"])
    assert result.code == 0, result.err[-2000:]
    run_dir = Path(result.out.strip().removeprefix("run folder: "))
    splits = read_json(run_dir / "splits.json")
    assert splits["seed"] == 1
    assert splits["parts"]["test"]["ids_sha256"] != read_json(
        text_run.run_dir / "splits.json")["parts"]["test"]["ids_sha256"]
    assert len(logged(run_dir / "trials/0")) == 2  # --set train.epochs=2 reached the loop


def test_a_second_run_keeps_the_first(text_config: Callable[..., Path], run_cli: Cli) -> None:
    config = text_config("twice", train={"epochs": 1})
    first = run_cli(["run", config])
    run_dir = Path(first.out.strip().removeprefix("run folder: "))
    first_metrics = (run_dir / "metrics.json").read_text()
    second = run_cli(["run", config, "--set", "seed=3"])
    assert first.code == second.code == 0
    kept = [p for p in run_dir.parent.iterdir() if p.name.startswith("twice-")]
    assert len(kept) == 1
    assert (kept[0] / "metrics.json").read_text() == first_metrics
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == 3


# ----------------------------------------------------------------------------------------------
# tunesmith validate


@pytest.mark.parametrize("which", ["text", "image"])
def test_validate_checks_everything_and_writes_nothing(
    which: str, text_config: Callable[..., Path], image_config: Callable[..., Path],
    run_cli: Cli, tmp_path: Path,
) -> None:
    config = (text_config if which == "text" else image_config)()
    result = run_cli(["validate", config, "--set", "train.epochs=3"])
    assert result.code == 0, result.err
    assert "ok" in result.err and "2 classes" in result.err
    resolved = yaml.safe_load(result.out)
    assert resolved["task"] == f"{which}-classification"
    assert resolved["train"]["epochs"] == 3
    assert resolved["train"]["precision"] == "fp32"
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------------------------
# tunesmith predict


def test_predict_texts_from_a_csv(text_run: FinishedRun, text_table: pd.DataFrame, run_cli: Cli,
                                  tmp_path: Path) -> None:
    texts = [*text_table["text"].iloc[:20], "a wonderful film", "the ending was dreadful", ""]
    source = tmp_path / "new.csv"
    pd.DataFrame({"id": range(len(texts)), "text": texts}).to_csv(source, index=False)
    out = tmp_path / "preds.csv"
    result = run_cli(["predict", text_run.run_dir, source, "--out", out])
    assert result.code == 0, result.err
    assert result.out.strip() == f"wrote {len(texts)} predictions to {out}"
    table = pd.read_csv(out)
    assert list(table.columns) == ["input", "label", "p_negative", "p_positive"]
    assert table["input"].tolist() == [f"{source}:{row}" for row in range(len(texts))]
    np.testing.assert_allclose(table[["p_negative", "p_positive"]].sum(axis=1), 1.0, atol=2e-6)
    assert table["label"].tolist() == tunesmith.load(text_run.run_dir).predict(texts)
    assert table["label"].iloc[20:22].tolist() == ["positive", "negative"]
    # The label is the more probable class.
    assert (table["label"] == np.where(table["p_positive"] > 0.5, "positive", "negative")).all()


def test_predict_prints_csv_or_writes_jsonl(text_run: FinishedRun, run_cli: Cli,
                                            tmp_path: Path) -> None:
    source = tmp_path / "new.jsonl"
    source.write_text('{"text": "superb"}\n{"text": "boring"}\n')
    printed = run_cli(["predict", text_run.run_dir / "best", source])
    assert printed.code == 0, printed.err
    assert printed.out.splitlines()[0] == "input,label,p_negative,p_positive"
    assert len(printed.out.splitlines()) == 3
    out = tmp_path / "preds.jsonl"
    assert run_cli(["predict", text_run.run_dir, source, "--out", out]).code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["label"] for r in records] == tunesmith.load(text_run.run_dir).predict(
        ["superb", "boring"])
    assert all(r["p_negative"] + r["p_positive"] == pytest.approx(1.0, abs=2e-6) for r in records)


def test_predict_images_from_files_and_folders(image_run: FinishedRun, run_cli: Cli,
                                               tmp_path: Path) -> None:
    folder = write_image_folder(tmp_path / "new", 6, seed=1)
    singles = [folder / "horizontal" / "h000.png", folder / "vertical" / "v000.png"]
    out = tmp_path / "preds.csv"
    result = run_cli(["predict", image_run.run_dir, *singles, folder / "vertical", "--out", out])
    assert result.code == 0, result.err
    table = pd.read_csv(out)
    paths = [str(p) for p in singles] + sorted(str(p) for p in (folder / "vertical").glob("*.png"))
    assert table["input"].tolist() == paths
    np.testing.assert_allclose(table[["p_horizontal", "p_vertical"]].sum(axis=1), 1.0, atol=2e-6)
    assert table["label"].tolist() == tunesmith.load(image_run.run_dir).predict(paths)
    truth = [Path(p).parent.name for p in paths]
    assert np.mean(table["label"].to_numpy() == np.asarray(truth)) >= 0.75


# ----------------------------------------------------------------------------------------------
# user errors: exit status 2, one message naming the file and the field or fix, no traceback


def assert_user_error(result: CliResult, *expected: str | Path) -> None:
    assert result.code == 2, (result.code, result.err[-2000:])
    assert "Traceback" not in result.err
    assert result.err.startswith("error: ") and result.err.count("error: ") == 1
    assert "fix: " in result.err
    for part in expected:
        assert str(part) in result.err, (part, result.err)


def bad_csv(tmp_path: Path, table: pd.DataFrame) -> Path:
    path = tmp_path / "bad.csv"
    table.to_csv(path, index=False)
    return path


def test_unknown_config_key(text_config: Callable[..., Path], run_cli: Cli) -> None:
    config = text_config(train={"epochz": 3})
    assert_user_error(run_cli(["run", config]), config, "train.epochz: unknown key")


def test_wrong_type(text_config: Callable[..., Path], run_cli: Cli, tmp_path: Path) -> None:
    config = text_config(train={"batch_size": "sixteen"})
    assert_user_error(run_cli(["run", config]), config, "train.batch_size", "'sixteen'")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("override", ["train.lr=.inf", "train.lr=.nan", "search.budget=1e999",
                                      "train.time_budget=.inf"])
def test_numbers_that_are_not_finite_are_refused(override: str, text_config: Callable[..., Path],
                                                 run_cli: Cli) -> None:
    """An infinite learning rate passed validation and trained NaN weights."""
    config = text_config()
    key = override.split("=")[0]
    assert_user_error(run_cli(["validate", config, "--set", override]), config,
                      f"{key}: Input should be a finite number")


def test_a_single_run_that_diverges_names_the_learning_rate(
    wine_csv: Path, run_cli: Cli, tmp_path: Path
) -> None:
    """It crashed in calibration with a traceback, after marking a NaN epoch its best."""
    config = write_yaml(tmp_path / "wine.yaml", config_dict(
        tmp_path, data_path=wine_csv, backbone="scratch:mlp", name="hot",
        train_settings={"epochs": 3, "lr": 1e30, "precision": "fp32"}))
    result = run_cli(["run", config])
    assert result.code == 2 and "Traceback" not in result.err, result.err[-2000:]
    said = result.err[result.err.index("error: "):]  # after the training's own lines
    for part in (config, "train.lr", "training diverged: the validation loss was not finite "
                 "from epoch 1 on (learning rate 1e+30)", "fix: lower train.lr"):
        assert str(part) in said, (part, said)
    epochs = logged(tmp_path / "runs" / "hot" / "trials" / "0")
    assert len(epochs) == 1 and not math.isfinite(epochs[0]["val_loss"])


def test_missing_config_file(run_cli: Cli, tmp_path: Path) -> None:
    assert_user_error(run_cli(["run", tmp_path / "nope.yaml"]), tmp_path / "nope.yaml",
                      "config file not found")


def test_missing_data_file(text_config: Callable[..., Path], run_cli: Cli, tmp_path: Path) -> None:
    config = text_config(data_path=tmp_path / "missing.csv")
    assert_user_error(run_cli(["run", config]), tmp_path / "missing.csv", "data.train",
                      "data file not found")


def test_missing_text_column(text_config: Callable[..., Path], text_table: pd.DataFrame,
                             run_cli: Cli, tmp_path: Path) -> None:
    path = bad_csv(tmp_path, text_table.rename(columns={"text": "review"}))
    assert_user_error(run_cli(["run", text_config(data_path=path)]), path, "data.text_column",
                      "'text' not found", "'review'")


def test_missing_label_column(text_config: Callable[..., Path], text_table: pd.DataFrame,
                              run_cli: Cli, tmp_path: Path) -> None:
    path = bad_csv(tmp_path, text_table.drop(columns="label"))
    assert_user_error(run_cli(["run", text_config(data_path=path)]), path, "data.label_column",
                      "'label' not found")


def test_single_class(text_config: Callable[..., Path], text_table: pd.DataFrame,
                      run_cli: Cli, tmp_path: Path) -> None:
    path = bad_csv(tmp_path, text_table.assign(label="positive"))
    assert_user_error(run_cli(["run", text_config(data_path=path)]), path, "data.label_column",
                      "single class ('positive')")


def test_a_class_too_rare_to_stratify(text_config: Callable[..., Path], text_table: pd.DataFrame,
                                      run_cli: Cli, tmp_path: Path) -> None:
    path = bad_csv(tmp_path, text_table.assign(label=["rare"] + ["common"] * 149 + ["other"] * 150))
    assert_user_error(run_cli(["run", text_config(data_path=path)]), path, "data.label_column",
                      "1 class(es) have a single example ('rare')")


@pytest.mark.parametrize("empty", [None, np.nan, ""])
def test_rows_without_label(empty: object, text_config: Callable[..., Path],
                            text_table: pd.DataFrame, run_cli: Cli, tmp_path: Path) -> None:
    table = text_table.copy()
    table.loc[[3, 10], "label"] = empty
    path = bad_csv(tmp_path, table)
    assert_user_error(run_cli(["run", text_config(data_path=path)]), path, "data.label_column",
                      "2 row(s) have no label (data rows 4, 11)")


def test_image_folder_without_class_subfolders(
    image_config: Callable[..., Path], image_folder: Path, run_cli: Cli, tmp_path: Path
) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in sorted(image_folder.rglob("*.png"))[:4]:
        (flat / path.name).write_bytes(path.read_bytes())
    assert_user_error(run_cli(["run", image_config(data_path=flat)]), flat, "data.train",
                      "no class subfolders")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image(damage: str, image_config: Callable[..., Path], image_folder: Path,
                       run_cli: Cli, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(image_folder, tmp_path / "images"))
    broken = copy / "vertical" / "v007.png"
    data = broken.read_bytes()
    broken.write_bytes(b"not an image at all" if damage == "garbage" else data[: len(data) // 2])
    assert_user_error(run_cli(["run", image_config(data_path=copy)]), broken, "data.train",
                      "1 image(s) cannot be read", "drop_unreadable: true")


def test_model_path_that_does_not_exist(text_config: Callable[..., Path], run_cli: Cli,
                                        tmp_path: Path) -> None:
    config = text_config(model={"backbone": "hf:models/nope"})
    assert_user_error(run_cli(["run", config]), tmp_path / "models" / "nope", "model.backbone",
                      "model folder not found")


@pytest.mark.parametrize("content", ['{"model_type": "bert", ', '{"model_type": "no_such_model"}'])
def test_unreadable_model_config(content: str, text_config: Callable[..., Path], tiny_bert: Path,
                                 run_cli: Cli, tmp_path: Path) -> None:
    import shutil

    folder = Path(shutil.copytree(tiny_bert, tmp_path / "broken"))
    (folder / "config.json").write_text(content)
    config = text_config(model={"backbone": f"hf:{folder}"})
    assert_user_error(run_cli(["run", config]), folder, "model.backbone")


def test_tokenizer_larger_than_the_model_vocabulary(
    text_config: Callable[..., Path], tiny_bert: Path, run_cli: Cli, tmp_path: Path
) -> None:
    """A folder whose tokenizer emits ids the embedding table does not have (tokens were added
    to the tokenizer but the model was not resized): a user error, found by `validate`."""
    import shutil

    from transformers import BertConfig, BertModel

    folder = Path(shutil.copytree(tiny_bert, tmp_path / "mismatched"))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=10, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64)).save_pretrained(folder)
    config = text_config(model={"backbone": f"hf:{folder}"})
    assert_user_error(run_cli(["validate", config]), folder, "model.backbone")


def test_weights_that_do_not_match_the_architecture(
    image_config: Callable[..., Path], tiny_timm_weights: tuple[str, Path], run_cli: Cli
) -> None:
    _, weights = tiny_timm_weights
    config = image_config(model={"backbone": f"timm:test_efficientnet?weights={weights}"})
    assert_user_error(run_cli(["run", config]), weights, "model.backbone",
                      "the weights do not match timm's test_efficientnet", "missing keys")


def test_unknown_backbone_source_names_the_config(text_config: Callable[..., Path],
                                                  run_cli: Cli) -> None:
    config = text_config(model={"backbone": "huggingface:models/bert"})
    assert_user_error(run_cli(["run", config]), config, "model.backbone",
                      "unknown backbone source 'huggingface'")


def test_backbone_of_the_wrong_modality_names_the_config(
    image_config: Callable[..., Path], tiny_bert: Path, run_cli: Cli
) -> None:
    config = image_config(model={"backbone": f"hf:{tiny_bert}"})
    assert_user_error(run_cli(["run", config]), config, "model.backbone",
                      "reads text inputs, but the task is image", "scratch:cnn")


def test_csv_given_to_an_image_model(image_run: FinishedRun, text_csv: Path, run_cli: Cli) -> None:
    assert_user_error(run_cli(["predict", image_run.run_dir, text_csv]), text_csv,
                      "this model reads images")


def test_images_given_to_a_text_model(text_run: FinishedRun, image_folder: Path,
                                      run_cli: Cli) -> None:
    assert_user_error(run_cli(["predict", text_run.run_dir, image_folder]), image_folder,
                      "this model reads text")


def test_predict_on_a_folder_that_is_no_run(run_cli: Cli, tmp_path: Path, text_csv: Path) -> None:
    assert_user_error(run_cli(["predict", tmp_path, text_csv]), tmp_path, "no model bundle here")


# ----------------------------------------------------------------------------------------------
# the real console script


def console_script(*args: str | Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("tunesmith")
    return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_console_script_turns_a_user_error_into_status_2(
    text_config: Callable[..., Path]
) -> None:
    config = text_config(data={"bogus": 1}, train={"epochs": "many"})
    finished = console_script("run", config)
    assert finished.returncode == 2
    assert "Traceback" not in finished.stderr
    assert f"error: {config}: the config has 2 problem(s)" in finished.stderr
    assert "data.bogus" in finished.stderr and "train.epochs" in finished.stderr


def test_console_script_usage_error_and_help() -> None:
    usage = console_script("run")  # CONFIG missing: a click usage error, also status 2
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
    assert "missing argument 'config'" in usage.stderr.lower()
    helped = subprocess.run([sys.executable, "-m", "tunesmith", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert helped.returncode == 0
    for command in ("run", "validate", "predict"):
        assert command in helped.stdout


def test_image_run_bundle_keeps_the_resolved_image_size(image_run: FinishedRun) -> None:
    manifest = read_json(image_run.run_dir / "best" / "tunesmith.json")
    config = yaml.safe_load((image_run.run_dir / "config.yaml").read_text())
    # 32 px images, upsampled 2x by the recipe; predict must resize to the same size.
    assert manifest["preprocessing"]["size"] == config["data"]["image_size"] == 64
    assert manifest["classes"] == ["horizontal", "vertical"]


def test_the_console_prints_colon_words_as_written() -> None:
    """Rich turned `:boom:` in a name (python:pkg:boom) into an emoji."""
    from tunesmith.console import console

    assert console.render_str("python:models:boom:make").plain == "python:models:boom:make"
