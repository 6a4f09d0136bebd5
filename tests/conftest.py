"""Shared fixtures: tiny real models built with the libraries tunesmith loads, tiny real data.

Everything here is seeded, so each test sees the same models and data on every run. The models are
random-initialized (no hub downloads) but real: a 2-layer BERT with a fast WordPiece tokenizer, and
a timm test network whose weights are saved to a safetensors file, exactly as a user would hand them
to tunesmith.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from tunesmith.config import deep_merge

ROOT = Path(__file__).resolve().parents[1]

# The tiny models gain nothing from intra-op threads, and with another process on the same two
# cores OpenMP's spinning workers made each epoch up to ten times slower. Subprocesses keep the
# default.
torch.set_num_threads(1)

# The words of the generated text data. A text's label is carried by exactly one cue word; the
# filler words are noise shared by both classes, so a model has to find the cue to do better than
# chance.
FILLER = [
    "the", "a", "an", "this", "that", "film", "movie", "plot", "story", "actor", "actress",
    "scene", "script", "score", "camera", "cast", "director", "ending", "music", "dialogue", "pace",
    "character", "moment", "sequence", "minute", "hour", "idea", "twist", "role", "screen",
    "frame", "shot", "take", "set", "and", "but", "with", "of", "was", "is", "felt", "seemed",
]
POSITIVE = ["great", "excellent", "wonderful", "superb", "delightful"]
NEGATIVE = ["awful", "terrible", "boring", "dreadful", "clumsy"]
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

TIMM_NAME = "test_resnet"  # 0.5M parameters; exists in timm >= 0.9 for exactly this purpose
IMAGE_CLASSES = ("horizontal", "vertical")


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Derived files (decoded dataset images) go to a folder of the test session, not ~/.cache."""
    import os

    folder = tmp_path_factory.mktemp("tunesmith-cache")
    os.environ["TUNESMITH_CACHE"] = str(folder)
    return folder


# ----------------------------------------------------------------------------------------------
# tiny models


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT and its fast tokenizer, saved with save_pretrained into a folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL_TOKENS + sorted(set(FILLER + POSITIVE + NEGATIVE))) + "\n")
    # from_pretrained on the folder that holds vocab.txt: transformers 5 ignores the `vocab_file`
    # argument of the constructor and would silently build a vocabulary of special tokens only.
    tokenizer = BertTokenizerFast.from_pretrained(folder, do_lower_case=True)
    assert tokenizer.vocab_size == len(vocab.read_text().split()), "the vocabulary was not read"
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_timm_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(timm name, safetensors file of a random-initialized model of that name).

    The file holds the classifier too, as a real checkpoint does; tunesmith replaces it.
    """
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(TIMM_NAME, pretrained=False)
    path = tmp_path_factory.mktemp("timm") / f"{TIMM_NAME}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return TIMM_NAME, path


# ----------------------------------------------------------------------------------------------
# tiny data


def make_texts(rows: int, *, seed: int) -> pd.DataFrame:
    """`rows` texts (half positive, half negative) of 3-13 filler words and one cue word."""
    rng = np.random.default_rng(seed)
    labels = np.array(["positive", "negative"] * (rows // 2) + ["positive"] * (rows % 2))
    rng.shuffle(labels)
    texts = []
    for label in labels:
        words = list(rng.choice(FILLER, size=int(rng.integers(3, 14))))
        cue = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
        words.insert(int(rng.integers(0, len(words) + 1)), str(cue))
        texts.append(" ".join(words))
    return pd.DataFrame({"text": texts, "label": labels})


def stripes(orientation: str, rng: np.random.Generator, side: int = 32) -> Image.Image:
    """A noisy, randomly tinted RGB image of horizontal or vertical stripes with random phase."""
    period = rng.uniform(4.0, 9.0)
    phase = rng.uniform(0.0, period)
    axis = np.arange(side, dtype=np.float64)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * (axis + phase) / period)
    plane = np.repeat(wave[:, None], side, 1) if orientation == "horizontal" else np.repeat(
        wave[None, :], side, 0)
    tint = rng.uniform(0.4, 1.0, size=3)
    pixels = plane[:, :, None] * tint[None, None, :] + rng.normal(0.0, 0.08, (side, side, 3))
    return Image.fromarray((np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8), mode="RGB")


def write_image_folder(folder: Path, per_class: int, *, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for name in IMAGE_CLASSES:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            stripes(name, rng).save(folder / name / f"{name[0]}{i:03d}.png")
    return folder


@pytest.fixture(scope="session")
def wine_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's wine table (178 rows, 13 features, 3 classes) as a CSV with `label`."""
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame.rename(columns={"target": "label"})
    path = tmp_path_factory.mktemp("wine") / "wine.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def text_table() -> pd.DataFrame:
    return make_texts(300, seed=0)


@pytest.fixture(scope="session")
def text_csv(tmp_path_factory: pytest.TempPathFactory, text_table: pd.DataFrame) -> Path:
    path = tmp_path_factory.mktemp("text-data") / "reviews.csv"
    text_table.to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("image-data") / "stripes", 60, seed=0)


