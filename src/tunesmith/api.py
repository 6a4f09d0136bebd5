"""The Python API: the stages run in pipeline order.

prepare:  config -> data (read, checked, split) -> backbone -> resolved config
fit:      prepare -> train (trial 0, the recipe, as its strategy's stages) -> evaluate on test
          once -> bundle -> metrics
load:     a run folder or bundle -> Predictor
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import yaml
from accelerate import PartialState
from accelerate.utils import set_seed

from tunesmith import __version__
from tunesmith.config import Config, inspect_options, load_config
from tunesmith.console import console
from tunesmith.data import DataReport, TaskData, inspect_data, label_targets, load_task_data
from tunesmith.data.sources import Examples
from tunesmith.errors import TunesmithError
from tunesmith.evaluate import collect_logits, objective_for
from tunesmith.evaluate.baselines import Baseline, baseline_record
from tunesmith.evaluate.calibration import Calibration, calibrate, scaled
from tunesmith.evaluate.intervals import bootstrap_values, scored_with_intervals
from tunesmith.evaluate.metrics import per_class
from tunesmith.export import Predictor, load_predictor, save_bundle
from tunesmith.export.card import write_model_card
from tunesmith.io import (
    PREDICTIONS,
    TEST_PREDICTIONS,
    atomic_write,
    require_run_folder,
    write_json,
    write_text,
)
from tunesmith.models import Backbone, TaskModel, absolute_spec, build_backbone, make_head
from tunesmith.models.ensemble import Ensemble
from tunesmith.models.hf import HFTextBackbone
from tunesmith.models.inputs import Inputs, eval_batches, train_batches
from tunesmith.models.losses import balanced_weights
from tunesmith.models.registry import parse_spec, source_modalities
from tunesmith.models.scratch import ScratchShape
from tunesmith.models.strategies import Strategy, check_fits_backbone
from tunesmith.models.weights import load_weights
from tunesmith.report import baselines_ahead, summary_table
from tunesmith.report.html import write_report
from tunesmith.search import (
    DataProfile,
    check_fits,
    image_size,
    is_scratch,
    resolve,
    scratch_image_size,
    scratch_shape,
    strategy_plan,
    train_settings,
)
from tunesmith.search.folds import fold_count
from tunesmith.search.run import DUPLICATE_ATTR, trial_values
from tunesmith.train import Batches, TrialResult, fine_tune
from tunesmith.train.checkpoint import Checkpoint, require_checkpoint
from tunesmith.train.heap import frozen_heap
from tunesmith.train.loop import Reporter
from tunesmith.train.precision import autocast_for, default_device, resolve_precision

EVAL_BATCH_SIZE = 64


@dataclass
class Prepared:
    config: Config  # resolved: no `auto` left
    data: TaskData
    backbone: Backbone
    profile: DataProfile

    @property
    def kind(self) -> str:
        return self.data.spec.kind

    def inputs(self, part: Examples) -> Inputs:
        """What the backbone reads for `part`: texts, image paths or encoded feature rows."""
        if self.data.tabular is not None and part.features is not None:
            return self.data.tabular.transform(part.features)
        return part.inputs

    def target_scale(self) -> tuple[float, float] | None:
        """Regression: the training targets' mean and std, which the head's output is scaled by."""
        if self.kind != "regression":
            return None
        targets = np.asarray(self.data.targets(self.data.train), dtype=np.float64)
        std = float(targets.std())
        return float(targets.mean()), std if std > 0 else 1.0


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    metrics: dict[str, Any]


def _as_config(config: Config | str | Path, overrides: list[str] | None) -> Config:
    if isinstance(config, Config):
        return config
    return load_config(config, overrides)


def prepare(config: Config, *, data: TaskData | None = None) -> Prepared:
    """Read and split the data (or take `data`, read for the same data section), load the
    backbone and resolve every `auto` in the config."""
    with naming_the_config(config):
        return _prepare(config, data)


@contextlib.contextmanager
def naming_the_config(config: Config) -> Iterator[None]:
    """A problem with a config value (an error naming no file) points at the config file."""
    try:
        yield
    except TunesmithError as error:
        if error.file is None:
            raise TunesmithError(
                error.problem, file=config.source, field=error.field, fix=error.fix
            ) from None
        raise


def _prepare(config: Config, data: TaskData | None = None) -> Prepared:
    data = data if data is not None else load_task_data(config)
    _check_modality(data, config)
    profile = DataProfile(
        modality=data.modality,
        train_rows=len(data.train),
        classes=len(data.classes),
        kind=data.spec.kind,
        median_image_side=data.median_image_side,
        in_features=len(data.tabular.feature_names) if data.tabular else None,
        source_format=data.report.parts["train"].source.format,
        split_method=data.splits["method"],
        imbalance=_imbalance(data),
        median_text_chars=int(np.median([len(str(t)) for t in data.train.inputs]))
        if data.modality == "text" and len(data.train) else None,
    )
    check_fits(config, profile)
    shape = scratch_shape(config, profile) if is_scratch(config) else None
    backbone = _backbone(config, profile, shape)
    if isinstance(backbone, HFTextBackbone) and _given(config.data.max_length) is None:
        backbone.max_length = backbone.length_for(data.train.inputs)
    if config.model.strategy != "auto":
        check_fits_backbone(Strategy.parse(config.model.strategy), backbone)
    resolved = resolve(
        config,
        profile,
        num_features=backbone.num_features,
        preprocessing=backbone.preprocessing(),
        backbone=absolute_spec(config.model.backbone, config.path),
        shape=shape,
    )
    search = resolved.search.model_copy(update={"folds": fold_count(config, data)})
    return Prepared(resolved.updated(search=search), data, backbone, profile)


def _imbalance(data: TaskData) -> float | None:
    counts = _label_counts(data.train, data.spec.kind)
    if not counts:
        return None
    return round(max(counts.values()) / max(1, min(counts.values())), 2)


def _backbone(config: Config, profile: DataProfile, shape: ScratchShape | None) -> Backbone:
    given_size = _given(config.data.image_size)
    if given_size is None and shape is not None and profile.modality == "image":
        given_size = scratch_image_size(profile)
    # A network from scratch (or a user's module) is initialized as it is built: by the seed.
    set_seed(config.seed)
    backbone = build_backbone(
        config.model.backbone,
        modality=profile.modality,
        resolve=config.path,
        max_length=_given(config.data.max_length),
        image_size=given_size,
        in_features=profile.in_features,
        shape=shape,
        trust_remote_code=config.model.trust_remote_code,
        search=config.base_dir,
    )
    # Convolutional backbones take any size: small images are upsampled about 2x rather than
    # to the pretrained size. Transformers with position embeddings need the size they know.
    if given_size is None and getattr(backbone, "resizable", False):
        stats = backbone.pretrained_stats()  # type: ignore[operator]
        backbone.image_size = image_size(profile, stats["pretrained_size"])  # type: ignore[assignment]
    return backbone


def _check_modality(data: TaskData, config: Config) -> None:
    """A table without the text column, given a text backbone: say which column is missing."""
    spec = parse_spec(config.model.backbone)
    reads = source_modalities(spec, config.path)
    if data.modality != "tabular" or config.task != "auto" or "tabular" in reads:
        return
    train = data.report.parts["train"]
    if "text" in reads:
        raise TunesmithError(
            f"column {config.data.text_column!r} not found; the file has columns {train.columns}, "
            "so it reads as a table of features, but the backbone reads text",
            file=train.source.path,
            field="data.text_column",
            fix="set data.text_column to the column that holds the text, or use scratch:mlp for "
            "a table",
        )


def _given(value: int | str | None) -> int | None:
    """A size the user set, or None where the recipe decides."""
    return value if isinstance(value, int) else None


def validate(config: Config | str | Path, overrides: list[str] | None = None) -> Prepared:
    """Check config, data and model without training: one forward pass on two training rows."""
    prepared = prepare(_as_config(config, overrides))
    model = task_model(prepared)
    rows = prepared.data.train.subset([0, 1][: len(prepared.data.train)])
    batches = eval_batches(prepared.backbone, prepared.inputs(rows), batch_size=2)
    collect_logits(model, batches)
    return prepared


def task_model(prepared: Prepared) -> TaskModel:
    """The backbone with a new head, initialized from the config's seed."""
    set_seed(prepared.config.seed)  # the head's initialization is part of what the seed fixes
    return TaskModel(prepared.backbone, make_head(**_head_spec(prepared)))


