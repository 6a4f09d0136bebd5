"""Adapter strategies (lora, dora, loha): which layers they may wrap, where their settings apply,
and the learning rate each adapter trains at.

`model.peft.targets` is checked against the backbone when the config is prepared (so `tunesmith
validate` finds a bad name) and again by `add_adapter` before PEFT touches the network. The
layer-wise decay gives an adapter the rate of the block its layer sits in: the optimizer the
training loop builds is captured and its groups compared with the decay worked out by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conftest import CliResult
from tunesmith import api
from tunesmith.config import load_config
from tunesmith.errors import TunesmithError
from tunesmith.models.backbone import Backbone
from tunesmith.models.strategies import (
    AdapterSettings,
    add_adapter,
    check_adapter_targets,
    has_adapter,
)
from tunesmith.search import strategy_plan, train_settings
from tunesmith.train import fine_tune
from tunesmith.train.optim import make_optimizer

Cli = Callable[[Sequence[str | Path]], CliResult]
BERT_LAYERS = "query, key, value, dense"  # the tiny BERT's linear layers, as the fix lists them


def prepare_with(config: Path, *overrides: str) -> api.Prepared:
    return api.prepare(load_config(config, list(overrides)))


# ----------------------------------------------------------------------------------------------
# model.peft.targets


@pytest.mark.parametrize(
    ("method", "targets", "problem"),
    [
        ("lora", "[LayerNorm]", "lora cannot wrap: LayerNorm (embeddings.LayerNorm: LayerNorm)"),
        ("lora", "[attention]", "attention (encoder.layer.0.attention: BertAttention, a "
                                "container of other layers)"),
        ("loha", "[word_embeddings]", "loha cannot wrap: word_embeddings "
                                      "(embeddings.word_embeddings: Embedding)"),
        ("dora", "[query, nonexistent]", "names layers the backbone lacks: nonexistent"),
        ("lora", "[]", "an empty list adapts no layer"),
    ],
)
def test_targets_an_adapter_cannot_wrap_are_a_config_error(
    text_config: Callable[..., Path], method: str, targets: str, problem: str
) -> None:
    config = text_config()
    with pytest.raises(TunesmithError) as caught:
        prepare_with(config, f"model.strategy={method}", f"model.peft.targets={targets}")
    error = caught.value
    assert (error.file, error.field) == (str(config), "model.peft.targets")
    assert problem in error.problem
    assert error.fix is not None
    assert f"list layers {method} can wrap" in error.fix and BERT_LAYERS in error.fix
    assert "model.peft.targets to auto" in error.fix


def test_validate_refuses_a_target_peft_cannot_wrap(
    text_config: Callable[..., Path], run_cli: Cli
) -> None:
    """It returned 0, and `tunesmith run` then failed with PEFT's ValueError (exit status 1)."""
    config = text_config()
    result = run_cli(["validate", config, "--set", "model.strategy=lora",
                      "--set", "model.peft.targets=[LayerNorm]"])
    assert result.code == 2, result.err[-2000:]
    assert "Traceback" not in result.err
    assert f"{config}: model.peft.targets: names layers lora cannot wrap: LayerNorm" in result.err
    assert "fix: list layers lora can wrap" in result.err


def test_add_adapter_refuses_bad_targets_before_wrapping(text_config: Callable[..., Path]) -> None:
    prepared = prepare_with(text_config(), "model.strategy=lora")
    model = api.task_model(prepared)
    network = model.backbone.network
    with pytest.raises(TunesmithError) as caught:
        add_adapter(model, AdapterSettings("loha", r=4, alpha=8, dropout=0.0,
                                           targets=["word_embeddings"]))
    assert caught.value.field == "model.peft.targets"
    assert model.backbone.network is network and not has_adapter(model)
    with pytest.raises(TunesmithError, match="empty list"):
        add_adapter(model, AdapterSettings("lora", r=4, alpha=8, dropout=0.0, targets=[]))
    assert not has_adapter(model)

    wrapped = add_adapter(model, AdapterSettings("lora", r=4, alpha=8, dropout=0.0,
                                                 targets=["query", "value"]))
    assert wrapped == ["query", "value"]
    adapted = sorted(name for name, module in model.named_modules() if hasattr(module, "lora_A"))
    assert [name.split("network.")[-1] for name in adapted] == [
        f"base_model.model.encoder.layer.{i}.attention.self.{layer}"
        for i in (0, 1) for layer in ("query", "value")
    ]


def test_targets_are_checked_when_the_search_draws_the_strategy(
    text_config: Callable[..., Path],
) -> None:
    config = text_config(search={"trials": 4}, model={"peft": {"targets": ["LayerNorm"]}})
    with pytest.raises(TunesmithError) as caught:
        prepare_with(config)
    assert caught.value.field == "model.peft.targets"
    assert "an adapter cannot wrap: LayerNorm" in caught.value.problem


