"""The search space: which config values a trial may change, and over what, given the data.

`search_space(context, config)` lists the searched parameters, each a dotted config key with an
Optuna distribution and, where it only means something for some trials (LoRA's rank, the width of
a hidden head layer), the condition under which it is drawn. Values the user gave in the config
are fixed and never searched; `search.space` narrows a parameter to a list of choices or a range,
inside what the parameter allows.

`suggest(trial, space)` is pure: it draws from an Optuna trial (or `optuna.trial.FixedTrial`) and
returns the values as config overrides; the recipe resolves everything left at `auto`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from tunesmith.config import Config, Range
from tunesmith.data.sources import Modality
from tunesmith.errors import TunesmithError
from tunesmith.search.recipe import DataProfile, rate_scale

Values = dict[str, Any]
Condition = Callable[[Values], bool]


@dataclass(frozen=True)
class SpaceContext:
    """What the space depends on besides the data profile."""

    profile: DataProfile
    recipe: Config  # the resolved recipe (trial 0): ranges are centred on its values
    blocks: int  # backbone blocks, for freeze:K
    scratch: bool  # a network trained from scratch (no strategy, no adapters)
    adapters: bool = True  # adapter strategies apply (not to a user's own module)


@dataclass(frozen=True)
class Param:
    key: str  # dotted config key
    distribution: BaseDistribution
    condition: Condition | None = None
    # What the parameter may take at all, for a user's narrowing: (low, high) or choices.
    allowed: tuple[float, float] | tuple[Any, ...] = ()
    # Where two parameters set one key under different conditions (the learning rate of AdamW
    # and of SGD), each is its own Optuna parameter, `key@variant`: one distribution per name.
    variant: str = ""
    # Searched only where `search.space` lists it: a choice that rarely matters for this network
    # and would cost the sampler draws.
    opt_in: bool = False

    @property
    def name(self) -> str:
        """The Optuna parameter's name."""
        return f"{self.key}@{self.variant}" if self.variant else self.key

    def applies(self, values: Values) -> bool:
        return self.condition is None or self.condition(values)


def config_values(params: dict[str, Any]) -> Values:
    """A trial's Optuna parameters as config values: `train.lr@sgd` sets `train.lr`."""
    return {name.split("@", 1)[0]: value for name, value in params.items()}


@dataclass(frozen=True)
class Space:
    params: tuple[Param, ...]
    fixed: Values = field(default_factory=dict)  # searched nowhere: given by the user

    @property
    def keys(self) -> list[str]:
        return [param.key for param in self.params]


