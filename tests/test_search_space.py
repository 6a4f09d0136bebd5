"""The search space: what is searched for which data, what the user fixes or narrows, and the
draws of a trial (tested with optuna.trial.FixedTrial, as Optuna's own docs suggest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from tunesmith.config import Config, config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.search.recipe import DataProfile
from tunesmith.search.space import (
    SpaceContext,
    config_values,
    recipe_values,
    search_space,
    suggest,
)

TEXT = DataProfile(modality="text", train_rows=3_500, classes=2)
IMAGE = DataProfile(modality="image", train_rows=3_600, classes=10, median_image_side=28)
TABLE = DataProfile(modality="tabular", train_rows=400, classes=2, in_features=30)


def config(backbone: str = "hf:m", **sections: Any) -> Config:
    raw = {"name": "s", "data": {"train": "d.csv"}, "model": {"backbone": backbone}, **sections}
    for key in ("model", "data"):
        if key in sections:
            raw[key] = {**({"backbone": backbone} if key == "model" else {"train": "d.csv"}),
                        **sections[key]}
    return config_from_dict(raw, source="config.yaml", base_dir=Path("."))


# A resolved recipe, as tunesmith.search.recipe.resolve writes it (the values the space reads).
RECIPE = config(
    train={"lr": 1e-4, "epochs": 4, "batch_size": 16, "weight_decay": 0.01, "warmup": 0.1,
           "label_smoothing": 0.0, "optimizer": "adamw", "layer_decay": 1.0},
    model={"strategy": "full", "head": {"layers": 0, "hidden": 256, "activation": "gelu",
                                        "init": "default", "dropout": 0.1}},
)


def is_log_range(distribution: Any, low: float, high: float) -> bool:
    return isinstance(distribution, FloatDistribution) and distribution.log and (
        distribution.low, distribution.high) == (pytest.approx(low), pytest.approx(high))


def context(profile: DataProfile, *, scratch: bool = False, blocks: int = 8) -> SpaceContext:
    return SpaceContext(profile=profile, recipe=RECIPE, blocks=blocks, scratch=scratch)


def test_a_pretrained_text_model_searches_training_strategy_and_head_but_no_augmentation() -> None:
    space = search_space(context(TEXT), config())
    keys = set(space.keys)
    assert {"train.lr", "model.strategy", "model.peft.r", "model.head.layers",
            "train.label_smoothing", "train.epochs"} <= keys
    assert not keys & {"data.augment.preset", "data.augment.mixup", "model.scratch.depth"}
    params = {p.name: p.distribution for p in space.params}
    # the rate is searched on a log scale around the recipe's: 1e-4 / 5 to 1e-4 * 5 for AdamW,
    # and around SGD's own scale of it (300 times for text) where a trial draws SGD
    assert params["train.lr"] == FloatDistribution(2e-5, 5e-4, log=True)
    assert is_log_range(params["train.lr@sgd"], 0.006, 0.15)
    assert params["train.optimizer"] == CategoricalDistribution(["adamw", "sgd"])
    assert params["train.epochs"] == IntDistribution(2, 8)
    assert params["train.batch_size"] == CategoricalDistribution([8, 16, 32])
    assert set(params["model.strategy"].choices) == {  # type: ignore[attr-defined]
        "full", "lp-ft", "linear-probe", "lora", "freeze:4"
    }


def test_images_add_augmentation_and_mixup_and_tables_from_scratch_search_the_network() -> None:
    image = set(search_space(context(IMAGE), config("timm:m")).keys)
    assert {"data.augment.preset", "data.augment.mixup", "model.strategy"} <= image
    table = set(search_space(context(TABLE, scratch=True), config("scratch:mlp")).keys)
    assert {"model.scratch.depth", "model.scratch.width", "model.scratch.dropout"} <= table
    assert not table & {"model.strategy", "model.peft.r", "data.augment.preset"}


def test_conditional_parameters_are_drawn_only_where_they_apply() -> None:
    space = search_space(context(TEXT), config())
    base = {"train.lr": 1e-4, "train.weight_decay": 0.01, "train.epochs": 4,
            "train.batch_size": 16, "train.warmup": 0.1, "train.label_smoothing": 0.0,
            "train.optimizer": "adamw", "model.head.layers": 0, "model.head.init": "default",
            "model.head.dropout": 0.1}
    lora = suggest(optuna.trial.FixedTrial(
        {**base, "model.strategy": "lora", "model.peft.r": 16, "model.peft.alpha": 32}), space)
    assert lora["model.peft.r"] == 16 and "train.layer_decay" not in lora
    assert "model.head.hidden" not in lora  # no hidden layer, no width
    full = suggest(optuna.trial.FixedTrial(
        {**base, "model.strategy": "full", "train.layer_decay": 0.8, "model.head.layers": 1,
         "model.head.hidden": 256, "model.head.activation": "gelu"}), space)
    assert full["train.layer_decay"] == 0.8 and full["model.head.hidden"] == 256
    assert "model.peft.r" not in full


def test_a_trial_that_draws_sgd_draws_its_rate_from_sgd_s_range() -> None:
    """SGD at AdamW's rate barely moves a pretrained network (MiniLM, one epoch: val 0.74 at 1e-4
    against 0.81 at 3e-2): each optimizer's rate is its own parameter, drawn where it applies,
    and both set train.lr."""
    listed = {"search": {"space": {"train.optimizer": ["adamw", "sgd"]}}}
    for profile, backbone, scratch, adamw, sgd in (
            (TEXT, "hf:m", False, (2e-5, 5e-4), (6e-3, 0.15)),
            (IMAGE, "timm:m", False, (2e-5, 5e-4), (6e-4, 0.015)),
            (TABLE, "scratch:mlp", True, (2e-5, 5e-4), (6e-4, 0.015))):
        # a network from scratch searches the optimizer where search.space lists it
        space = search_space(context(profile, scratch=scratch),
                             config(backbone, **(listed if scratch else {})))
        assert "train.optimizer" in space.keys
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(40):
            trial = study.ask()
            drawn = suggest(trial, space)
            low, high = sgd if drawn["train.optimizer"] == "sgd" else adamw
            assert low * 0.999 <= drawn["train.lr"] <= high * 1.001, (profile.modality, drawn)
            names = {"train.lr@sgd"} if drawn["train.optimizer"] == "sgd" else {"train.lr"}
            assert names == {n for n in trial.params if n.startswith("train.lr")}
            assert config_values(trial.params)["train.lr"] == drawn["train.lr"]
            study.tell(trial, 0.0)
        optimizers = [t.params["train.optimizer"] for t in study.trials]
        assert 5 < optimizers.count("sgd") < 35


def test_a_network_from_scratch_searches_the_optimizer_only_where_listed() -> None:
    space = search_space(context(TABLE, scratch=True), config("scratch:mlp"))
    assert "train.optimizer" not in space.keys and "train.optimizer" not in space.fixed
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        drawn = suggest(trial, space)
        assert "train.lr" in trial.params and "train.lr@sgd" not in trial.params
        assert "train.optimizer" not in drawn  # the recipe's AdamW


def test_a_config_that_fixes_sgd_searches_only_sgd_s_rate_around_its_recipe() -> None:
    """The recipe resolves SGD's rate for SGD (here 3e-2, as `recipe.resolve` gives text);
    trial 0 is queued under the parameter's own name."""
    recipe = RECIPE.with_values({"train.optimizer": "sgd", "train.lr": 3e-2})
    space = search_space(SpaceContext(profile=TEXT, recipe=recipe, blocks=8, scratch=False),
                         config(train={"optimizer": "sgd"}))
    assert space.fixed["train.optimizer"] == "sgd"
    rates = [p for p in space.params if p.key == "train.lr"]
    assert [p.name for p in rates] == ["train.lr", "train.lr@sgd"]
    assert is_log_range(rates[1].distribution, 0.006, 0.15)
    first = recipe_values(space, recipe)
    assert first["train.lr@sgd"] == 3e-2 and "train.lr" not in first
    assert suggest(optuna.trial.FixedTrial(first), space)["train.lr"] == 3e-2