def _head_spec(prepared: Prepared) -> dict[str, Any]:
    head = prepared.config.model.head
    return {
        "in_features": prepared.backbone.num_features,
        "num_outputs": prepared.profile.outputs,
        "layers": int(head.layers),
        "hidden": int(head.hidden),
        "activation": str(head.activation),
        "init": str(head.init),
        "dropout": float(head.dropout),
        "target_scale": prepared.target_scale(),
    }


def _fresh_run_dir(run_dir: Path) -> None:
    """Start an empty run folder. Whatever an earlier run left there, finished or killed, is kept
    under `NAME-<time it was last written>`, never overwritten."""
    if run_dir.exists() and any(run_dir.iterdir()):
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(run_dir.stat().st_mtime))
        kept = run_dir.with_name(f"{run_dir.name}-{stamp}")
        suffix = 1
        while kept.exists():
            kept, suffix = kept.with_name(f"{run_dir.name}-{stamp}-{suffix}"), suffix + 1
        run_dir.rename(kept)
        console.print(f"[yellow]kept the previous run folder as {kept}[/]")
    run_dir.mkdir(parents=True, exist_ok=True)


def _label_counts(part: Examples, kind: str) -> dict[str, int]:
    if kind == "regression":
        return {}
    labels = [name for names in part.labels for name in names] if kind == "multilabel" else (
        part.labels
    )
    return dict(Counter(labels).most_common())


def _data_report(data: TaskData) -> dict[str, Any]:
    """What inspection found in the sources, what cleaning did, and the parts trained on."""
    return {
        **data.report.to_json(),
        "trained_on": {
            name: {"rows": len(part), "label_counts": _label_counts(part, data.spec.kind)}
            for name, part in (("train", data.train), ("val", data.val), ("test", data.test))
        },
    }


def batches_for(prepared: Prepared, batch_size: int, seed: int, workers: int = 0) -> Batches:
    """Training, validation and (lazily) un-augmented training batches of the prepared data,
    images loaded by `workers` processes."""
    data, backbone = prepared.data, prepared.backbone
    train_inputs = prepared.inputs(data.train)
    train_targets = data.targets(data.train)
    train = train_batches(
        backbone,
        train_inputs,
        train_targets,
        batch_size=batch_size,
        seed=seed,
        augment=prepared.config.data.augment,
        mix_classes=len(data.classes) if prepared.kind == "classification" else 0,
        workers=workers,
    )
    val = eval_batches(
        backbone, prepared.inputs(data.val), data.targets(data.val), batch_size=EVAL_BATCH_SIZE,
        workers=workers,
    )
    return Batches(
        train=train,
        val=val,
        plain_train=lambda: eval_batches(
            backbone, train_inputs, train_targets, batch_size=EVAL_BATCH_SIZE, workers=workers
        ),
    )


def _loss_weights(prepared: Prepared) -> tuple[float, ...] | None:
    if prepared.kind == "regression":
        return None
    targets = np.asarray(prepared.data.targets(prepared.data.train))
    return balanced_weights(prepared.kind, targets, len(prepared.data.classes))


def fit(
    config: Config | str | Path, overrides: list[str] | None = None, *, resume: bool = False
) -> RunSummary:
    """Run the whole pipeline, as `tunesmith run` does; `resume` continues a killed run of the
    same config from its last checkpoint (or its study, when it searches)."""
    started = time.perf_counter()
    # Launched as many processes (accelerate launch, torchrun), each prepares the same data and
    # model and trains its share of every batch; the first alone writes the run folder.
    processes = PartialState(cpu=not torch.cuda.is_available())
    given = _as_config(config, overrides)
    prepared = prepare(given)
    resolved, run_dir = prepared.config, prepared.config.run_dir
    searching = searches(given)
    if resume:
        _check_resumable(prepared)
        if (run_dir / "metrics.json").is_file():
            console.print(f"[green]{run_dir} finished already[/]; nothing to resume")
            return RunSummary(run_dir, json.loads((run_dir / "metrics.json").read_text()))
    elif processes.is_main_process:
        _fresh_run_dir(run_dir)
        write_text(run_dir / "config.yaml", resolved.to_yaml())
        write_json(run_dir / "splits.json", prepared.data.splits)
        write_json(run_dir / "data_report.json", _data_report(prepared.data))
    processes.wait_for_everyone()

    if searching:
        kept, search_record = _search(given, prepared, resume=resume)
    else:
        trial_dir = run_dir / "trials" / "0"
        checkpoint = require_checkpoint(trial_dir) if resume else None
        kept, search_record = _Kept(0, prepared), None
        kept.model, kept.result = train_candidate(prepared, trial_dir, resume=checkpoint)
    if not processes.is_main_process:
        return RunSummary(run_dir, {})  # the main process evaluates and writes the bundle
    chosen, model, result = kept.prepared, kept.model, kept.result
    assert chosen is not None and model is not None and result is not None

    # The one evaluation on the test part, after the model was chosen on validation alone; the
    # chosen model's validation scores beside it (out of fold, when it is a fold ensemble),
    # each with its interval: the noise next to the result.
    outputs = {"test": predict_part(model, chosen, chosen.data.test, result),
               "val": kept.val_outputs or predict_part(model, chosen, chosen.data.val, result)}
    # A classifier's probabilities are calibrated on validation (one temperature, which the
    # bundle applies); what is scored is what the bundle predicts. Not a fold ensemble's: its
    # validation outputs are each one fold model's, sharper than the members' average it ships.
    folded = search_record is not None and search_record.get("folds", 1) > 1
    calibration = (calibrate(*outputs["val"], test=outputs["test"])
                   if chosen.kind == "classification" and not folded else None)
    if calibration is not None:
        outputs = {name: (scaled(o, calibration.temperature), t)
                   for name, (o, t) in outputs.items()}
    seed = given.seed
    resampled = {name: bootstrap_values(chosen.kind, *pair, seed=seed) if len(pair[1]) else {}
                 for name, pair in outputs.items()}
    scores = {name: scored_with_intervals(chosen.kind, *pair, seed=seed,
                                          resampled=resampled[name])
              for name, pair in outputs.items()}
    save_bundle(
        model,
        run_dir / "best",
        task=chosen.data.task,
        classes=chosen.data.classes,
        head={k: v for k, v in _head_spec(chosen).items() if k != "in_features"},
        inputs=_bundle_inputs(chosen),
        temperature=None if calibration is None else calibration.temperature,
    )
    model_val = _val_part(outputs["val"], chosen.data)
    baselines = baseline_record(
        chosen.kind, run_baselines(chosen), model_val=model_val, model_test=outputs["test"],
        seed=seed, model_resampled={"test": resampled["test"]} | (
            {"val": resampled["val"]} if len(model_val[1]) == len(outputs["val"][1]) else {}))
    metrics = _metrics_record(
        chosen, result, scores, time.perf_counter() - started, search=search_record,
        baselines=baselines, calibration=calibration,
        classes_table=None if chosen.kind == "regression" else per_class(
            chosen.kind, *outputs["test"], chosen.data.classes))
    write_predictions_record(run_dir, chosen, outputs)
    write_json(run_dir / "metrics.json", metrics)
    write_model_card(run_dir / "best", metrics, chosen.config.model_dump(mode="json"),
                     _data_report(chosen.data))
    console.print(summary_table(metrics, str(run_dir)))
    for line in baselines_ahead(metrics):
        console.print(f"[yellow]{line}[/]")
    console.print(f"report: {write_report(run_dir)}")
    return RunSummary(run_dir, metrics)