def _get(config: Config, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _log_range(center: float, factor: float, low: float, high: float) -> FloatDistribution:
    """`center` times and over `factor`, within [low, high] (a center outside it, a rate the
    config fixed at 10, gives the end of the range it is beyond)."""
    center = min(max(center, low), high)
    return FloatDistribution(max(low, center / factor), min(high, center * factor), log=True)


def _sgd(values: Values) -> bool:
    return str(values.get("train.optimizer", "adamw")) == "sgd"


def _adaptive(values: Values) -> bool:  # AdamW or Adam
    return not _sgd(values)


def _adapter(values: Values) -> bool:
    return str(values.get("model.strategy", "")) in ("lora", "dora", "loha")


def _fine_tunes_blocks(values: Values) -> bool:
    return str(values.get("model.strategy", "full")) in ("full", "lp-ft")


def _hidden_layers(values: Values) -> bool:
    return int(values.get("model.head.layers", 0)) > 0


def candidate_params(context: SpaceContext) -> list[Param]:
    """Every parameter this data and backbone make sense of, with its default range."""
    profile, recipe = context.profile, context.recipe
    train = recipe.train
    image = profile.modality == "image"
    # The recipe's rate as AdamW's (it is SGD's where the config fixes SGD): each optimizer's
    # range is centred on its own scale of it.
    lr = float(train.lr) / rate_scale(str(train.optimizer), profile.modality)
    epochs = int(train.epochs)
    batch = int(train.batch_size)
    params = [
        # A small network from scratch scores alike with either (the tables' MLPs, SGD from 1e-3
        # to 0.3 against AdamW): searching it there delayed both tables' searches, from reaching
        # random search's best at 18 s and 15 s to 46 s and 66 s, with the same test accuracy.
        Param("train.optimizer", CategoricalDistribution(["adamw", "sgd"]),
              allowed=("adamw", "adam", "sgd"), opt_in=context.scratch),
        Param("train.lr", _log_range(lr, 5.0, 1e-6, 1.0), _adaptive, allowed=(1e-7, 1.0)),
        Param("train.lr", _log_range(lr * rate_scale("sgd", profile.modality), 5.0, 1e-6, 1.0),
              _sgd, allowed=(1e-7, 1.0), variant="sgd"),
        Param("train.weight_decay", FloatDistribution(0.0, 0.1), allowed=(0.0, 1.0)),
        Param("train.epochs", IntDistribution(max(1, epochs // 2), max(2, 2 * epochs)),
              allowed=(1, 1000)),
        Param("train.batch_size",
              CategoricalDistribution(sorted({max(2, batch // 2), batch, 2 * batch})),
              allowed=(1, 65536)),
        Param("train.warmup", FloatDistribution(0.0, 0.2), allowed=(0.0, 0.9)),
    ]
    if profile.kind == "classification":
        params.append(Param("train.label_smoothing", FloatDistribution(0.0, 0.2),
                            allowed=(0.0, 0.5)))
    if context.scratch:
        params += [
            Param("model.scratch.depth", IntDistribution(1, 4), allowed=(0, 16)),
            Param("model.scratch.dropout", FloatDistribution(0.0, 0.5), allowed=(0.0, 0.9)),
            Param("model.scratch.activation",
                  CategoricalDistribution(["relu", "gelu", "silu", "tanh"]),
                  allowed=("relu", "gelu", "silu", "tanh", "sigmoid", "leaky_relu")),
        ]
        if profile.modality == "tabular":
            params.append(Param("model.scratch.width",
                                CategoricalDistribution([64, 128, 256, 512]), allowed=(1, 65536)))
        return params
    adapters = ("lora", "dora", "loha") if context.adapters else ()
    strategies = ["full", "lp-ft", "linear-probe", *adapters[:1]]
    if context.blocks >= 4:
        strategies.append(f"freeze:{context.blocks // 2}")
    params += [
        Param("model.strategy", CategoricalDistribution(strategies),
              allowed=("full", "lp-ft", "linear-probe", "gradual-unfreeze", *adapters,
                       *(f"freeze:{k}" for k in range(context.blocks + 1)))),
        Param("train.layer_decay", FloatDistribution(0.6, 1.0), _fine_tunes_blocks,
              allowed=(0.1, 1.0)),
        Param("model.peft.r", CategoricalDistribution([4, 8, 16, 32]), _adapter,
              allowed=(1, 1024)),
        Param("model.peft.alpha", CategoricalDistribution([8, 16, 32, 64]), _adapter,
              allowed=(1, 4096)),
        Param("model.head.layers", IntDistribution(0, 2), allowed=(0, 8)),
        Param("model.head.hidden", CategoricalDistribution([128, 256, 512, 1024]),
              _hidden_layers, allowed=(1, 65536)),
        Param("model.head.activation", CategoricalDistribution(["relu", "gelu", "silu", "tanh"]),
              _hidden_layers, allowed=("relu", "gelu", "silu", "tanh", "sigmoid", "leaky_relu")),
        Param("model.head.init",
              CategoricalDistribution(["default", "xavier_uniform", "kaiming_normal", "zeros"]),
              allowed=("default", "xavier_uniform", "xavier_normal", "kaiming_uniform",
                       "kaiming_normal", "orthogonal", "zeros")),
        Param("model.head.dropout", FloatDistribution(0.0, 0.5), allowed=(0.0, 0.9)),
    ]
    if image:
        params += [
            Param("data.augment.preset",
                  CategoricalDistribution(["none", "light", "medium", "strong"]),
                  allowed=("none", "light", "medium", "strong")),
        ]
        if profile.kind == "classification":
            params.append(Param("data.augment.mixup", CategoricalDistribution([0.0, 0.2, 0.8]),
                                allowed=(0.0, 10.0)))
    return params


# Keys the user may list in `search.space` beyond the default ones: the backbone, whose choices
# only the user can name.
EXTRA_KEYS = ("model.backbone",)


def _narrowed(param: Param, given: list[Any] | Range, source: str) -> Param:
    """`param` limited to the user's choices or range, refused outside what it allows."""
    field = f"search.space.{param.key}"
    allowed = param.allowed
    numeric = len(allowed) == 2 and all(isinstance(v, int | float) for v in allowed) and not (
        isinstance(param.distribution, CategoricalDistribution)
        and any(isinstance(c, str) for c in param.distribution.choices)
    )

    # A count (epochs, a batch size, a width) takes whole numbers only: 5.5 epochs would pass
    # here and fail the trial's config.
    integer = isinstance(param.distribution, IntDistribution) or (
        isinstance(param.distribution, CategoricalDistribution)
        and all(isinstance(c, int) and not isinstance(c, bool)
                for c in param.distribution.choices)
    )

    def refuse(problem: str, fix: str) -> TunesmithError:
        return TunesmithError(problem, file=source, field=field, fix=fix)

    if isinstance(given, Range):
        if not numeric or (isinstance(param.distribution, CategoricalDistribution) and not all(
            isinstance(c, int | float) for c in param.distribution.choices
        )):
            raise refuse(f"{param.key} takes choices, not a range",
                         "give a list of choices instead")
        low, high = allowed
        if not low <= given.low <= given.high <= high:
            raise refuse(
                f"range {given.low}..{given.high} is outside what {param.key} allows "
                f"({low}..{high}), or low > high",
                f"give low <= high within {low}..{high}",
            )
        if integer:
            if not (float(given.low).is_integer() and float(given.high).is_integer()):
                raise refuse(f"{param.key} takes whole numbers, not {given.low}..{given.high}",
                             "give whole numbers for low and high")
            return replace(param, distribution=IntDistribution(int(given.low), int(given.high)))
        log = isinstance(param.distribution, FloatDistribution) and param.distribution.log
        return replace(param, distribution=FloatDistribution(given.low, given.high,
                                                             log=log and given.low > 0))
    if not given:
        raise refuse(f"no choices given for {param.key}", "list at least one value")
    if numeric:  # YAML reads 1e-3 (no dot) as text, as pydantic reads it for train.lr
        given = [_number_or_text(choice) for choice in given]
    for choice in given:
        ok = (isinstance(choice, int | float) and not isinstance(choice, bool)
              and (not integer or float(choice).is_integer())
              and allowed[0] <= choice <= allowed[1]) if numeric else choice in allowed
        if not ok:
            shown = f"{allowed[0]}..{allowed[1]}" if numeric else ", ".join(map(str, allowed))
            whole = " whole numbers" if integer else ""
            raise refuse(f"{choice!r} is not a value {param.key} allows ({shown}{whole})",
                         "choose values it allows")
    choices = [int(choice) for choice in given] if integer and numeric else list(given)
    return replace(param, distribution=CategoricalDistribution(choices))


def _number_or_text(choice: Any) -> Any:
    if isinstance(choice, str):
        with contextlib.suppress(ValueError):
            return float(choice)
    return choice


def search_space(context: SpaceContext, config: Config) -> Space:
    """The parameters a search draws: the candidates, less what the user fixed, narrowed by
    `search.space`."""
    source = config.source
    candidates = candidate_params(context)
    keys = list(dict.fromkeys(param.key for param in candidates))
    overrides = dict(config.search.space)
    for key in overrides:
        if key not in keys and key not in EXTRA_KEYS:
            raise TunesmithError(
                f"{key} is not searched for this data and backbone",
                file=source, field=f"search.space.{key}",
                fix=f"use one of {', '.join([*keys, *EXTRA_KEYS])}",
            )
    params: list[Param] = []
    fixed: Values = {}
    for param in candidates:  # a narrowed key narrows each of its parameters (both rates)
        key = param.key
        value = _given(config, key)
        if value is not None:
            if key in overrides:
                raise TunesmithError(
                    f"{key} is set to {value!r} and also searched",
                    file=source, field=f"search.space.{key}",
                    fix=f"remove {key} from the config or from search.space",
                )
            fixed[key] = value
            continue
        if param.opt_in and key not in overrides:
            continue
        params.append(_narrowed(param, overrides[key], source) if key in overrides else param)
    backbones = overrides.get("model.backbone")
    if backbones is not None:
        if isinstance(backbones, Range) or not backbones:
            raise TunesmithError(
                "model.backbone takes a list of backbones", file=source,
                field="search.space.model.backbone", fix="list backbone specs, e.g. [hf:a, hf:b]",
            )
        _check_backbones(list(backbones), config, context.profile.modality)
        params.insert(0, Param("model.backbone", CategoricalDistribution(list(backbones))))
    _check_peft_used(config, fixed, params)
    return Space(tuple(params), fixed)


def _check_backbones(backbones: list[Any], config: Config, modality: Modality) -> None:
    """Each backbone `search.space` lists, read as `model.backbone` is (its source, options
    and modality, its folder or weights file there), so that `tunesmith validate` finds a typo
    rather than a trial."""
    from tunesmith.models.hf import check_folder
    from tunesmith.models.registry import PATH_OPTIONS, checked_spec, parse_spec
    from tunesmith.models.scratch import check_network

    field = "search.space.model.backbone"
    for spec in map(str, backbones):
        try:
            parsed = parse_spec(spec)
            if parsed.source == "hf":
                check_folder(config.path(parsed.target), field)
            if parsed.source == "scratch":
                check_network(parsed.target, field)
            for option in PATH_OPTIONS & parsed.options.keys():
                if not config.path(parsed.options[option]).exists():
                    raise TunesmithError(f"{config.path(parsed.options[option])} does not exist",
                                         fix="give weights files that exist (paths are relative "
                                         "to the config file)")
            checked_spec(spec, modality, config.path)  # after: a missing folder has no modality
        except TunesmithError as error:
            where = f"{error.file}: " if error.file else ""
            problem = f"{where}{error.problem}"
            raise TunesmithError(problem if spec in problem else f"{spec}: {problem}",
                                 file=config.source, field=field, fix=error.fix) from None


def _check_peft_used(config: Config, fixed: Values, params: list[Param]) -> None:
    """`model.peft` settings need a trial that trains an adapter: the strategy fixed to one, or
    searched among choices that include one (a single run checks this in `candidate`)."""
    from tunesmith.models.strategies import Strategy

    given = [key for key in ("r", "alpha", "dropout", "targets")
             if _given(config, f"model.peft.{key}") is not None]
    if not given:
        return
    searched = next((param for param in params if param.key == "model.strategy"), None)
    choices = (list(searched.distribution.choices)  # type: ignore[attr-defined]
               if searched is not None else [fixed.get("model.strategy", "full")])
    if any(Strategy.parse(str(choice)).adapter for choice in choices):
        return
    raise TunesmithError(
        f"model.peft sets {', '.join(given)}, but no trial trains an adapter (model.strategy: "
        f"{', '.join(map(str, choices))})",
        file=config.source, field="model.peft",
        fix="set or search model.strategy among lora, dora or loha, or remove model.peft",
    )


def _given(config: Config, key: str) -> Any:
    """The value the user wrote for `key` (not a default, not auto), or None."""
    node: Any = config
    *sections, name = key.split(".")
    for part in sections:
        if part not in node.model_fields_set or getattr(node, part) is None:
            return None
        node = getattr(node, part)
    value = getattr(node, name)
    return value if name in node.model_fields_set and value != "auto" else None


def _settable(config: Config, key: str) -> bool:
    """Whether the section holding `key` exists in this config (peft and scratch are null where
    they do not apply)."""
    node: Any = config
    for part in key.split(".")[:-1]:
        node = getattr(node, part, None)
        if node is None:
            return False
    return True


def suggest(trial: optuna.Trial | optuna.trial.FixedTrial, space: Space) -> Values:
    """One draw from the space, as {dotted config key: value}; conditional parameters are drawn
    only where they apply, judged on the values drawn before them and those the user fixed."""
    values: Values = {}
    for param in space.params:
        if not param.applies({**space.fixed, **values}):
            continue
        values[param.key] = _draw(trial, param.name, param.distribution)
    return values


def _draw(trial: Any, name: str, distribution: BaseDistribution) -> Any:
    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(name, distribution.low, distribution.high, log=distribution.log)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high)
    assert isinstance(distribution, CategoricalDistribution)
    return trial.suggest_categorical(name, distribution.choices)


def recipe_values(space: Space, recipe: Config) -> Values:
    """The recipe's own values of the searched parameters, for trial 0, each brought inside its
    distribution (a user's narrowed range may exclude the recipe's value); by Optuna parameter
    name, as a trial is queued."""
    drawn: Values = {}  # by config key, as the conditions read them
    values: Values = {}
    for param in space.params:
        if not param.applies({**space.fixed, **drawn}):
            continue
        if param.key == "model.backbone":
            value = param.distribution.choices[0]  # type: ignore[attr-defined]
        else:
            value = _get(recipe, param.key) if _settable(recipe, param.key) else None
            value = _inside(value, param.distribution)
        drawn[param.key] = values[param.name] = value
    return values


def _inside(value: Any, distribution: BaseDistribution) -> Any:
    if isinstance(distribution, CategoricalDistribution):
        choices = distribution.choices
        if value in choices:
            return value
        numeric = [c for c in choices if isinstance(c, int | float)]
        if isinstance(value, int | float) and numeric:  # the nearest on a log scale
            return min(numeric, key=lambda c: abs(math.log((c or 1e-12) / (value or 1e-12))))
        return choices[0]
    low, high = distribution.low, distribution.high  # type: ignore[attr-defined]
    if value is None:
        return low
    clipped = min(max(value, low), high)
    return round(clipped) if isinstance(distribution, IntDistribution) else float(clipped)