def test_narrowing_the_rate_narrows_both_optimizers_rates() -> None:
    space = search_space(context(TEXT), config(search={"space": {"train.lr": {"low": 1e-5,
                                                                             "high": 1e-3}}}))
    rates = {p.name: p.distribution for p in space.params if p.key == "train.lr"}
    assert rates == {name: FloatDistribution(1e-5, 1e-3, log=True)
                     for name in ("train.lr", "train.lr@sgd")}


def test_conditions_read_the_values_the_user_fixed() -> None:
    """A user who fixes the strategy to LoRA gets its rank and alpha searched (not the layer-wise
    decay of full fine-tuning); one who fixes two head layers gets their width searched."""
    draws = []
    for model in ({"strategy": "lora"}, {"head": {"layers": 2}}):
        space = search_space(context(TEXT), config(model=model))
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        draws.append([suggest(study.ask(), space) for _ in range(8)])
        trial_zero = recipe_values(space, RECIPE)
        draws[-1].append(trial_zero)
    lora, two_layers = draws
    assert all({"model.peft.r", "model.peft.alpha"} <= set(d) for d in lora)
    assert not any("train.layer_decay" in d for d in lora)
    assert len({d["model.peft.r"] for d in lora}) > 1  # searched, not one value
    assert all({"model.head.hidden", "model.head.activation"} <= set(d) for d in two_layers)
    assert len({d["model.head.hidden"] for d in two_layers}) > 1