def _val_part(val: tuple[np.ndarray, np.ndarray], data: TaskData
              ) -> tuple[np.ndarray, np.ndarray]:
    """The model's outputs on the val part's rows: out-of-fold outputs cover train+val (pooled:
    the train rows first), so the val part's are the last rows."""
    outputs, targets = val
    return outputs[len(outputs) - len(data.val):], targets[len(targets) - len(data.val):]


def train_candidate(
    prepared: Prepared,
    trial_dir: Path,
    *,
    reporter: Reporter | None = None,
    time_budget: float | None = None,
    resume: Checkpoint | None = None,
) -> tuple[TaskModel, TrialResult]:
    """Build the prepared config's model and train it: one trial. `time_budget` (seconds), when
    given, caps the config's own."""
    resolved, data = prepared.config, prepared.data
    if PartialState().is_main_process and resume is None:
        write_text(trial_dir / "config.yaml", resolved.to_yaml())
    scale = prepared.target_scale()
    settings = train_settings(
        resolved,
        kind=prepared.kind,
        loss_weights=_loss_weights(prepared),
        target_std=scale[1] if scale else 1.0,
    )
    if time_budget is not None:
        own = settings.time_budget
        settings = settings.with_changes(
            time_budget=max(1.0, time_budget if own is None else min(own, time_budget))
        )
    plan = strategy_plan(resolved, settings)
    model = task_model(prepared)
    batches = batches_for(prepared, settings.batch_size, settings.seed, settings.workers)
    console.print(
        f"[bold]training[/] {resolved.model.backbone} ({plan.strategy}) on {len(data.train)} "
        f"rows ({len(data.val)} val, {len(data.test)} test held out)"
    )
    with naming_the_config(resolved):
        result = fine_tune(model, batches, settings, plan, trial_dir, reporter=reporter,
                           resume=resume)
    return model, result


def searches(config: Config) -> bool:
    """Whether the run searches: a budget, or more than one trial."""
    search = config.search
    return search.budget is not None or (search.trials or 1) > 1


@dataclass
class _Kept:
    """The best trial so far, its model in memory."""

    number: int = -1
    prepared: Prepared | None = None
    model: TaskModel | Ensemble | None = None
    result: TrialResult | None = None
    # The model's validation (outputs, targets) once computed: out of fold over train+val for
    # fold models, else on the val part.
    val_outputs: tuple[np.ndarray, np.ndarray] | None = None

    def take(self, other: _Kept, *, number: int) -> None:
        self.number, self.prepared, self.model = number, other.prepared, other.model
        self.result, self.val_outputs = other.result, other.val_outputs


def _search(given: Config, recipe: Prepared, *, resume: bool) -> tuple[_Kept, dict[str, Any]]:
    """Trials from the study until the budget is spent; the best on validation, as trained."""
    from tunesmith.search.run import best_trial

    study, trials, kept, budget = _run_study(given, recipe, resume=resume)
    objective = objective_for(recipe.kind)
    best = best_trial(trials, objective)
    folds = _folds(recipe)
    if best.number != kept.number:  # trained by an earlier run or another worker: from its files
        kept = _trained_trial(given, recipe, best, folds)
    assert kept.prepared is not None and kept.model is not None and kept.result is not None
    record = {**_study_record(study, given), "best_trial": best.number,
              "profile": asdict(recipe.profile),
              "backbone_probes": study.user_attrs.get("backbone_probes", {}),
              "best_params": dict(best.params), "spent_s": round(budget.spent(), 1),
              "folds": len(folds) or 1}
    if folds:  # the fold models predict together; a soup of them would mix unrelated weights
        return kept, record
    kept.val_outputs = predict_part(kept.model, kept.prepared, kept.prepared.data.val,
                                    kept.result)
    error = _val_error(given, recipe, kept, objective)
    soup = _replicate_soup(kept, trials, best, objective, error)
    uniform = soup is not None
    if soup is None:
        soup = _greedy_soup(kept, trials, best, objective)
    if soup is not None:
        record["soup"] = {"ingredients": list(soup.ingredients), "val": soup.score,
                          "best_single_val": soup.best_single, "used": soup.improves}
        if uniform:
            scores = {t.number: t.user_attrs["val"][objective.metric] for t in trials
                      if t.number in soup.ingredients}
            record["soup"].update({"uniform": True, "val_standard_error": error,
                                   "ingredients_mean_val": float(np.mean(list(scores.values())))})
    # A greedy soup that beats the best trial is used as it is. The replicates' uniform soup is
    # set against their uniform ensemble instead: both are scored once on the same rows (neither
    # is a best-of-epochs yardstick), and the better is used, the soup on a tie since it predicts
    # at one model's cost. (Four EfficientNet-Lite0 replicates' soup scored 0.963 on validation
    # before its batch norms were measured again; two replicates' soup, measured again, 0.980
    # against 0.980 and 0.988 for the replicates, and 0.980 on test against the first's 0.986.)
    soup_wins = soup is not None and soup.improves
    chosen = None if soup_wins and not uniform else _ensemble_within_noise(
        given, recipe, kept, trials, best, objective, error)
    selection = chosen[0] if chosen is not None else None
    if chosen is not None:
        record["ensemble"] = {"within_noise": chosen[2], "used": False}
        if selection is not None:
            record["ensemble"].update({
                "members": list(selection.members), "val": selection.score,
                "best_single_val": selection.best_single, "used": selection.improves})
    if selection is not None and selection.improves and (
            not soup_wins or objective.better(selection.score, soup.score)):
        assert chosen is not None
        targets = np.asarray(kept.prepared.data.targets(kept.prepared.data.val))
        kept.model = Ensemble([chosen[1][n] for n in selection.members], recipe.kind)
        kept.result = replace(kept.result, best_val=objective.score(selection.outputs, targets))
        kept.val_outputs = (selection.outputs, targets)
        if soup is not None:
            record["soup"]["used"] = False
    elif soup_wins:
        assert soup is not None
        kept.model.load_state_dict(soup.state)
        kept.val_outputs = predict_part(kept.model, kept.prepared, kept.prepared.data.val,
                                        kept.result)
        kept.result = replace(kept.result, best_val=objective.score(*kept.val_outputs))
        if "ensemble" in record:
            record["ensemble"]["used"] = False
    return kept, record


ENSEMBLE_CANDIDATES = 5  # the most trials an ensemble of trials within noise averages