# ----------------------------------------------------------------------------------------------
# configs

# Chosen so the tiny models learn the tiny data within seconds: a random-initialized BERT needs a
# larger learning rate than a pretrained one. Text takes a 20% validation part so that "best epoch"
# is not decided by a handful of rows.
TEXT_TRAIN = {"epochs": 12, "batch_size": 16, "lr": 2e-3, "head_lr": 5e-3, "precision": "fp32"}
TEXT_EXTRA: dict[str, Any] = {"data": {"split": {"val": 0.2}}}
IMAGE_TRAIN = {"epochs": 8, "batch_size": 16, "lr": 2e-3, "precision": "fp32"}


def config_dict(
    folder: Path, *, data_path: Path | str, backbone: str, train_settings: dict[str, Any],
    name: str = "tiny", **extra: Any,
) -> dict[str, Any]:
    base = {
        "name": name,
        "data": {"train": str(data_path)},
        "model": {"backbone": backbone},
        "train": dict(train_settings),
        "seed": 0,
        "output_dir": str(folder / "runs"),
    }
    return deep_merge(base, extra)


def write_yaml(path: Path, raw: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def text_config(tmp_path: Path, tiny_bert: Path, text_csv: Path) -> Callable[..., Path]:
    """Write a text-classification config for the tiny BERT; keyword sections are merged in."""

    def write(
        name: str = "tiny-text", *, data_path: Path | str | None = None, **extra: Any
    ) -> Path:
        raw = config_dict(tmp_path, data_path=data_path or text_csv, backbone=f"hf:{tiny_bert}",
                          train_settings=TEXT_TRAIN, name=name, **deep_merge(TEXT_EXTRA, extra))
        return write_yaml(tmp_path / f"{name}.yaml", raw)

    return write


@pytest.fixture
def image_config(
    tmp_path: Path, tiny_timm_weights: tuple[str, Path], image_folder: Path
) -> Callable[..., Path]:
    """Write an image-classification config for the tiny timm model; sections are merged in."""
    timm_name, weights = tiny_timm_weights

    def write(
        name: str = "tiny-image", *, data_path: Path | str | None = None, **extra: Any
    ) -> Path:
        raw = config_dict(tmp_path, data_path=data_path or image_folder,
                          backbone=f"timm:{timm_name}?weights={weights}",
                          train_settings=IMAGE_TRAIN, name=name, **extra)
        return write_yaml(tmp_path / f"{name}.yaml", raw)

    return write


def logged(trial_dir: Path, event: str = "epoch") -> list[dict[str, Any]]:
    """The `event` lines ("epoch" or "step") of a trial folder's metrics.jsonl."""
    import json

    lines = (trial_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["event"] == event]


# ----------------------------------------------------------------------------------------------
# the command line, in process


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


def invoke_cli(args: Sequence[str | Path]) -> CliResult:
    """Call `tunesmith.cli.main()` as the console script would, capturing exit code and output.

    A normal return is exit status 0; any other exception than SystemExit propagates (and fails
    the test): that would be a traceback for the user.
    """
    from tunesmith.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with (
        pytest.MonkeyPatch.context() as patch,
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        patch.setattr(sys, "argv", ["tunesmith", *map(str, args)])
        try:
            main()
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def run_cli() -> Callable[[Sequence[str | Path]], CliResult]:
    return invoke_cli


# ----------------------------------------------------------------------------------------------
# finished runs, shared by the end-to-end tests (each costs tens of seconds on two cores)


@dataclass(frozen=True)
class FinishedRun:
    config: Path
    run_dir: Path
    result: CliResult


def finish_run(folder: Path, raw: dict[str, Any]) -> FinishedRun:
    """`tunesmith run` on `raw` written to `folder`/config.yaml; it must succeed."""
    config = write_yaml(folder / "config.yaml", raw)
    result = invoke_cli(["run", config])
    assert result.code == 0, result.err[-3000:]
    return FinishedRun(config, folder / "runs" / raw["name"], result)


@pytest.fixture(scope="session")
def text_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path, text_csv: Path
) -> FinishedRun:
    folder = tmp_path_factory.mktemp("text-run")
    # The tiny BERT is random: its embeddings have the cue words to learn, so they train.
    extra = deep_merge(TEXT_EXTRA, {"model": {"freeze_embeddings": False}})
    return finish_run(folder, config_dict(folder, data_path=text_csv, backbone=f"hf:{tiny_bert}",
                                          train_settings=TEXT_TRAIN, name="text", **extra))


@pytest.fixture(scope="session")
def image_run(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_timm_weights: tuple[str, Path],
    image_folder: Path,
) -> FinishedRun:
    folder = tmp_path_factory.mktemp("image-run")
    name, weights = tiny_timm_weights
    return finish_run(folder, config_dict(folder, data_path=image_folder,
                                          backbone=f"timm:{name}?weights={weights}",
                                          train_settings=IMAGE_TRAIN, name="image"))