def test_a_value_the_user_gave_is_fixed_and_not_searched() -> None:
    given = config(train={"lr": 3e-5}, model={"strategy": "lora"}, data={"augment": {"mixup": 0.0}})
    space = search_space(context(IMAGE), given)
    assert "train.lr" not in space.keys and "model.strategy" not in space.keys
    assert "data.augment.mixup" not in space.keys  # written by the user, even at its default
    assert space.fixed == {"train.lr": 3e-5, "model.strategy": "lora", "data.augment.mixup": 0.0}
    assert "data.augment.preset" in space.keys  # a default the user did not write is searched


def test_a_fixed_rate_outside_the_searched_range_still_builds_the_space() -> None:
    """The recipe's rate is the center of the searched one; a rate fixed at 1e10 made a range
    whose low end was above its high end, and the search stopped with a traceback."""
    recipe = RECIPE.with_values({"train.lr": 1e10})
    space = search_space(SpaceContext(profile=TEXT, recipe=recipe, blocks=8, scratch=False),
                         config(train={"lr": 1e10}))
    assert space.fixed["train.lr"] == 1e10 and "train.lr" not in space.keys
    low = RECIPE.with_values({"train.lr": 1e-9})
    params = {p.key: p.distribution
              for p in search_space(SpaceContext(profile=TEXT, recipe=low, blocks=8,
                                                 scratch=False), config()).params}
    lr = params["train.lr"]
    assert isinstance(lr, FloatDistribution) and lr.log
    assert (lr.low, lr.high) == (1e-6, pytest.approx(5e-6))  # the range's end, times 5