def _val_error(given: Config, recipe: Prepared, kept: _Kept, objective: Any) -> float:
    """The standard error of the best trial's validation score, from its bootstrap interval."""
    from tunesmith.evaluate.intervals import bootstrap_intervals, standard_error

    assert kept.val_outputs is not None
    outputs, targets = kept.val_outputs
    low, high = bootstrap_intervals(recipe.kind, outputs, targets, seed=given.seed)[
        objective.metric]
    return standard_error(low, high)


def _ensemble_within_noise(
    given: Config, recipe: Prepared, kept: _Kept, trials: list[Any], best: Any, objective: Any,
    error: float,
) -> tuple[Any, dict[int, TaskModel], list[int]] | None:
    """(the ensemble of the trials validation cannot tell from the best, within two standard
    errors (`error`: one), whose models share its architecture (None without any): all of them,
    uniformly, where they are the recipe and its replicates, a greedy selection otherwise; their
    models; the trials within noise); None with a single scored trial."""
    from tunesmith.search.run import is_recipe_or_replicate
    from tunesmith.search.selection import greedy_ensemble, uniform_ensemble, within_noise

    assert kept.prepared is not None and kept.model is not None and kept.result is not None
    metric = objective.metric
    scores = {t.number: float(t.user_attrs["val"][metric]) for t in trials
              if metric in t.user_attrs.get("val", {})}
    if len(scores) < 2 or kept.val_outputs is None:
        return None
    outputs, targets = kept.val_outputs
    close = within_noise(scores, best.number, error, objective, limit=ENSEMBLE_CANDIDATES)
    assert isinstance(kept.model, TaskModel)
    candidates = [(best.number, scores[best.number], outputs)]
    models: dict[int, TaskModel] = {best.number: kept.model}
    by_number = {t.number: t for t in trials}
    for number in close[1:]:
        try:
            other = _trained_trial(given, recipe, by_number[number], [])
        except TunesmithError:  # an adapter from an earlier process: not rebuilt
            continue
        assert other.prepared is not None and other.model is not None and other.result is not None
        if not _same_architecture(kept, other) or not isinstance(other.model, TaskModel):
            continue
        other_outputs, _ = predict_part(other.model, other.prepared, other.prepared.data.val,
                                        other.result)
        candidates.append((number, scores[number], other_outputs))
        models[number] = other.model
    if len(candidates) < 2:
        return None, models, close
    if all(is_recipe_or_replicate(by_number[number]) for number, _, _ in candidates):
        return (uniform_ensemble(candidates, targets, objective, tolerance=error), models,
                close)
    return greedy_ensemble(candidates, targets, objective), models, close


def _same_architecture(a: _Kept, b: _Kept) -> bool:
    """Whether two trials' models fit one bundle: the same backbone, network shape, head shape,
    preprocessing and inputs, and weights of the same names and shapes."""
    from tunesmith.search.soup import compatible

    assert a.prepared is not None and b.prepared is not None
    assert a.model is not None and b.model is not None
    structural = ("in_features", "num_outputs", "layers", "hidden", "activation", "target_scale")
    heads = [{k: _head_spec(p)[k] for k in structural} for p in (a.prepared, b.prepared)]
    model_a, model_b = a.prepared.config.model, b.prepared.config.model
    return (
        model_a.backbone == model_b.backbone
        and model_a.scratch == model_b.scratch
        and heads[0] == heads[1]
        and a.prepared.backbone.preprocessing() == b.prepared.backbone.preprocessing()
        and _bundle_inputs(a.prepared) == _bundle_inputs(b.prepared)
        and compatible(a.model.state_dict(), b.model.state_dict())
    )


def _folds(recipe: Prepared) -> list[Any]:
    """The folds a search's trials cross-validate on (as many as the resolved config says);
    none when they use the val part."""
    from tunesmith.search.folds import make_folds

    count = int(recipe.config.search.folds)
    return make_folds(recipe.data, count, recipe.config.data.split.seed) if count > 1 else []


SOUP_CANDIDATES = 5  # the best trials tried as ingredients


def _replicate_soup(kept: _Kept, trials: list[Any], best: Any, objective: Any,
                    error: float) -> Any:
    """Where the best trial is the recipe or one of its replicates: the uniform soup of it and
    the other replicates within two standard errors (`error`: one) of it on validation, used
    unless it scores below their mean by more than one standard error; None with fewer than two
    such trials (the greedy soup then looks at all trials)."""
    from tunesmith.search.run import is_recipe_or_replicate
    from tunesmith.search.selection import within_noise
    from tunesmith.search.soup import uniform_soup

    if not is_recipe_or_replicate(best):
        return None
    assert kept.prepared is not None
    metric, run_dir = objective.metric, kept.prepared.config.run_dir
    scores = {t.number: float(t.user_attrs["val"][metric]) for t in trials
              if metric in t.user_attrs.get("val", {}) and is_recipe_or_replicate(t)
              and (t.number == best.number or _best_weights(run_dir, t.number).is_file())}
    close = within_noise(scores, best.number, error, objective, limit=SOUP_CANDIDATES)
    if len(close) < 2:
        return None
    return _soup_of(kept, best, [(n, scores[n]) for n in close[1:]], objective,
                    lambda candidates, score: uniform_soup(
                        candidates, score, greater_is_better=objective.greater_is_better,
                        tolerance=error))


def _best_weights(run_dir: Path, number: int) -> Path:
    from tunesmith.train.checkpoint import BEST

    return run_dir / "trials" / str(number) / BEST


def _greedy_soup(kept: _Kept, trials: list[Any], best: Any, objective: Any) -> Any:
    """The greedy soup of the top trials whose weights can be averaged with the best's (same
    backbone and architecture), or None with fewer than two such trials."""
    from tunesmith.search.soup import greedy_soup

    assert kept.prepared is not None
    metric = objective.metric
    run_dir = kept.prepared.config.run_dir
    scored = sorted((t for t in trials if metric in t.user_attrs.get("val", {})
                     and t.number != best.number and _best_weights(run_dir, t.number).is_file()),
                    key=lambda t: t.user_attrs["val"][metric], reverse=objective.greater_is_better)
    others = [(t.number, float(t.user_attrs["val"][metric])) for t in scored[: SOUP_CANDIDATES - 1]]
    if not others:
        return None
    return _soup_of(kept, best, others, objective,
                    lambda candidates, score: greedy_soup(
                        candidates, score, greater_is_better=objective.greater_is_better))


def _soup_of(kept: _Kept, best: Any, others: list[tuple[int, float]], objective: Any,
             make: Callable[[list[Any], Callable[[dict[str, torch.Tensor]], float]], Any]) -> Any:
    """`make(candidates, score)` over the best trial (its weights in memory) and `others`
    ((trial number, validation score), weights from their best checkpoints), each average scored
    on the val part; the kept model is left with the best trial's weights. A soup of networks
    with batch norm is scored, and returned, with the statistics of its own activations."""
    from safetensors.torch import load_file

    from tunesmith.search.soup import trained_norms

    assert kept.prepared is not None and kept.model is not None and kept.result is not None
    model, prepared, result = kept.model, kept.prepared, kept.result
    run_dir = prepared.config.run_dir
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def loader(number: int) -> Callable[[], dict[str, torch.Tensor]]:
        if number == best.number:
            return lambda: best_state
        return lambda: load_file(_best_weights(run_dir, number))

    candidates = [(number, value, loader(number)) for number, value in
                  [(best.number, float(best.user_attrs["val"][objective.metric])), *others]]
    norms = trained_norms([load() for _, _, load in candidates])

    def score(state: dict[str, torch.Tensor]) -> float:
        _load_soup(model, state, prepared, result, norms)
        return float(evaluate_part(model, prepared, prepared.data.val, result)[objective.metric])

    try:
        soup = make(candidates, score)
        if soup.improves and norms:  # what ships is what was scored
            _load_soup(model, soup.state, prepared, result, norms)
            soup = replace(soup, state={k: v.detach().clone()
                                        for k, v in model.state_dict().items()})
        return soup
    finally:
        model.load_state_dict(best_state)


