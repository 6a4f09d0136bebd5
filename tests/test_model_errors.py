"""Bad models and heads: one clear message (file, field, fix) and exit status 2, a test each.

Unknown source or model names (with the closest names), weights for another architecture (the
missing and unexpected keys listed), a pickle checkpoint that would run code (refused, never run),
a model that needs trust_remote_code (refused unless the config allows it), and a head or loss
that does not fit the task.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import CliResult, config_dict, write_yaml
from test_cli import assert_user_error

Cli = Callable[[Sequence[str | Path]], CliResult]


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich folds lines at 80 columns; a wide console keeps each message on one line."""
    monkeypatch.setenv("COLUMNS", "2000")


def validate(run_cli: Cli, config: Path) -> CliResult:
    return run_cli(["validate", config])


# ----------------------------------------------------------------------------------------------
# names


def test_an_unknown_torchvision_model_names_the_closest(image_config: Callable[..., Path],
                                                        run_cli: Cli) -> None:
    config = image_config(model={"backbone": "torchvision:resnet181"})
    assert_user_error(validate(run_cli, config), config, "model.backbone",
                      "torchvision has no model named 'resnet181'", "closest: resnet18",
                      "torchvision.models.list_models()")


def test_an_unknown_scratch_network(image_config: Callable[..., Path], run_cli: Cli) -> None:
    config = image_config(model={"backbone": "scratch:rnn"})
    assert_user_error(validate(run_cli, config), config, "model.backbone",
                      "scratch has no network named 'rnn'", "scratch:cnn (images)")


def test_an_unimportable_python_module(image_config: Callable[..., Path], run_cli: Cli) -> None:
    config = image_config(model={"backbone": "python:no_such_module:build"})
    assert_user_error(validate(run_cli, config), config, "model.backbone",
                      "cannot import module 'no_such_module'", "python:MODULE:FUNCTION")


# ----------------------------------------------------------------------------------------------
# weights


def test_torchvision_weights_of_another_architecture_list_the_keys(
    image_config: Callable[..., Path], run_cli: Cli, tmp_path: Path
) -> None:
    import torchvision

    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    config = image_config(model={"backbone": f"torchvision:resnet34?weights={weights}"})
    # resnet34 has 3, 4, 6, 3 blocks per stage where resnet18 has 2 each: layer1.2 is missing.
    assert_user_error(validate(run_cli, config), weights, "model.backbone",
                      "the weights do not match torchvision's resnet34", "missing keys (",
                      "layer1.2.conv1.weight")
    resnet18 = image_config(
        name="right", model={"backbone": f"torchvision:resnet18?weights={weights}"})
    assert validate(run_cli, resnet18).code == 0  # the same file fits its own architecture


def test_hf_weights_saved_for_another_config_list_the_keys(
    text_config: Callable[..., Path], tiny_bert: Path, run_cli: Cli, tmp_path: Path
) -> None:
    folder = Path(shutil.copytree(tiny_bert, tmp_path / "bert"))
    config_json = json.loads((folder / "config.json").read_text())
    config_json["num_hidden_layers"] = 3  # the weights hold 2 layers
    (folder / "config.json").write_text(json.dumps(config_json))
    config = text_config(model={"backbone": f"hf:{folder}"})
    assert_user_error(validate(run_cli, config), folder, "model.backbone",
                      "the weights do not match the architecture in config.json",
                      "missing keys (", "encoder.layer.2.")


