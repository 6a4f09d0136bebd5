"""Networks that start from random weights (a timm or torchvision network named without a weights
file, or a network from scratch) are evaluated as what they are: an image network's batch norms
measure their statistics again on a sample of training rows under the weights evaluated, and the
recipe does not average their weights.

Before, a torchvision MobileNetV3-Small from random weights predicted one class for every
validation row (val accuracy 0.10 on the digits after 2 epochs) while its training loss fell."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import IMAGE_TRAIN, CliResult, config_dict, logged, write_yaml
from tunesmith import api
from tunesmith.config import load_config
from tunesmith.models.task_model import TaskModel
from tunesmith.search import train_settings
from tunesmith.search.recipe import PRECISE_BN_ROWS
from tunesmith.train.batch_norm import recalibrate_norms, unfrozen_norms


class Net(nn.Module):
    """Features through a batch norm that trains, and one in a frozen block."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.BatchNorm1d(3, momentum=0.01)
        self.trained = nn.BatchNorm1d(3, momentum=0.01)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.trained(self.frozen(inputs["x"]) * 2.0 + 1.0)


def frozen_and_trained() -> tuple[TaskModel, Net]:
    net = Net()
    model = TaskModel.__new__(TaskModel)  # the frozen-block bookkeeping of a real TaskModel
    nn.Module.__init__(model)
    model.backbone, model.head = net, nn.Identity()  # type: ignore[assignment]
    model.frozen, model.fixed, model.fixed_modules = [net.frozen], [], []
    return model.train(), net


def test_the_statistics_are_those_of_the_rows_under_the_current_weights() -> None:
    generator = torch.Generator().manual_seed(0)
    model, net = frozen_and_trained()
    batches = [{"x": torch.randn(32, 3, generator=generator) * 3.0 + 5.0} for _ in range(2)]

    layers = unfrozen_norms(model)
    assert layers == {"backbone.trained"}
    assert recalibrate_norms(model, lambda: batches, layers=layers)
    seen = net.frozen(torch.cat([b["x"] for b in batches])) * 2.0 + 1.0  # frozen: eval mode
    torch.testing.assert_close(net.trained.running_mean, seen.mean(0))
    per_batch = torch.stack([part.var(0) for part in seen.split(32)])
    torch.testing.assert_close(net.trained.running_var, per_batch.mean(0))
    # the frozen block's statistics, the momenta and the modes are as they were
    torch.testing.assert_close(net.frozen.running_mean, torch.zeros(3))
    assert (net.frozen.momentum, net.trained.momentum) == (0.01, 0.01)
    assert model.training and net.trained.training and not net.frozen.training


def test_without_a_batch_to_measure_on_the_statistics_stay() -> None:
    model, net = frozen_and_trained()
    net.trained.running_mean.fill_(4.0)
    net.trained.num_batches_tracked.fill_(7)
    one_row = [{"x": torch.ones(1, 3)}] * 3  # a batch of one row has no variance: skipped
    assert recalibrate_norms(model, lambda: one_row, layers=unfrozen_norms(model))
    torch.testing.assert_close(net.trained.running_mean, torch.full((3,), 4.0))
    assert int(net.trained.num_batches_tracked) == 7


@pytest.mark.parametrize(
    ("backbone", "averaged", "precise_rows"),
    [("torchvision:mobilenet_v3_small", False, PRECISE_BN_ROWS),
     ("scratch:cnn", False, PRECISE_BN_ROWS),
     ("scratch:mlp", False, 0),  # hundreds of short epochs: its running statistics keep up
     ("timm-file", True, 0)],
)
def test_the_recipe_treats_random_and_pretrained_starts_apart(
    tmp_path: Path, image_folder: Path, wine_csv: Path, tiny_timm_weights: tuple[str, Path],
    backbone: str, averaged: bool, precise_rows: int,
) -> None:
    if backbone == "timm-file":  # the tiny timm network with its weights file
        name, weights = tiny_timm_weights
        backbone = f"timm:{name}?weights={weights}"
    table = backbone == "scratch:mlp"
    raw = config_dict(tmp_path, data_path=wine_csv if table else image_folder, backbone=backbone,
                      train_settings={"batch_size": 16})
    resolved = api.prepare(load_config(write_yaml(tmp_path / "c.yaml", raw))).config
    settings = train_settings(resolved, kind="classification")
    if averaged:  # over about an epoch of steps: 96 rows in batches of 16
        assert resolved.train.ema == pytest.approx(1 - 1 / 10)
    else:
        assert resolved.train.ema is None and settings.ema_decay is None
    assert settings.precise_bn_rows == precise_rows


def test_a_library_network_from_random_weights_is_scored_on_what_it_learned(
    tmp_path: Path, image_folder: Path, run_cli: Callable[[list[str | Path]], CliResult]
) -> None:
    """End to end. Before, every epoch of this run scored 0.5 on validation, one class for every
    row, while the training loss fell from 0.69 to 0.25."""
    raw = config_dict(tmp_path, data_path=image_folder, backbone="torchvision:mobilenet_v3_small",
                      train_settings={**IMAGE_TRAIN, "epochs": 6, "lr": 1e-3}, name="random")
    result = run_cli(["run", write_yaml(tmp_path / "c.yaml", raw)])
    assert result.code == 0, result.err[-2000:]
    epochs = logged(tmp_path / "runs" / "random" / "trials" / "0")
    assert epochs[-1]["train_loss"] < 0.4
    assert max(e["val_accuracy"] for e in epochs) >= 0.9