RECALIBRATION_ROWS = 2048  # training rows a soup's batch-norm statistics are measured on, at most


def _load_soup(model: TaskModel | Ensemble, state: dict[str, torch.Tensor], prepared: Prepared,
               result: TrialResult, norms: frozenset[str]) -> None:
    """Averaged weights into `model`; the batch-norm layers among `norms` (those the ingredients
    trained) measure their statistics again on a seeded sample of the training rows, without
    augmentation, as the model is evaluated: averaged statistics are not the soup's own."""
    from tunesmith.search.soup import recalibrate_norms

    model.load_state_dict(state)
    if not norms:
        return
    train = prepared.data.train
    chosen = np.random.default_rng(prepared.config.seed).permutation(len(train))
    part = train.subset(sorted(chosen[:RECALIBRATION_ROWS].tolist()))
    device = next(model.parameters()).device
    recalibrate_norms(
        model,
        lambda: eval_batches(prepared.backbone, prepared.inputs(part),
                             prepared.data.targets(part), batch_size=EVAL_BATCH_SIZE).loader,
        layers=norms, autocast=autocast_for(result.precision, device),
    )


def _study_record(study: Any, given: Config) -> dict[str, Any]:
    states = [t.state.name for t in study.get_trials(deepcopy=False)
              if DUPLICATE_ATTR not in t.user_attrs]  # dropped before training: not a trial
    return {
        "trials_completed": states.count("COMPLETE"),
        "trials_pruned": states.count("PRUNED"),
        "trials_failed": states.count("FAIL"),
        "study": study.study_name,
        "storage": shown_storage(given),
    }


def shown_storage(config: Config) -> str:
    """The study's storage URL, its password left out."""
    from tunesmith.search.study import redacted, storage_url

    return redacted(storage_url(config, config.run_dir))


@dataclass(frozen=True)
class WorkerSummary:
    run_dir: Path
    study: dict[str, Any]


def search_worker(
    config: Config | str | Path, overrides: list[str] | None = None, *,
    storage: str | None = None, study: str | None = None,
) -> WorkerSummary:
    """Join the config's study (or `study` in `storage`) as one more worker: trials until the
    study's trial limit or this worker's budget is reached; no final model (the run that owns
    the study chooses it)."""
    given = _as_config(config, overrides)
    chosen = {"storage": storage, "study": study}
    given = given.updated(search=given.search.model_copy(
        update={key: value for key, value in chosen.items() if value is not None}))
    if not searches(given):
        raise TunesmithError(
            "the config does not search: set search.trials above 1 or search.budget",
            file=given.source, field="search", fix="add search.trials or search.budget",
        )
    recipe = prepare(given)
    recipe.config.run_dir.mkdir(parents=True, exist_ok=True)
    # A worker retries what a killed process of its machine left running; its budget is its own
    # wall time, not what the study spent before it joined.
    found, _, _, _ = _run_study(given, recipe, resume=True, own_budget=True)
    return WorkerSummary(recipe.config.run_dir, _study_record(found, given))


def _run_study(
    given: Config, recipe: Prepared, *, resume: bool, own_budget: bool = False
) -> tuple[Any, Any, _Kept, Any]:
    """Open the study, retry what a killed run of it left running, and run trials until the
    budget is spent; the best trial of this process is kept in memory."""
    from tunesmith.search.run import (
        Budget,
        retry_interrupted,
        run_trials,
        spent_by_study,
    )
    from tunesmith.search.space import recipe_values, search_space
    from tunesmith.search.study import open_study

    run_dir = recipe.config.run_dir
    objective = objective_for(recipe.kind)
    folds = _folds(recipe)
    if given.search.budget is not None and (own_budget or not resume):
        _check_budget(given, recipe, folds=len(folds))  # before the study: a refused search
        # writes nothing
    with naming_the_config(given):
        space = search_space(_space_context(recipe), given)
    # Before ranking the backbones: every worker joins the same study.
    signature = _signature(space, recipe, folds=len(folds) or 1)
    space, probes = _rank_backbones(given, recipe, space)
    first = recipe_values(space, recipe.config)
    epochs_high = max([int(recipe.config.train.epochs)] + [
        int(p.distribution.high) for p in space.params
        if p.key == "train.epochs" and hasattr(p.distribution, "high")
    ])
    study = open_study(given, run_dir, searched=signature,
                       direction=objective.direction, max_epochs=epochs_high)
    if probes:
        study.set_user_attr("backbone_probes", probes)
    if resume:
        for number in retry_interrupted(study):
            console.print(f"[yellow]trial {number} was interrupted[/]: marked failed, retried")
    search = given.search
    reserve = 0.0 if search.budget is None else final_reserve(search.budget)
    budget = Budget(
        None if search.budget is None else search.budget - reserve, search.trials,
        spent_before=spent_by_study(study) if resume and not own_budget else 0.0,
    )
    kept = _Kept()

    def train(values: dict[str, Any], trial_dir: Path, reporter: Reporter,
              left: float | None) -> TrialResult:
        with naming_the_config(given):
            candidate = prepare(given.with_values(values), data=recipe.data)
        if folds:
            trained = _train_folds(given, candidate, values, folds, trial_dir, reporter, left)
        else:
            trained = _Kept(0, candidate, *train_candidate(
                candidate, trial_dir, reporter=reporter, time_budget=left))
        result = trained.result
        assert result is not None
        score = result.best_val.get(objective.metric)
        if score is not None and (kept.result is None or objective.better(
                score, kept.result.best_val.get(objective.metric))):
            kept.take(trained, number=reporter.trial.number)  # type: ignore[attr-defined]
        del trained
        gc.collect()
        return result

    # Replicates soup with the recipe; fold models are ensembled, not souped, and the random
    # sampler is the baseline the search is compared with.
    replicate = not folds and given.search.sampler == "tpe"
    with frozen_heap():  # the data and libraries outlive every trial: collections skip them
        trials = run_trials(study, space, train, objective=objective, budget=budget,
                            run_dir=run_dir, first=first,
                            replicate_seed=given.seed if replicate else None)
    return study, trials, kept, budget


RESERVE_SHARE, RESERVE_MAX_S = 0.1, 300.0  # of a search's budget, for the final evaluation


def final_reserve(budget: float) -> float:
    """What a search keeps of its budget for the final evaluation and bundle."""
    return min(RESERVE_MAX_S, RESERVE_SHARE * budget)


def least_budget(epoch_s: float) -> float:
    """The least budget that leaves `epoch_s` seconds for trials after the reserve."""
    budget = epoch_s / (1.0 - RESERVE_SHARE)
    return budget if final_reserve(budget) < RESERVE_MAX_S else epoch_s + RESERVE_MAX_S