class RunsCode:
    """A pickle payload: unpickling it calls os.system, which would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("source", ["torchvision:resnet18", "python:user_net:build"])
def test_a_pickle_checkpoint_that_would_run_code_is_refused(
    source: str, image_config: Callable[..., Path], run_cli: Cli, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    weights = tmp_path / "evil.pth"
    weights.write_bytes(pickle.dumps({"conv1.weight": RunsCode(marker)}))
    (tmp_path / "user_net.py").write_text(
        "from torch import nn\n\ndef build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())\n"
    )
    config = image_config(model={"backbone": f"{source}?weights={weights}"})
    assert_user_error(validate(run_cli, config), weights, "model.backbone",
                      "not a plain state dict (loading it would have to run code)",
                      "safetensors")
    assert not marker.exists()  # refused before anything ran


# ----------------------------------------------------------------------------------------------
# trust_remote_code

CONFIGURATION = '''
from transformers import PretrainedConfig


class TinyConfig(PretrainedConfig):
    model_type = "tiny-remote"

    def __init__(self, vocab_size=64, hidden_size=16, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        super().__init__(**kwargs)
'''

MODELING = '''
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from .configuration_tiny import TinyConfig


class TinyModel(PreTrainedModel):
    config_class = TinyConfig
    base_model_prefix = "tiny"

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.mix = nn.Linear(config.hidden_size, config.hidden_size)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        return BaseModelOutput(last_hidden_state=torch.tanh(self.mix(self.embed(input_ids))))
'''


@pytest.fixture
def remote_code_model(tiny_bert: Path, tmp_path: Path) -> Path:
    """A model folder whose config.json maps AutoModel to a class in the folder's own code."""
    import importlib.util
    import sys

    folder = tmp_path / "remote"
    folder.mkdir()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        if (tiny_bert / name).exists():
            shutil.copy(tiny_bert / name, folder / name)
    (folder / "configuration_tiny.py").write_text(CONFIGURATION)
    (folder / "modeling_tiny.py").write_text(
        MODELING.replace("from .configuration_tiny", "from configuration_tiny"))
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location("modeling_tiny", folder / "modeling_tiny.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.TinyConfig(vocab_size=64)
        config.auto_map = {"AutoConfig": "configuration_tiny.TinyConfig",
                           "AutoModel": "modeling_tiny.TinyModel"}
        torch.manual_seed(0)
        module.TinyModel(config).save_pretrained(folder)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("configuration_tiny", None)
    (folder / "modeling_tiny.py").write_text(MODELING)  # as a model repository ships it
    return folder


def test_a_model_that_needs_remote_code_is_refused_unless_allowed(
    remote_code_model: Path, text_config: Callable[..., Path], run_cli: Cli
) -> None:
    config = text_config(model={"backbone": f"hf:{remote_code_model}"})
    assert_user_error(validate(run_cli, config), remote_code_model / "config.json",
                      "model.backbone", "this model needs trust_remote_code",
                      "AutoModel: modeling_tiny.TinyModel", "model.trust_remote_code: true")
    allowed = text_config(name="trusted", model={"backbone": f"hf:{remote_code_model}",
                                                  "trust_remote_code": True})
    result = validate(run_cli, allowed)
    assert result.code == 0, result.err[-2000:]
    assert "text-classification, 2 classes" in result.err and "16 features" in result.err


# ----------------------------------------------------------------------------------------------
# heads and losses that do not fit the task


def test_a_regression_loss_for_classes(text_config: Callable[..., Path], run_cli: Cli) -> None:
    config = text_config(train={"loss": "mse"})
    assert_user_error(validate(run_cli, config), config, "train.loss",
                      "train.loss mse does not fit a classification task",
                      "use cross_entropy or focal")


def test_a_classification_loss_for_a_number(run_cli: Cli, tmp_path: Path) -> None:
    from sklearn.datasets import load_diabetes

    table = load_diabetes(as_frame=True).frame.rename(columns={"target": "label"})
    table.to_csv(tmp_path / "diabetes.csv", index=False)
    raw = config_dict(tmp_path, data_path=tmp_path / "diabetes.csv", backbone="scratch:mlp",
                      train_settings={"loss": "focal"})
    config = write_yaml(tmp_path / "focal.yaml", raw)
    assert_user_error(validate(run_cli, config), config, "train.loss",
                      "train.loss focal does not fit a regression task", "use mse or huber")
    mixup = {**raw["data"], "augment": {"mixup": 0.2}}
    mixed = write_yaml(tmp_path / "mixup.yaml", {**raw, "train": {}, "data": mixup})
    assert_user_error(validate(run_cli, mixed), mixed, "data.augment.mixup",
                      "MixUp and CutMix mix class labels; this is a regression task")
    # settings of a classification's loss, which a regression dropped without a word
    weighted = write_yaml(tmp_path / "weights.yaml",
                          {**raw, "train": {"class_weights": "balanced"}})
    assert_user_error(validate(run_cli, weighted), weighted, "train.class_weights",
                      "class weights balance the classes of a classification; this is a "
                      "regression task", "set it to none")
    smoothed = write_yaml(tmp_path / "smoothing.yaml", {**raw, "train": {"label_smoothing": 0.1}})
    assert_user_error(validate(run_cli, smoothed), smoothed, "train.label_smoothing",
                      "this is a regression task, trained without it", "set it to 0")
    plain = write_yaml(tmp_path / "plain.yaml",
                       {**raw, "train": {"label_smoothing": 0.0, "class_weights": "none"}})
    assert validate(run_cli, plain).code == 0


def test_an_adapter_on_a_network_from_scratch(run_cli: Cli, tmp_path: Path) -> None:
    table = pd.DataFrame({"x": range(40), "y": [i % 3 for i in range(40)],
                          "label": ["a", "b"] * 20})
    table.to_csv(tmp_path / "t.csv", index=False)
    raw = config_dict(tmp_path, data_path=tmp_path / "t.csv", backbone="scratch:mlp",
                      train_settings={}, model={"strategy": "lora"})
    config = write_yaml(tmp_path / "lora.yaml", raw)
    assert_user_error(validate(run_cli, config), config, "model.strategy",
                      "lora adapts pretrained weights", "use full (or freeze:K)")


def test_a_text_backbone_for_a_table_names_the_missing_text_column(
    text_config: Callable[..., Path], run_cli: Cli, tmp_path: Path
) -> None:
    table = pd.DataFrame({"x": range(40), "label": ["a", "b"] * 20})
    table.to_csv(tmp_path / "numbers.csv", index=False)
    config = text_config(data_path=tmp_path / "numbers.csv")
    assert_user_error(validate(run_cli, config), tmp_path / "numbers.csv", "data.text_column",
                      "column 'text' not found", "scratch:mlp")


def test_a_user_module_whose_output_does_not_fit_a_head(image_config: Callable[..., Path],
                                                        run_cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "spatial_net.py").write_text(
        "from torch import nn\n\ndef build():\n    return nn.Conv2d(3, 4, 3)  # no pooling\n"
    )
    config = image_config(model={"backbone": "python:spatial_net:build"})
    result = validate(run_cli, config)
    assert_user_error(result, config, "model.backbone", "must return (batch, D) features",
                      "end the module with pooling")


def test_freezing_more_blocks_than_the_backbone_has(text_config: Callable[..., Path],
                                                     run_cli: Cli) -> None:
    config = text_config(model={"strategy": "freeze:9"}, train={"epochs": 1})
    assert_user_error(run_cli(["run", config]), config, "model.strategy",
                      "freeze:9 freezes more blocks than the backbone has (3)")
    assert not (config.parent / "runs" / "tiny-text").exists()  # stopped before the run began


def test_an_unknown_strategy_lists_the_known_ones(text_config: Callable[..., Path],
                                                   run_cli: Cli) -> None:
    config = text_config(model={"strategy": "freeze-all"})
    assert_user_error(validate(run_cli, config), config, "model.strategy",
                      "unknown strategy", "lp-ft", "gradual-unfreeze", "freeze:K", "lora")


GREEDY_NET = '''
import torch
from torch import nn


class Greedy(nn.Module):
    """Training, needs 64 GiB of scratch memory per row from 16 rows a batch on: no machine has
    that (evaluating needs none)."""

    def __init__(self, in_features):
        super().__init__()
        self.linear = nn.Linear(in_features, 8)
        self.num_features = 8

    def forward(self, x):
        if self.training and x.shape[0] >= 16:
            torch.empty(x.shape[0] * 2**36, dtype=torch.uint8)
        return self.linear(x)


def build(in_features):
    return Greedy(in_features)
'''


def test_a_batch_that_does_not_fit_in_memory(run_cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "greedy_net.py").write_text(GREEDY_NET)
    table = pd.DataFrame({"x": [float(i) for i in range(120)], "label": ["a", "b"] * 60})
    table.to_csv(tmp_path / "t.csv", index=False)
    raw = config_dict(tmp_path, data_path=tmp_path / "t.csv", backbone="python:greedy_net:build",
                      train_settings={"epochs": 1, "batch_size": 32})
    config = write_yaml(tmp_path / "greedy.yaml", raw)
    assert validate(run_cli, config).code == 0  # two rows fit
    result = run_cli(["run", config])  # training starts, then the first batch fails
    assert result.code == 2 and "Traceback" not in result.err
    message = result.err[result.err.index("error: "):]
    assert message.count("error: ") == 1
    for part in (config, "train.batch_size", "a batch of 32 does not fit in memory",
                 "can't allocate memory",
                 "lower train.batch_size (e.g. 16) and raise train.accumulate (e.g. 2)"):
        assert str(part) in message, part
    smaller = write_yaml(tmp_path / "smaller.yaml",
                         {**raw, "name": "smaller", "train": {"epochs": 1, "batch_size": 8,
                                                              "accumulate": 4}})
    assert run_cli(["run", smaller]).code == 0


# ----------------------------------------------------------------------------------------------
# Hugging Face folders that cannot be used as they are


def test_an_hf_folder_without_its_tokenizer_is_refused(
    text_config: Callable[..., Path], tiny_bert: Path, run_cli: Cli, tmp_path: Path
) -> None:
    """transformers builds a tokenizer of a few special tokens from config.json alone: every word
    trained as [UNK], at chance accuracy, with exit status 0."""
    folder = Path(shutil.copytree(tiny_bert, tmp_path / "bert"))
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink(missing_ok=True)
    config = text_config(model={"backbone": f"hf:{folder}"})
    assert_user_error(validate(run_cli, config), folder, "model.backbone",
                      "the model folder has no tokenizer vocabulary", "save_pretrained(folder)")


@pytest.mark.parametrize("damage", ["truncated", "pickle"])
def test_hf_weights_that_cannot_be_read_are_refused(
    text_config: Callable[..., Path], tiny_bert: Path, run_cli: Cli, tmp_path: Path, damage: str
) -> None:
    folder = Path(shutil.copytree(tiny_bert, tmp_path / "bert"))
    weights = folder / "model.safetensors"
    marker = tmp_path / "ran"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        expected = "cannot load the model weights: Error while deserializing header"
    else:  # the older pytorch_model.bin, a pickle that runs code when loaded
        weights.unlink()
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"x": RunsCode(marker)}))
        expected = "a pickle holding more than tensors: loading it would run code"
    config = text_config(model={"backbone": f"hf:{folder}"})
    assert_user_error(validate(run_cli, config), folder, "model.backbone", expected)
    assert not marker.exists()


