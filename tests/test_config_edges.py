"""Config values that passed validation and crashed later (or did the wrong thing quietly), and
what a user types that the config now reads as meant: each refused at the edge with the field
named, or taken as written."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import CliResult, config_dict, write_yaml
from tunesmith import api
from tunesmith.config import load_config
from tunesmith.errors import TunesmithError

Cli = Callable[[list[Any]], CliResult]


def wine(tmp_path: Path, wine_csv: Path, **extra: Any) -> Path:
    raw = config_dict(tmp_path, data_path=wine_csv, backbone="scratch:mlp", name="wine",
                      train_settings={"epochs": 1, "precision": "fp32"}, **extra)
    return write_yaml(tmp_path / "wine.yaml", raw)


def refused(result: CliResult, *expected: str) -> None:
    assert result.code == 2, (result.code, result.err[-2000:])
    assert "Traceback" not in result.err
    for part in expected:
        assert part in result.err, (part, result.err)


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("seed=-1", "seed"),  # NumPy's and scikit-learn's seeds are 0..2**32-1: a traceback
        ("seed=99999999999999999999", "seed"),
        ("data.split.seed=-1", "data.split.seed"),  # said to add examples to the rarest classes
        ("data.label_delimiter=''", "data.label_delimiter"),  # 'empty separator'
        ("data.encoding=base64", "not a text encoding"),  # a codec of bytes, found by lookup
        ("data.image_size=0", "data.image_size"),  # became 32 without a word
        ("data.max_length=1", "data.max_length"),  # below the special tokens: no truncation
        ("data.feature_columns=[]", "data.feature_columns"),  # trained on every column
        (f"name={'n' * 250}", "name"),  # 'File name too long' once the run began
    ],
)
def test_values_that_crashed_later_are_refused(tmp_path: Path, wine_csv: Path, run_cli: Cli,
                                               override: str, says: str) -> None:
    refused(run_cli(["validate", wine(tmp_path, wine_csv), "--set", override]), says,
            "wine.yaml")


def test_a_max_length_beyond_the_models_positions_is_refused(
        text_config: Callable[..., Path], tiny_bert: Path, run_cli: Cli) -> None:
    """The tiny BERT embeds 64 positions: longer texts were an indexing error mid-training."""
    refused(run_cli(["validate", text_config(), "--set", "data.max_length=65"]),
            "data.max_length 65 is above the 64 tokens this model reads",
            str(tiny_bert / "config.json"))
    assert load_config(text_config(), ["data.max_length=64"]).data.max_length == 64


def test_lr_find_refuses_a_sweep_without_steps(tmp_path: Path, wine_csv: Path,
                                               run_cli: Cli) -> None:
    result = run_cli(["lr-find", wine(tmp_path, wine_csv), "--steps", "0"])
    assert result.code == 2 and "--steps" in result.err and "Traceback" not in result.err


def test_a_tab_typed_as_backslash_t_is_a_tab(tmp_path: Path, wine_csv: Path) -> None:
    assert load_config(wine(tmp_path, wine_csv), [r"data.delimiter=\t"]).data.delimiter == "\t"


def test_set_reaches_one_key_of_the_search_space(tmp_path: Path, wine_csv: Path) -> None:
    """The space's keys are dotted names: --set search.space.train.lr=... split them apart."""
    config = load_config(wine(tmp_path, wine_csv), [
        "search.trials=3", "search.space.train.lr={low: 1e-5, high: 1e-3}",
        "search.space.model.head.activation=[relu, gelu]"])
    assert config.search.space["train.lr"].low == pytest.approx(1e-5)  # type: ignore[union-attr]
    assert config.search.space["model.head.activation"] == ["relu", "gelu"]


@pytest.mark.parametrize(("key", "suggested"), [
    ("train.learning_rate", "lr"),  # Hugging Face's name
    ("train.epoch", "epochs"),  # a typo
    ("trian", "train"),
    ("search.n_trials", "trials"),  # Optuna's
])
def test_an_unknown_key_gets_the_one_meant(tmp_path: Path, wine_csv: Path, run_cli: Cli,
                                           key: str, suggested: str) -> None:
    refused(run_cli(["validate", wine(tmp_path, wine_csv), "--set", f"{key}=1"]),
            f"{key}: unknown key; did you mean '{suggested}'?")


def test_the_run_folder_is_made_where_output_dir_says(tmp_path: Path, wine_csv: Path,
                                                      run_cli: Cli,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """'~' is the home folder (it made a folder named '~', then the report failed), a file
    where a folder must be is named, and the run folder is readable by others as the umask
    allows (files were 0600 and folders 0700, unreadable from a shared output_dir)."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    config = wine(tmp_path, wine_csv)
    result = run_cli(["run", config, "--set", "output_dir=~/runs"])
    assert result.code == 0, result.err
    run_dir = home / "runs" / "wine"
    assert (run_dir / "report.html").is_file() and not (tmp_path / "~").exists()
    umask = os.umask(0o022)
    os.umask(umask)
    for path in (run_dir / "metrics.json", run_dir / "best" / "model.safetensors"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    assert stat.S_IMODE((run_dir / "best").stat().st_mode) == 0o777 & ~umask
    # a file where the run folder, or output_dir, would be
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "wine").write_text("not a folder")
    refused(run_cli(["run", config, "--set", f"output_dir={tmp_path / 'runs'}"]),
            "is a file, not a run folder", "name")
    refused(run_cli(["run", config, "--set", f"output_dir={tmp_path / 'runs' / 'wine'}"]),
            "is a file, so the run folder cannot be made in it", "output_dir")


def test_fit_applies_overrides_to_a_config_object(tmp_path: Path, wine_csv: Path) -> None:
    """They were dropped without a word when the config was already loaded."""
    config = load_config(wine(tmp_path, wine_csv))
    assert api.validate(config, ["train.epochs=3"]).config.train.epochs == 3
    with pytest.raises(TunesmithError, match=r"train\.epochs"):
        api.validate(config, ["train.epochs=0"])
    # one override given as a string, not a list of its characters
    assert api.validate(wine(tmp_path, wine_csv), "train.epochs=2").config.train.epochs == 2


def test_inspects_own_options_are_named_as_typed(wine_csv: Path, run_cli: Cli) -> None:
    """The problems of `inspect --task text` named the config key `task`, not the option."""
    result = run_cli(["inspect", wine_csv, "--task", "text", "--format", "xls"])
    refused(result, "the options have 2 problem(s)", "--task: Input should be", "(got 'text')",
            "--format: Input should be", "(got 'xls')", "tunesmith inspect --help")


@pytest.mark.parametrize("override", ["data.augment.mixup=0.4", "data.augment.cutmix=1.0",
                                      "data.augment.preset=strong"])
def test_image_augmentation_given_to_a_text_task_is_refused(
        text_config: Callable[..., Path], run_cli: Cli, override: str) -> None:
    """Accepted, written to the resolved config as used, and ignored."""
    field = override.split("=")[0]
    refused(run_cli(["validate", text_config(), "--set", override]),
            f"{field} augments images; this is a text task", f"fix: remove {field}")