def _check_budget(given: Config, recipe: Prepared, *, folds: int) -> None:
    """A budget too small for even one epoch of the recipe (the least a trial is scored on; with
    folds, one on each) is an error that says the least one that fits, measured here."""
    epoch_s = _epoch_seconds(recipe) * max(1, folds)
    budget, least = float(given.search.budget or 0.0), least_budget(epoch_s)
    if budget >= least:
        return
    each = f" on each of its {folds} folds" if folds else ""
    raise TunesmithError(
        f"search.budget of {budget:g} s is too small for one trial: one epoch of the recipe "
        f"({len(recipe.data.train)} rows, {recipe.config.model.backbone}){each} and its "
        f"evaluation take about {epoch_s:.0f} s here, and the final evaluation keeps a tenth of "
        "the budget",
        file=given.source, field="search.budget",
        fix=f"give at least {math.ceil(least)} s (or set search.trials alone, without a budget)",
    )


def _epoch_seconds(recipe: Prepared) -> float:
    """About how long one epoch of the recipe and its evaluation take here, from a few timed
    training steps: the backbone's passes over the rows its strategy needs (a probe's features
    cost a forward pass, about a third of a training step)."""
    from tunesmith.train.budget import EVAL_COST, measure_step_s

    settings = train_settings(recipe.config, kind=recipe.kind, loss_weights=_loss_weights(recipe))
    strategy = strategy_plan(recipe.config, settings).strategy
    model = task_model(recipe)
    batches = batches_for(recipe, settings.batch_size, settings.seed)
    step_s = measure_step_s(model, batches.train, precision=settings.precision,
                            loss=settings.loss)
    del model, batches
    gc.collect()
    per_row = step_s / settings.batch_size
    train_rows, val_rows = len(recipe.data.train), len(recipe.data.val)
    seconds = per_row * EVAL_COST * val_rows
    if strategy.probes:  # the features of every train and val row, once
        seconds += per_row * EVAL_COST * (train_rows + val_rows)
    if strategy.fine_tunes:
        seconds += per_row * train_rows
    return seconds


def _train_folds(
    given: Config, candidate: Prepared, values: dict[str, Any], folds: list[Any],
    trial_dir: Path, reporter: Reporter, left: float | None,
) -> _Kept:
    """One trial on every fold: a model per fold (in trials/N/fold-K), scored together on their
    out-of-fold predictions; the models predict as an ensemble. The first fold reports each
    evaluation to the pruner, so a hopeless trial stops as early as without folds (its score
    then rests on one fold only, and does not rank it)."""
    from tunesmith.search.folds import out_of_fold

    started = time.perf_counter()
    if PartialState().is_main_process:
        write_text(trial_dir / "config.yaml", candidate.config.to_yaml())
    members, results, outputs, targets = [], [], [], []
    for index, fold in enumerate(folds):
        with naming_the_config(given):
            fold_prepared = prepare(given.with_values(values), data=fold.data)
        share = None if left is None else max(
            1.0, (left - (time.perf_counter() - started)) / (len(folds) - index))
        model, result = train_candidate(fold_prepared, trial_dir / f"fold-{index}",
                                        reporter=reporter if index == 0 else None,
                                        time_budget=share)
        if result.stopped == "pruned":
            return _Kept(prepared=candidate, model=model, result=replace(result, best_val={}))
        fold_outputs, fold_targets = predict_part(model, fold_prepared, fold.data.val, result)
        members.append(model)
        results.append(result)
        outputs.append(fold_outputs)
        targets.append(fold_targets)
    oof = out_of_fold(folds, outputs, targets)
    return _Kept(
        prepared=candidate,
        model=Ensemble(members, candidate.kind),
        result=_folded_result(results, objective_for(candidate.kind).score(*oof),
                              time.perf_counter() - started),
        val_outputs=oof,
    )


def _folded_result(results: list[TrialResult], val: dict[str, float], wall_s: float
                   ) -> TrialResult:
    """One result for the fold models: their out-of-fold scores, the median best epoch."""
    return TrialResult(
        best_epoch=int(np.median([r.best_epoch for r in results])),
        best_val=val,
        precision=results[0].precision,
        history=[{**line, "fold": index} for index, r in enumerate(results) for line in r.history],
        steps=sum(r.steps for r in results),
        stopped=next((r.stopped for r in results if r.stopped), None),
        wall_s=wall_s,
    )


def _rank_backbones(given: Config, recipe: Prepared, space: Any) -> tuple[Any, dict[str, float]]:
    """With several candidate backbones: a linear probe on each one's frozen features, and the
    space's backbone choices cut to those within noise of the best probe."""
    from optuna.distributions import CategoricalDistribution

    from tunesmith.search.fidelity import probe_score, surviving
    from tunesmith.search.space import Param, Space
    from tunesmith.train.stages import backbone_features

    param = next((p for p in space.params if p.key == "model.backbone"), None)
    if param is None or len(param.distribution.choices) < 2 or recipe.kind == "multilabel":
        return space, {}
    objective, data = objective_for(recipe.kind), recipe.data
    scores: dict[str, float] = {}
    for spec in param.distribution.choices:
        with naming_the_config(given):
            candidate = prepare(given.with_values({"model.backbone": spec}), data=data)
        model = task_model(candidate)
        precision = resolve_precision(candidate.config.train.precision, default_device())
        features = {
            name: backbone_features(model, eval_batches(
                candidate.backbone, candidate.inputs(part), data.targets(part),
                batch_size=EVAL_BATCH_SIZE), precision=precision)
            for name, part in (("train", data.train), ("val", data.val))
        }
        scores[spec] = probe_score(*features["train"], *features["val"], objective)
        del model, candidate
        gc.collect()
    keep = surviving(scores, len(data.val), objective)
    dropped = [spec for spec in scores if spec not in keep]
    console.print("backbone probes (val " + objective.metric + "): " + ", ".join(
        f"{spec} {score:.3f}" for spec, score in scores.items())
        + (f"; dropped {', '.join(dropped)}" if dropped else ""))
    narrowed = Param(param.key, CategoricalDistribution(keep), param.condition, param.allowed)
    params = tuple(narrowed if p.key == param.key else p for p in space.params)
    return Space(params, space.fixed), scores


def _space_context(prepared: Prepared) -> Any:
    from tunesmith.search.space import SpaceContext

    return SpaceContext(
        profile=prepared.profile,
        recipe=prepared.config,
        blocks=len(prepared.backbone.blocks()),
        scratch=is_scratch(prepared.config),
    )


def _signature(space: Any, recipe: Prepared, *, folds: int) -> dict[str, Any]:
    """What makes two searches the same study: the task, the data's split, the folds a trial is
    scored on and the space."""
    return {
        "task": recipe.data.task,
        "folds": folds,
        "splits": {name: part["ids_sha256"]
                   for name, part in recipe.data.splits["parts"].items()},
        "space": {param.key: repr(param.distribution) for param in space.params},
        "fixed": {key: str(value) for key, value in space.fixed.items()},
    }