class Net(Backbone):
    """A backbone only to be checked, holding the layers PEFT would wrap without effect."""

    def __init__(self) -> None:
        super().__init__()
        self.network = nn.Sequential(
            nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 8, 1), nn.MultiheadAttention(8, 2)
        )


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("0", "0 (0: a Conv2d with groups=8, not a convolution over all channels)"),
        ("out_proj", "out_proj (2.out_proj: the output projection of a MultiheadAttention, "
                     "which never calls it)"),
    ],
)
def test_layers_an_adapter_would_never_change_are_refused(target: str, why: str) -> None:
    with pytest.raises(TunesmithError) as caught:
        check_adapter_targets(Net(), [target], method="lora")
    assert why in caught.value.problem
    assert caught.value.fix is not None and "(e.g. 1)" in caught.value.fix
    check_adapter_targets(Net(), ["1"], method="lora")  # the plain convolution is fine


# ----------------------------------------------------------------------------------------------
# model.peft without an adapter strategy


@pytest.mark.parametrize(("strategy", "shown"), [("full", "full"), ("auto", "auto (full)")])
def test_peft_settings_without_an_adapter_strategy_are_a_config_error(
    text_config: Callable[..., Path], strategy: str, shown: str
) -> None:
    """They were resolved to `peft: null` and silently dropped."""
    config = text_config()
    with pytest.raises(TunesmithError) as caught:
        prepare_with(config, f"model.strategy={strategy}", "model.peft.r=64")
    error = caught.value
    assert (error.file, error.field) == (str(config), "model.peft")
    assert error.problem == f"model.peft.r=64 is set, but model.strategy {shown} trains no adapter"
    assert error.fix == "set model.strategy to lora, dora or loha, or remove model.peft"


def test_a_search_keeps_fixed_peft_settings_for_the_adapter_trials(
    text_config: Callable[..., Path],
) -> None:
    """The search draws model.strategy; the user's rank applies to the trials that draw lora."""
    given = load_config(text_config(search={"trials": 4}, model={"peft": {"r": 64}}))
    assert api.prepare(given).config.model.peft is None  # the recipe: full
    full = api.prepare(given.with_values({"model.strategy": "full"}))
    lora = api.prepare(given.with_values({"model.strategy": "lora"}))
    assert full.config.model.peft is None
    assert lora.config.model.peft is not None and lora.config.model.peft.r == 64


# ----------------------------------------------------------------------------------------------
# layer-wise learning-rate decay


ADAPTER_MARKS = ("lora_", "hada_")


@pytest.mark.parametrize("strategy", ["full", "lora", "loha"])
def test_layer_decay_gives_each_adapter_the_rate_of_its_block(
    text_config: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    strategy: str,
) -> None:
    """Adapters trained in one group at the top rate, whatever the decay; full fine-tuning is as
    it was. One optimizer step on one batch of all 192 rows, no warm-up, no weight decay: Adam's
    first step moves each weight by lr * g / (|g| + eps), so the largest move within a group is
    the rate it trains at. (A random head: behind a zero head nothing below has a gradient; no
    adapter dropout: LoHa's drops whole layers.)"""
    adapter = [] if strategy == "full" else ["model.peft.dropout=0"]
    prepared = prepare_with(
        text_config(), f"model.strategy={strategy}", "train.layer_decay=0.5", "train.epochs=1",
        "train.warmup=0", "train.weight_decay=0", "train.ema=null", "train.batch_size=192",
        "model.freeze_embeddings=false", "model.head.init=xavier_uniform", *adapter)
    model = api.task_model(prepared)
    settings = train_settings(prepared.config, kind=prepared.kind)
    lr, head_lr = settings.lr, settings.head_lr
    assert (settings.layer_decay, lr, head_lr) == (0.5, 2e-3, 5e-3)
    expected = {"embeddings": lr / 4, "encoder.layer.0": lr / 2, "encoder.layer.1": lr,
                "head": head_lr}

    # The groups as the training loop builds them, before any step (a block has one group for
    # its weights and one for its biases and norms): each block's rate, and its trainable
    # parameters by name with their values then.
    rates: dict[str, set[float]] = {}
    trained: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}

    def capture(kind: str, groups: list[dict[str, Any]], **options: Any) -> torch.optim.Optimizer:
        names = {id(p): name for name, p in model.named_parameters()}
        for group in groups:
            rates.setdefault(group["block"], set()).add(group["lr"])
            trained.setdefault(group["block"], {}).update(
                (names[id(p)], (p, p.detach().clone())) for p in group["params"] if p.requires_grad
            )
        return make_optimizer(kind, groups, **options)

    monkeypatch.setattr("tunesmith.train.loop.make_optimizer", capture)
    batches = api.batches_for(prepared, settings.batch_size, settings.seed)
    assert len(batches.train) == 1
    fine_tune(model, batches, settings, strategy_plan(prepared.config, settings), tmp_path)

    assert all(len(rate) == 1 for rate in rates.values())
    assert {block: rate.pop() for block, rate in rates.items()} == pytest.approx(expected)
    for block, parameters in trained.items():
        adapters = [name for name in parameters if any(mark in name for mark in ADAPTER_MARKS)]
        if strategy == "full" or block == "head":
            assert adapters == []
        else:  # only adapters train, each in the block of the layer it wraps
            assert sorted(adapters) == sorted(parameters)
            assert bool(adapters) == block.startswith("encoder.layer.")
            assert all(f".{block}." in name for name in adapters), adapters[:3]
        if parameters:
            moves = [(p.detach() - before).abs().max().item() for p, before in parameters.values()]
            assert max(moves) == pytest.approx(expected[block], rel=2e-3), block