def test_a_patch_transformer_refuses_another_image_size(
    image_config: Callable[..., Path], run_cli: Cli, tmp_path: Path
) -> None:
    """Its position embeddings are for one size: a forward pass failed with a traceback."""
    from transformers import ViTConfig, ViTModel

    folder = tmp_path / "vit"
    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=32)).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3, "size": {"height": 32, "width": 32}}))
    config = image_config(model={"backbone": f"hf:{folder}"}, data={"image_size": 64})
    assert_user_error(validate(run_cli, config), folder, "data.image_size",
                      "embeds positions for 32x32 images, not 64x64", "set data.image_size to 32")
    assert validate(run_cli, image_config(model={"backbone": f"hf:{folder}"})).code == 0


def test_a_weights_option_without_a_value_is_refused(
    image_config: Callable[..., Path], tiny_timm_weights: tuple[str, Path], run_cli: Cli
) -> None:
    """`?weights=` trained from random weights, and the saved config named the config's folder
    as the weights file."""
    name, _ = tiny_timm_weights
    config = image_config(model={"backbone": f"timm:{name}?weights="})
    assert_user_error(validate(run_cli, config), "model.backbone",
                      "option(s) ['weights'] given no value")


def test_a_library_network_without_weights_says_it_starts_from_random_ones(
    image_config: Callable[..., Path], tiny_timm_weights: tuple[str, Path], run_cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tunesmith.models import registry

    monkeypatch.setattr(registry, "_SAID", set())  # said once per process: this test's process
    name, weights = tiny_timm_weights
    result = validate(run_cli, image_config(model={"backbone": f"timm:{name}"}))
    assert result.code == 0
    assert f"timm:{name} has no ?weights= file: it starts from random weights" in result.err
    named = validate(run_cli, image_config(model={"backbone": f"timm:{name}?weights={weights}"}))
    assert "random weights" not in named.err


@pytest.mark.parametrize("strategy", ["freeze:K", "freeze:\u00b2"])
def test_the_freeze_placeholder_is_not_a_strategy(
    text_config: Callable[..., Path], run_cli: Cli, strategy: str
) -> None:
    config = text_config(model={"strategy": strategy})
    assert_user_error(validate(run_cli, config), "model.strategy", "unknown strategy",
                      "e.g. freeze:2")