def test_search_space_narrows_to_choices_or_a_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = config(search={"space": {"model.strategy": ["full", "lora"],
                                     "train.lr": {"low": 1e-5, "high": 1e-4},
                                     "model.head.layers": {"low": 1, "high": 2},
                                     "model.backbone": ["hf:a", "hf:b"]}})
    for folder in ("a", "b"):  # paths read relative to the config's folder, here "."
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.json").write_text('{"model_type": "bert"}')
    monkeypatch.chdir(tmp_path)
    params = {p.key: p.distribution for p in search_space(context(TEXT), given).params}
    assert params["model.strategy"] == CategoricalDistribution(["full", "lora"])
    assert params["train.lr"] == FloatDistribution(1e-5, 1e-4, log=True)
    assert params["model.head.layers"] == IntDistribution(1, 2)
    assert params["model.backbone"] == CategoricalDistribution(["hf:a", "hf:b"])


@pytest.mark.parametrize(
    ("space", "field", "says"),
    [
        ({"model.strategy": ["full", "everything"]}, "search.space.model.strategy", "everything"),
        ({"train.lr": {"low": 1e-4, "high": 5.0}}, "search.space.train.lr", "outside"),
        ({"model.head.dropout": {"low": 0.5, "high": 0.1}}, "search.space.model.head.dropout",
         "low > high"),
        ({"train.momentum": [0.9, 0.95]}, "search.space.train.momentum", "not searched"),
        ({"model.head.activation": {"low": 0, "high": 1}}, "search.space.model.head.activation",
         "choices, not a range"),
        ({"train.epochs": []}, "search.space.train.epochs", "no choices"),
        ({"model.backbone": ["hgf:m2"]}, "search.space.model.backbone",
         "unknown backbone source 'hgf'"),
        ({"model.backbone": ["hf:no-such-folder"]}, "search.space.model.backbone",
         "no-such-folder: model folder not found"),
        ({"model.backbone": ["hf:."]}, "search.space.model.backbone",
         "not a Hugging Face model folder: config.json is missing"),
        ({"model.backbone": ["timm:resnet18?weights=gone.safetensors"]},
         "search.space.model.backbone", "gone.safetensors does not exist"),
        ({"model.backbone": ["scratch:mlp"]}, "search.space.model.backbone",
         "scratch:mlp reads tabular inputs, but the task is text"),
        ({"model.backbone": ["scratch:mlpx"]}, "search.space.model.backbone",
         "scratch has no network named 'mlpx'"),  # was found only when a trial built it
    ],
)
def test_a_search_space_override_outside_allowed_values_names_the_key(
    space: dict[str, Any], field: str, says: str
) -> None:
    with pytest.raises(TunesmithError) as caught:
        search_space(context(TEXT), config(search={"space": space}))
    assert caught.value.field == field and says in caught.value.problem
    assert caught.value.fix


def test_a_key_both_fixed_and_searched_is_refused() -> None:
    with pytest.raises(TunesmithError, match="also searched") as caught:
        search_space(context(TEXT), config(train={"lr": 1e-4},
                                           search={"space": {"train.lr": [1e-4, 1e-5]}}))
    assert caught.value.field == "search.space.train.lr"


def test_trial_zero_takes_the_recipe_values_brought_inside_narrowed_ranges() -> None:
    space = search_space(context(TEXT), config(search={"space": {
        "train.lr": {"low": 2e-4, "high": 1e-3}, "train.batch_size": [32, 64]}}))
    values = recipe_values(space, RECIPE)
    assert values["train.lr"] == 2e-4  # the recipe's 1e-4, raised to the narrowed range
    assert values["train.batch_size"] == 32  # the nearest choice to 16
    assert values["model.strategy"] == "full" and values["train.epochs"] == 4
    assert "model.peft.r" not in values  # the recipe does not use LoRA
    # the recipe's values are a valid draw of the space
    assert suggest(optuna.trial.FixedTrial(values), space) == values


def test_a_seeded_sampler_draws_the_same_trials() -> None:
    from tunesmith.search.study import make_sampler

    space = search_space(context(TEXT), config())

    def draws(seed: int) -> list[dict[str, Any]]:
        study = optuna.create_study(sampler=make_sampler(seed), direction="maximize")
        out = []
        for index in range(8):
            trial = study.ask()
            values = suggest(trial, space)
            study.tell(trial, float(index % 3))
            out.append(values)
        return out

    assert draws(0) == draws(0)
    assert draws(0) != draws(1)