def _trained_trial(given: Config, recipe: Prepared, trial: Any, folds: list[Any]) -> _Kept:
    """A trial an earlier process trained, rebuilt from its config and best weights (with folds,
    each fold's, their out-of-fold outputs computed again)."""
    from tunesmith.search.folds import out_of_fold
    from tunesmith.train.checkpoint import BEST

    trial_dir = recipe.config.run_dir / "trials" / str(trial.number)
    values = trial_values(trial, dict(trial.params))
    candidate = prepare(given.with_values(values), data=recipe.data)
    if candidate.config.model.peft is not None:
        raise TunesmithError(
            f"trial {trial.number} (an adapter) was trained by an earlier run and cannot be "
            "rebuilt yet",
            file=trial_dir, field="--resume", fix="run without --resume to search afresh",
        )
    result = TrialResult(
        best_epoch=int(trial.user_attrs.get("best_epoch", -1)),
        best_val=dict(trial.user_attrs.get("val", {})),
        precision=resolve_precision(candidate.config.train.precision, default_device()),
    )

    def rebuilt(prepared: Prepared, folder: Path) -> TaskModel:
        model = task_model(prepared)
        load_weights(model, folder / BEST, field="--resume", architecture="the trial's model")
        return model

    if not folds:
        return _Kept(trial.number, candidate, rebuilt(candidate, trial_dir), result)
    members, outputs, targets = [], [], []
    for index, fold in enumerate(folds):
        fold_prepared = prepare(given.with_values(values), data=fold.data)
        members.append(rebuilt(fold_prepared, trial_dir / f"fold-{index}"))
        fold_outputs, fold_targets = predict_part(members[-1], fold_prepared, fold.data.val, result)
        outputs.append(fold_outputs)
        targets.append(fold_targets)
    return _Kept(trial.number, candidate, Ensemble(members, candidate.kind), result,
                 out_of_fold(folds, outputs, targets))


# Settings that change how fast a run trains, not what it trains: a run resumes under others.
SPEED_ONLY = frozenset({"train.workers"})


def _check_resumable(prepared: Prepared) -> None:
    """A resumed run must have the config it was started with."""
    config = prepared.config
    saved = config.run_dir / "config.yaml"
    if not saved.is_file():
        raise TunesmithError(
            f"there is no run to resume in {config.run_dir}",
            file=config.source,
            field="--resume",
            fix="run without --resume to start it, or check name and output_dir",
        )
    differences = [
        difference
        for difference in config_differences(yaml.safe_load(saved.read_text()),
                                             yaml.safe_load(config.to_yaml()))
        if difference.split(":")[0] not in SPEED_ONLY
    ]
    if differences:
        shown = "; ".join(differences[:6]) + (" ..." if len(differences) > 6 else "")
        raise TunesmithError(
            f"the run in {config.run_dir} was made with another config: {shown}",
            file=config.source,
            field="--resume",
            fix="resume with the config the run was started with, or run without --resume to "
            "start afresh (the old run folder is kept)",
        )


def config_differences(before: Any, after: Any, prefix: str = "") -> list[str]:
    """`key: old -> new` for every value that differs between two config mappings."""
    if isinstance(before, dict) and isinstance(after, dict):
        found: list[str] = []
        for key in sorted(set(before) | set(after), key=str):
            found += config_differences(before.get(key), after.get(key), f"{prefix}{key}.")
        return found
    return [] if before == after else [f"{prefix.rstrip('.')}: {before!r} -> {after!r}"]


def _bundle_inputs(prepared: Prepared) -> dict[str, Any]:
    if prepared.data.modality == "text":
        return {"text_column": prepared.config.data.text_column}
    if prepared.data.tabular is not None:
        return {"tabular": prepared.data.tabular.to_dict()}
    return {}


def predict_part(
    model: TaskModel | Ensemble, prepared: Prepared, part: Examples, result: TrialResult
) -> tuple[np.ndarray, np.ndarray]:
    """(outputs, targets) of `model` on a part, computed as it was trained (its precision)."""
    batches = eval_batches(
        prepared.backbone, prepared.inputs(part), prepared.data.targets(part),
        batch_size=EVAL_BATCH_SIZE,
    )
    device = next(model.parameters()).device
    autocast = autocast_for(result.precision, device)
    return collect_logits(model, batches, device=device, autocast=autocast)


def evaluate_part(
    model: TaskModel | Ensemble, prepared: Prepared, part: Examples, result: TrialResult
) -> dict[str, float]:
    return objective_for(prepared.kind).score(*predict_part(model, prepared, part, result))


PROBE_ROWS = 5000  # training rows the linear-probe baseline is fitted on, at most


def run_baselines(prepared: Prepared) -> list[Baseline]:
    """The majority, classic and linear-probe baselines, fitted on the train part (see
    `tunesmith.evaluate.baselines`)."""
    from tunesmith.evaluate.baselines import (
        Parts,
        boosted_trees,
        fitted,
        linear_model,
        majority,
        pixels,
        text_model,
    )
    from tunesmith.train.stages import backbone_features

    data, kind = prepared.data, prepared.kind
    targets = np.asarray(data.targets(data.train))
    classes = len(data.classes)
    found = [majority(kind, Parts(data.train, data.val, data.test, targets, classes))]
    modality = data.train.modality
    with console.status("baselines"):
        if modality == "text":
            parts = Parts(data.train.inputs, data.val.inputs, data.test.inputs, targets, classes)
            found.append(fitted("tfidf_logistic", "TF-IDF of words and word pairs + logistic "
                                "regression", kind, parts, text_model(targets)))
        elif modality == "image":
            train, val, test = (pixels(part.inputs) for part in (data.train, data.val, data.test))
            parts = Parts(train, val, test, targets, classes)
            found.append(fitted("pixel_logistic", "logistic regression on 16x16 pixels", kind,
                                parts, linear_model))
        else:
            train, val, test = (np.asarray(prepared.inputs(part))
                                for part in (data.train, data.val, data.test))
            parts = Parts(train, val, test, targets, classes)
            found.append(fitted("gradient_boosting", "histogram gradient boosting", kind, parts,
                                boosted_trees))
        if not is_scratch(prepared.config):
            # The probe's forward pass is the costly part: on at most PROBE_ROWS training rows.
            rows = np.random.default_rng(prepared.config.seed).permutation(len(data.train))
            probed = data.train.subset(sorted(rows[:PROBE_ROWS].tolist()))
            model = task_model(prepared)
            precision = resolve_precision(prepared.config.train.precision, default_device())
            train, val, test = (backbone_features(model, eval_batches(
                prepared.backbone, prepared.inputs(part), data.targets(part),
                batch_size=EVAL_BATCH_SIZE), precision=precision)[0]
                for part in (probed, data.val, data.test))
            del model
            found.append(fitted(
                "linear_probe", "a linear model on the frozen pretrained features", kind,
                Parts(train, val, test, np.asarray(data.targets(probed)), classes),
                linear_model))
    return found