def test_the_random_sampler_baseline_draws_uniformly_and_repeats_for_a_seed() -> None:
    from tunesmith.search.study import make_sampler

    def draws(seed: int) -> list[float]:
        study = optuna.create_study(sampler=make_sampler(seed, "random"))
        study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=200)
        return [t.params["x"] for t in study.trials]

    first = draws(7)
    assert first == draws(7) and first != draws(8)
    # uniform: each tenth of the range gets about a tenth of 200 draws
    counts = np.histogram(first, bins=10, range=(0.0, 1.0))[0]
    assert counts.min() >= 8 and counts.max() <= 34


def test_pruning_waits_for_the_random_start_and_tpe_models_trials_of_every_bracket() -> None:
    from optuna.pruners import _filter_study

    from tunesmith.search.study import STARTUP_TRIALS, make_pruner, make_sampler

    # One Hyperband bracket (2 epochs): at epoch 1 a trial far behind the first one is one
    # successive halving stops, but not before STARTUP_TRIALS trials have completed.
    study = optuna.create_study(direction="maximize", sampler=make_sampler(0),
                                pruner=make_pruner("hyperband", max_epochs=2))
    verdicts = []
    for number in range(STARTUP_TRIALS + 2):
        trial = study.ask()
        value = 0.9 if number == 0 else 0.5 - 0.05 * number  # each one further behind
        trial.report(value, 1)
        verdicts.append(trial.should_prune())
        if verdicts[-1]:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            trial.report(value, 2)
            study.tell(trial, value)
    assert verdicts == [False] * STARTUP_TRIALS + [True, True]
    # The sampler is shown the whole study, not the current trial's bracket of it.
    frozen = study.trials[-1]
    assert _filter_study(study, frozen) is study
    bare = optuna.create_study(pruner=optuna.pruners.HyperbandPruner(max_resource=30))
    bare.enqueue_trial({})
    bare_trial = bare.ask()
    assert _filter_study(bare, bare.trials[bare_trial.number]) is not bare  # Optuna's own way


def test_validate_checks_the_search_space(
    text_config: Any, run_cli: Any, tmp_path: Path
) -> None:
    """validate said ok; run then refused the space after writing a run folder."""
    config = text_config(search={"trials": 3, "space": {"train.bogus": [1, 2]}})
    result = run_cli(["validate", config])
    assert result.code == 2 and "search.space.train.bogus" in result.err
    assert "is not searched for this data and backbone" in result.err
    assert not (tmp_path / "runs").exists()
    fine = text_config("fine", search={"trials": 3, "space": {"train.weight_decay": [0.0, 0.01]}})
    assert run_cli(["validate", fine]).code == 0


@pytest.mark.parametrize(("model", "space", "refused"), [
    ({"strategy": "full", "peft": {"r": 64}}, {}, True),
    ({"peft": {"r": 64}}, {"model.strategy": ["full", "linear-probe"]}, True),
    ({"peft": {"r": 64}}, {}, False),  # the strategy searched among choices with lora
    ({"strategy": "lora", "peft": {"r": 64}}, {}, False),
])
def test_peft_settings_no_trial_would_use_are_refused(
    model: dict[str, Any], space: dict[str, Any], refused: bool
) -> None:
    """A searching config that fixed strategy full kept model.peft and dropped it silently."""
    given = config(model=model, search={"space": space, "trials": 4})
    if not refused:
        assert search_space(context(TEXT), given).fixed["model.peft.r"] == 64  # kept for lora
        return
    with pytest.raises(TunesmithError) as caught:
        search_space(context(TEXT), given)
    assert caught.value.field == "model.peft"
    assert "no trial trains an adapter" in caught.value.problem