def write_predictions_record(
    run_dir: Path, prepared: Prepared, outputs: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    """The outputs the metrics were computed from (arrays), and the test rows as a table: id,
    input, label and prediction (with its probability)."""
    import pandas as pd

    arrays = {f"{name}_{what}": np.asarray(array) for name, pair in outputs.items()
              for what, array in zip(("outputs", "targets"), pair, strict=True)}

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:  # a handle: savez would add .npz to a temporary name
            np.savez_compressed(handle, **cast(dict[str, Any], arrays))

    atomic_write(run_dir / PREDICTIONS, write)
    test, (test_outputs, _) = prepared.data.test, outputs["test"]
    table = pd.DataFrame({"id": test.ids})
    if test.inputs:
        table["input"] = test.inputs
    kind, classes = prepared.kind, prepared.data.classes
    table["label"] = ["|".join(v) if kind == "multilabel" else v for v in test.labels]
    if kind == "classification":
        log_probs = test_outputs - np.logaddexp.reduce(test_outputs, axis=1, keepdims=True)
        table["predicted"] = [classes[i] for i in test_outputs.argmax(axis=1)]
        table["probability"] = np.exp(log_probs.max(axis=1)).round(6)
    elif kind == "multilabel":
        table["predicted"] = ["|".join(classes[j] for j in np.flatnonzero(row > 0))
                              for row in test_outputs]
    else:
        table["predicted"] = test_outputs.reshape(-1)
    write_text(run_dir / TEST_PREDICTIONS, table.to_csv(index=False))


def _metrics_record(
    prepared: Prepared, result: TrialResult, scores: dict[str, dict[str, Any]], wall_s: float, *,
    baselines: dict[str, Any], search: dict[str, Any] | None = None,
    calibration: Calibration | None = None, classes_table: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    data = prepared.data
    train = prepared.config.train
    return {
        "task": data.task,
        "primary_metric": objective_for(prepared.kind).metric,
        "test": scores["test"],
        "val": scores["val"],
        "per_class": classes_table,
        "calibration": None if calibration is None else calibration.to_json(),
        "baselines": baselines,
        "search": search or {
            "trials_completed": 1,
            "trials_pruned": 0,
            "best_trial": 0,
            "best_params": {},
        },
        "config": {"strategy": prepared.config.model.strategy,
                   "train": train.model_dump(mode="json")},
        "train": {
            "strategy": prepared.config.model.strategy,
            "best_epoch": result.best_epoch,
            "steps": result.steps,
            "stopped": result.stopped,
            "precision": result.precision,
            "samples_per_s": result.train_samples_per_s,
            "wall_s": round(result.wall_s, 1),
        },
        "wall_s": round(wall_s, 1),
        "test_rows": len(data.test),
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    """Of tunesmith, Python and the libraries a result depends on."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    found = {"tunesmith": __version__, "torch": torch.__version__,
             "python": platform.python_version()}
    for package in ("transformers", "timm", "peft", "optuna", "scikit-learn", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


@dataclass(frozen=True)
class LrFindSummary:
    suggested_lr: float
    suggested_head_lr: float
    plot: Path
    record: Path


def lr_find(
    config: Config | str | Path, overrides: list[str] | None = None, *, steps: int = 100
) -> LrFindSummary:
    """The learning-rate range test on the config's data and model (`tunesmith lr-find`): writes
    `lr_find.json` and `lr_find.png` to the run folder; nothing else of a run is touched."""
    from tunesmith.train.lr_find import lr_range_test, plot

    prepared = prepare(_as_config(config, overrides))
    settings = train_settings(
        prepared.config, kind=prepared.kind, loss_weights=_loss_weights(prepared),
        target_std=(prepared.target_scale() or (0.0, 1.0))[1],
    )
    model = task_model(prepared)
    loader = batches_for(prepared, settings.batch_size, settings.seed).train
    test = lr_range_test(model, loader, settings, steps=steps)
    run_dir = prepared.config.run_dir
    record = run_dir / "lr_find.json"
    write_json(record, {"config": prepared.config.source, **test.to_json()})
    image = run_dir / "lr_find.png"
    atomic_write(image, lambda tmp: plot(test, tmp))
    return LrFindSummary(test.suggested, test.suggested * test.head_ratio, image, record)


def inspect(
    data: str | Path,
    *,
    test: str | Path | None = None,
    task: str = "auto",
    **options: Any,
) -> DataReport:
    """Check a dataset as `tunesmith inspect` does. `options` are `data` config keys
    (label_column, text_column, label_delimiter, format, delimiter, encoding, ...)."""
    chosen, data_config = inspect_options(
        {"task": task, "data": {"train": data, "test": test, **options}}
    )
    return inspect_data(data_config, task=chosen, resolve=lambda path: Path(path).absolute())


def load(run_or_bundle: str | Path) -> Predictor:
    return load_predictor(run_or_bundle)


def report(run_dir: str | Path) -> Path:
    """Rebuild `report.html` of a run folder from what the folder holds."""
    return write_report(Path(run_dir))


@dataclass(frozen=True)
class Evaluation:
    source: Path  # the data scored
    rows: int
    scores: dict[str, Any]  # metrics.json's form: {metric: {"value", "ci95"}}
    record: Path  # where the scores were written


def evaluate(run_dir: str | Path, data: str | Path | None = None) -> Evaluation:
    """Score a run's bundle on labelled data: the run's own test part (as its config splits it
    again) or `data`, a file or folder in the training data's format and columns. The scores
    and their intervals go to `RUN_DIR/evaluations/NAME.json`."""
    from tunesmith.export.predictor import bundle_folder

    folder = Path(run_dir)
    require_run_folder(folder)
    bundle_folder(folder)  # a run that never finished has no bundle: said before any data is read
    config = load_config(folder / "config.yaml")
    if data is not None:
        config = config.with_values({"data.test": str(Path(data).resolve())})
    part = load_task_data(config).test
    predictor = load_predictor(folder)
    kind = predictor.kind
    _check_labels(part, predictor, kind)
    inputs = part.features if part.features is not None else part.inputs
    outputs = predictor.outputs(inputs)
    if kind == "classification":
        outputs = scaled(outputs, predictor.temperature)
    targets = _targets_for(part, predictor.classes, kind)
    scores = scored_with_intervals(kind, outputs, targets, seed=config.seed)
    name = "test" if data is None else Path(data).stem
    record = folder / "evaluations" / f"{name}.json"
    write_json(record, {"data": str(part.source), "rows": len(part), "scores": scores})
    return Evaluation(part.source, len(part), scores, record)


def export(run_dir: str | Path, format: str = "onnx", *, quantize: bool = False) -> Any:
    """Export a run's bundle: `onnx` writes `RUN_DIR/model.onnx` (checked against PyTorch on the
    run's test rows with ONNX Runtime; `quantize` adds an int8 graph scored on them) and
    `export.json`; `safetensors` checks the bundle's weights and says where they are."""
    from tunesmith.export.bundle import WEIGHTS
    from tunesmith.export.onnx import export_onnx
    from tunesmith.export.predictor import bundle_folder

    folder = Path(run_dir)
    if format not in ("onnx", "safetensors"):
        raise TunesmithError(f"unknown export format {format!r}", field="--format",
                             fix="use --format onnx or --format safetensors")
    bundle = bundle_folder(folder)
    predictor = load_predictor(folder)  # checks the weights against their checksum
    if format == "safetensors":
        return bundle / WEIGHTS
    require_run_folder(folder)
    test = load_task_data(load_config(folder / "config.yaml")).test
    inputs = test.features if test.features is not None else test.inputs
    targets = _targets_for(test, predictor.classes, predictor.kind)
    return export_onnx(predictor, folder, inputs, evaluation=(inputs, targets),
                       quantize=quantize)


def _check_labels(part: Examples, predictor: Predictor, kind: str) -> None:
    if kind == "regression":
        return
    known = set(predictor.classes)
    seen = {label for labels in part.labels for label in
            (labels if kind == "multilabel" else [labels])}
    unknown = sorted(str(label) for label in seen - known)
    if unknown:
        raise TunesmithError(
            f"the evaluation data has labels the model never saw: {', '.join(unknown[:10])}"
            + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""),
            file=part.source, field="data.label_column",
            fix="evaluate on data labelled with the model's classes ("
            + ", ".join(predictor.classes[:10]) + (", ..." if len(predictor.classes) > 10 else "")
            + "), or fine-tune on these labels")


def _targets_for(part: Examples, classes: list[str], kind: str) -> np.ndarray:
    """`part`'s targets against the bundle's classes (the ones its outputs are in)."""
    return np.asarray(label_targets(part.labels, classes, kind))
