"""The search stage as a run drives it: the study opened (or joined) over the prepared
recipe, its trials trained by `train_candidate` (on every fold where the data is small), and the
final model chosen on validation alone: the best trial, a soup of it with the trials validation
cannot tell from it, or their ensemble. The search itself (space, sampler, pruner, loop, soups)
is `tunesmith.search`; this module builds and loads the models it needs.
"""

from __future__ import annotations

import gc
import math
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from optuna.trial import TrialState

from tunesmith.candidate import (
    EVAL_BATCH_SIZE,
    Prepared,
    as_config,
    batches_for,
    bundle_inputs,
    evaluate_part,
    head_spec,
    loss_weights,
    naming_the_config,
    plain_sample,
    predict_part,
    prepare,
    task_model,
    train_candidate,
)
from tunesmith.config import Config, redacted
from tunesmith.console import console
from tunesmith.errors import TunesmithError
from tunesmith.evaluate import objective_for
from tunesmith.io import logged_epochs, write_text
from tunesmith.models import ProbeModel, TaskModel
from tunesmith.models.ensemble import Ensemble
from tunesmith.models.inputs import eval_batches
from tunesmith.models.weights import load_weights
from tunesmith.search import is_scratch, strategy_plan, takes_adapters, train_settings
from tunesmith.search.run import STOPPED_ATTR, WALL_ATTR, trial_values, was_dropped
from tunesmith.search.space import config_values
from tunesmith.search.study import keeps_its_own_study, snapshot
from tunesmith.train import TrialResult
from tunesmith.train.heap import frozen_heap
from tunesmith.train.loop import Reporter
from tunesmith.train.precision import autocast_for, default_device, resolve_precision


def searches(config: Config) -> bool:
    """Whether the run searches: a budget, or more than one trial."""
    search = config.search
    return search.budget is not None or (search.trials or 1) > 1


@dataclass
class Kept:
    """The best trial so far, its model in memory."""

    number: int = -1
    prepared: Prepared | None = None
    model: TaskModel | Ensemble | None = None
    result: TrialResult | None = None
    # The model's validation (outputs, targets) once computed: out of fold over train+val for
    # fold models, else on the val part.
    val_outputs: tuple[np.ndarray, np.ndarray] | None = None

    def take(self, other: Kept, *, number: int) -> None:
        self.number, self.prepared, self.model = number, other.prepared, other.model
        self.result, self.val_outputs = other.result, other.val_outputs


def search_stage(given: Config, recipe: Prepared, *, resume: bool, started: float
                 ) -> tuple[Kept, dict[str, Any]]:
    """Trials from the study until the budget, counted from `started` (the run's start), is
    spent; the best on validation, as trained."""
    from tunesmith.search.run import best_trial, scored_trials
    from tunesmith.search.study import ENDED_ATTR

    study, trials, kept, budget = _run_study(given, recipe, resume=resume, started=started)
    if not keeps_its_own_study(given) and PartialState().is_main_process:
        snapshot(study, recipe.config.run_dir)  # for the report: every worker's trials
    objective = objective_for(recipe.kind)
    folds = _folds(recipe)
    trials, elsewhere = _weights_here(given, recipe.config.run_dir, trials, folds)
    if not scored_trials(trials, objective):
        raise _nothing_scored(given, study, budget)
    best = best_trial(trials, objective)
    if PartialState().is_main_process:  # resumed, the run trains no more trials
        study.set_user_attr(ENDED_ATTR, str(recipe.config.run_dir))
    if best.number != kept.number:  # trained by an earlier run or another worker: from its files
        kept = trained_trial(given, recipe, best, folds)
    assert kept.prepared is not None and kept.model is not None and kept.result is not None
    record = {**study_record(study, given), "best_trial": best.number,
              "profile": asdict(recipe.profile),
              "backbone_probes": study.user_attrs.get("backbone_probes", {}),
              "best_params": config_values(best.params), "spent_s": round(budget.spent(), 1),
              "folds": len(folds) or 1}
    if elsewhere:
        record["trials_elsewhere"] = elsewhere
    if folds:  # the fold models predict together; a soup of them would mix unrelated weights
        return kept, record
    kept.val_outputs = predict_part(kept.model, kept.prepared, kept.prepared.data.val,
                                    kept.result)
    error = _val_error(given, recipe, kept, objective)
    # The replicates' uniform soup averages runs that start from the same weights: a pretrained
    # backbone's, under a head zero-initialized or drawn with the config's seed. A network from
    # scratch draws all its first weights from the seed, which each replicate changes: averaging
    # such networks averages unrelated units, so its replicates are ensembled instead. (The
    # greedy soup, which keeps an ingredient only where validation improves, still looks.)
    soup: Any = None if is_scratch(recipe.config) else _replicate_soup(
        kept, trials, best, objective, error)
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


def _nothing_scored(given: Config, study: Any, budget: Any) -> TunesmithError:
    """Why the search ended without a trial to choose: the budget ran out before the first one
    finished, or every trial failed (the first one's error said)."""
    errors = [t.user_attrs["error"] for t in study.get_trials(deepcopy=False)
              if "error" in t.user_attrs]
    if errors:
        return TunesmithError(
            f"every trial of the search failed; the first: {errors[0]}",
            file=given.source, field="search",
            fix="look at the trials' errors in the run folder's study, and narrow search.space "
            "away from the values that fail")
    if given.search.budget is not None:
        spent = budget.spent()
        return TunesmithError(
            f"search.budget of {given.search.budget:g} s ran out before a trial finished "
            f"({spent:.1f} s spent on the search, a tenth of the budget kept for the final "
            "evaluation)",
            file=given.source, field="search.budget",
            fix=f"give a budget well above {math.ceil(spent / (1.0 - RESERVE_SHARE))} s, or set "
            "search.trials alone")
    return TunesmithError(
        "no trial of the search finished with a validation score", file=given.source,
        field="search", fix="look at the trials' errors in the run folder's study")


def _weights_here(given: Config, run_dir: Path, trials: list[Any], folds: list[Any]
                  ) -> tuple[list[Any], list[int]]:
    """The finished trials whose best weights this run folder holds, and the numbers of those it
    does not: trials of workers on other machines that write to their own disks. The final model
    is chosen among the first; when a better trial is elsewhere, the run says so."""
    def here(trial: Any) -> bool:
        folder = run_dir / "trials" / str(trial.number)
        # A pruned trial stopped after the fold it was pruned on (the first): it is never
        # chosen, and its folder holds that fold alone.
        trained = 1 if trial.state == TrialState.PRUNED else len(folds)
        parts = [folder / f"fold-{k}" for k in range(trained)] if folds else [folder]
        return all(_trained_weights(part) is not None for part in parts)

    found = {t.number: here(t) for t in trials}
    local = [t for t in trials if found[t.number]]
    elsewhere = sorted(number for number, is_here in found.items() if not is_here)
    if elsewhere and not local:
        raise TunesmithError(
            f"no trial of the study trained its weights into {run_dir / 'trials'}: trials "
            f"{', '.join(map(str, elsewhere[:8]))} were trained by workers whose run folders "
            "are elsewhere", file=given.source, field="output_dir",
            fix="give every worker the same output_dir on a shared file system, or run "
            "tunesmith run where trials were trained")
    if elsewhere:
        console.print(f"[yellow]trials {', '.join(map(str, elsewhere[:8]))} were trained "
                      f"elsewhere (their weights are not under {run_dir / 'trials'}): the final "
                      "model is chosen among this folder's trials; share output_dir between "
                      "workers to choose among all[/]")
    return local, elsewhere


ENSEMBLE_CANDIDATES = 5  # the most trials an ensemble of trials within noise averages


def _val_error(given: Config, recipe: Prepared, kept: Kept, objective: Any) -> float:
    """The standard error of the best trial's validation score, from its bootstrap interval."""
    from tunesmith.evaluate.intervals import bootstrap_intervals, standard_error

    assert kept.val_outputs is not None
    outputs, targets = kept.val_outputs
    low, high = bootstrap_intervals(recipe.kind, outputs, targets, seed=given.seed)[
        objective.metric]
    return standard_error(low, high)


def _ensemble_within_noise(
    given: Config, recipe: Prepared, kept: Kept, trials: list[Any], best: Any, objective: Any,
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
            other = trained_trial(given, recipe, by_number[number], [])
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


def _same_architecture(a: Kept, b: Kept) -> bool:
    """Whether two trials' models fit one bundle: the same backbone, network shape, head shape,
    preprocessing and inputs, and weights of the same names and shapes."""
    from tunesmith.search.soup import compatible

    assert a.prepared is not None and b.prepared is not None
    assert a.model is not None and b.model is not None
    structural = ("in_features", "num_outputs", "layers", "hidden", "activation", "target_scale")
    heads = [{k: head_spec(p)[k] for k in structural} for p in (a.prepared, b.prepared)]
    model_a, model_b = a.prepared.config.model, b.prepared.config.model
    return (
        model_a.backbone == model_b.backbone
        and model_a.scratch == model_b.scratch
        and heads[0] == heads[1]
        and a.prepared.backbone.preprocessing() == b.prepared.backbone.preprocessing()
        and bundle_inputs(a.prepared) == bundle_inputs(b.prepared)
        and compatible(a.model.state_dict(), b.model.state_dict())
    )


def _folds(recipe: Prepared) -> list[Any]:
    """The folds a search's trials cross-validate on (as many as the resolved config says);
    none when they use the val part."""
    from tunesmith.search.folds import make_folds

    count = int(recipe.config.search.folds)
    return make_folds(recipe.data, count, recipe.config.data.split.seed) if count > 1 else []


SOUP_CANDIDATES = 5  # the best trials tried as ingredients


def _replicate_soup(kept: Kept, trials: list[Any], best: Any, objective: Any,
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


def _trained_weights(folder: Path) -> Path | None:
    """A trial's (or fold's) best weights: the whole model's, or a linear probe's head alone
    (its backbone is the pretrained one); None when the folder holds neither."""
    from tunesmith.train.checkpoint import BEST
    from tunesmith.train.loop import best_weights_name

    for name in (BEST, best_weights_name("probe")):
        if (folder / name).is_file():
            return folder / name
    return None


def _best_weights(run_dir: Path, number: int) -> Path:
    from tunesmith.train.checkpoint import BEST

    return run_dir / "trials" / str(number) / BEST


def _greedy_soup(kept: Kept, trials: list[Any], best: Any, objective: Any) -> Any:
    """The greedy soup of the top trials whose weights can be averaged with the best's (same
    backbone and architecture), or None with fewer than two such trials."""
    from tunesmith.search.soup import greedy_soup

    assert kept.prepared is not None
    metric = objective.metric
    run_dir = kept.prepared.config.run_dir
    scored = sorted((t for t in trials if metric in t.user_attrs.get("val", {})
                     and t.number != best.number and _best_weights(run_dir, t.number).is_file()
                     and _same_activations(t, best)),
                    key=lambda t: t.user_attrs["val"][metric], reverse=objective.greater_is_better)
    others = [(t.number, float(t.user_attrs["val"][metric])) for t in scored[: SOUP_CANDIDATES - 1]]
    if not others:
        return None
    return _soup_of(kept, best, others, objective,
                    lambda candidates, score: greedy_soup(
                        candidates, score, greater_is_better=objective.greater_is_better))


# Drawn settings that change what a network computes but not its weights' names or shapes
# (which `soup.compatible` checks): weights trained under one do not average into another.
WEIGHTLESS_ARCHITECTURE = ("model.scratch.activation", "model.head.activation")


def _same_activations(trial: Any, best: Any) -> bool:
    return all(trial.params.get(key) == best.params.get(key) for key in WEIGHTLESS_ARCHITECTURE)


def _soup_of(kept: Kept, best: Any, others: list[tuple[int, float]], objective: Any,
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
    from tunesmith.train.batch_norm import recalibrate_norms

    model.load_state_dict(state)
    if not norms:
        return
    sample = plain_sample(prepared, RECALIBRATION_ROWS)
    device = next(model.parameters()).device
    recalibrate_norms(model, lambda: sample.loader, layers=norms,
                      autocast=autocast_for(result.precision, device))


def study_record(study: Any, given: Config) -> dict[str, Any]:
    states = [t.state.name for t in study.get_trials(deepcopy=False)
              if not was_dropped(t)]  # dropped before training: not a trial
    return {
        "trials_completed": states.count("COMPLETE"),
        "trials_pruned": states.count("PRUNED"),
        "trials_failed": states.count("FAIL"),
        "study": study.study_name,
        "storage": shown_storage(given),
    }


def shown_storage(config: Config) -> str:
    """The study's storage URL, its password left out."""
    from tunesmith.search.study import storage_url

    return redacted(storage_url(config, config.run_dir))


@dataclass(frozen=True)
class WorkerSummary:
    run_dir: Path
    study: dict[str, Any]


def search_worker(
    config: Config | str | Path, overrides: list[str] | str | None = None, *,
    storage: str | None = None, study: str | None = None,
) -> WorkerSummary:
    """Join the config's study (or `study` in `storage`) as one more worker: trials until the
    study's trial limit or this worker's budget is reached; no final model (the run that owns
    the study chooses it)."""
    given = as_config(config, overrides)
    chosen = {"storage": storage, "study": study}
    given = given.updated(search=given.search.model_copy(
        update={key: value for key, value in chosen.items() if value is not None}))
    if not searches(given):
        raise TunesmithError(
            "the config does not search: set search.trials above 1 or search.budget",
            file=given.source, field="search", fix="add search.trials or search.budget",
        )
    started = time.perf_counter()
    recipe = prepare(given)
    if given.search.budget is not None:
        _check_budget(given, recipe, folds=len(_folds(recipe)), started=started)
    recipe.config.run_dir.mkdir(parents=True, exist_ok=True)
    # A worker retries what a killed process of its machine left running; its budget is its own
    # wall time, not what the study spent before it joined.
    found, _, _, _ = _run_study(given, recipe, resume=True, own_budget=True, started=started)
    return WorkerSummary(recipe.config.run_dir, study_record(found, given))


def check_search_can_start(given: Config, recipe: Prepared, *, started: float) -> None:
    """Before a new run writes its folder (a refused search writes nothing, and leaves the last
    run where it is): a budget too small for one trial, and a shared study whose search an
    earlier run already ended, are refused."""
    from tunesmith.search.study import ended_study

    ended = ended_study(given, recipe.config.run_dir)
    if ended is not None:
        name = given.search.study or given.name
        raise TunesmithError(
            f"study {name!r} in {shown_storage(recipe.config)} has ended its search "
            f"already: the run in {ended} chose its final model from it",
            file=given.source, field="search.study",
            fix="finish that run with tunesmith run CONFIG --resume, or give this search a "
            f"study of its own (search.study: {name}-2, or --set search.study=...)")
    if given.search.budget is not None:
        _check_budget(given, recipe, folds=len(_folds(recipe)), started=started)


def _run_study(
    given: Config, recipe: Prepared, *, resume: bool, started: float, own_budget: bool = False
) -> tuple[Any, Any, Kept, Any]:
    """Open the study, retry what a killed run of it left running, and run trials until the
    budget (counted from `started`: the setting up, step timing and backbone probes count too)
    is spent; the best trial of this process is kept in memory. A resumed run whose search had
    chosen its final model (`search_stage` marks the study) trains no more trials."""
    from tunesmith.search.run import (
        Budget,
        finished,
        retry_interrupted,
        run_trials,
        spent_by_study,
    )
    from tunesmith.search.space import recipe_values, search_space
    from tunesmith.search.study import ENDED_ATTR, open_study

    run_dir = recipe.config.run_dir
    objective = objective_for(recipe.kind)
    folds = _folds(recipe)
    with naming_the_config(given):
        space = search_space(_space_context(recipe), given)
    # Before ranking the backbones: every worker joins the same study.
    signature = _signature(given, space, recipe, folds=len(folds) or 1)
    space, probes = _rank_backbones(given, recipe, space)
    first = recipe_values(space, recipe.config)
    epochs_high = max([int(recipe.config.train.epochs)] + [
        int(p.distribution.high) for p in space.params
        if p.key == "train.epochs" and hasattr(p.distribution, "high")
    ])
    study = open_study(given, run_dir, searched=signature, direction=objective.direction,
                       max_epochs=epochs_high,
                       seed=worker_seed(given.seed) if own_budget else given.seed)
    if probes:
        study.set_user_attr("backbone_probes", probes)
    if resume:
        for number in retry_interrupted(study, run_dir):
            console.print(f"[yellow]trial {number} was interrupted[/]: marked failed, retried")
    search = given.search
    reserve = 0.0 if search.budget is None else final_reserve(search.budget)
    budget = Budget(
        None if search.budget is None else search.budget - reserve, search.trials,
        spent_before=spent_by_study(study) if resume and not own_budget else 0.0,
        started=started, least_trial_s=FOLD_LEAST_S * len(folds) if folds else 0.0,
    )
    kept = Kept()

    def train(values: dict[str, Any], trial_dir: Path, reporter: Reporter,
              left: float | None) -> TrialResult:
        with naming_the_config(given):
            candidate = prepare(given.with_values(values), data=recipe.data)
        if folds:
            trained = _train_folds(given, candidate, values, folds, trial_dir, reporter, left)
        else:
            trained = Kept(0, candidate, *train_candidate(
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

    if resume and not own_budget and ENDED_ATTR in study.user_attrs:
        console.print("the search had ended before the run stopped: no more trials")
        return study, finished(study), kept, budget
    # Replicates soup with the recipe; fold models are ensembled, not souped, and the random
    # sampler is the baseline the search is compared with.
    replicate = not folds and given.search.sampler == "tpe"
    with frozen_heap():  # the data and libraries outlive every trial: collections skip them
        trials = run_trials(study, space, train, objective=objective, budget=budget,
                            run_dir=run_dir, first=first,
                            replicate_seed=given.seed if replicate else None,
                            wait_for_others=not own_budget)
    return study, trials, kept, budget


def worker_seed(seed: int) -> int:
    """The sampler seed of a worker joining a shared study (`tunesmith search`): the config's
    seed mixed with the worker's host and process. Seeded alike, workers started together would
    draw the same random trials, each trained twice (TPE's first draws, before it models
    anything, depend on the seed alone). The run that chooses the final model keeps the
    config's seed, so a search of one process is reproducible."""
    from tunesmith.search.run import worker_id

    return (seed + zlib.crc32(worker_id().encode())) % 2**32


RESERVE_SHARE, RESERVE_MAX_S = 0.1, 300.0  # of a search's budget, for the final evaluation


def final_reserve(budget: float) -> float:
    """What a search keeps of its budget for the final evaluation and bundle."""
    return min(RESERVE_MAX_S, RESERVE_SHARE * budget)


def least_budget(epoch_s: float) -> float:
    """The least budget that leaves `epoch_s` seconds for trials after the reserve."""
    budget = epoch_s / (1.0 - RESERVE_SHARE)
    return budget if final_reserve(budget) < RESERVE_MAX_S else epoch_s + RESERVE_MAX_S


FOLD_LEAST_S = 1.0  # the least time a trial's fold model is given (see `_train_folds`)
# What the set-up spends after the budget check, before the first trial: the run folder, the
# study opened or created (about half a second for SQLite here), the search space's signature.
AFTER_CHECK_S = 1.0


def _check_budget(given: Config, recipe: Prepared, *, folds: int, started: float) -> None:
    """A budget too small for even one epoch of the recipe (the least a trial is scored on; with
    folds, one on each, each given at least `FOLD_LEAST_S`) after what the search spent since
    `started` (this measurement among it) is an error that says the least one that fits,
    measured here."""
    epoch_s = _epoch_seconds(recipe)
    epoch_s = max(epoch_s, FOLD_LEAST_S) * folds if folds else epoch_s
    spent = time.perf_counter() - started + AFTER_CHECK_S
    budget, least = float(given.search.budget or 0.0), least_budget(epoch_s + spent)
    if budget >= least:
        return
    each = f" on each of its {folds} folds (at least {FOLD_LEAST_S:g} s each)" if folds else ""
    raise TunesmithError(
        f"search.budget of {budget:g} s is too small for one trial: one epoch of the recipe "
        f"({len(recipe.data.train)} rows, {recipe.config.model.backbone}) and its evaluation"
        f"{each} take about {epoch_s:.0f} s here, {spent:.0f} s went to setting the search up, "
        "and the final evaluation keeps a tenth of the budget",
        file=given.source, field="search.budget",
        fix=f"give at least {math.ceil(least)} s (or set search.trials alone, without a budget)",
    )


def _epoch_seconds(recipe: Prepared) -> float:
    """About how long one epoch of the recipe and its evaluation take here, from a few timed
    training steps: the backbone's passes over the rows its strategy needs (a probe's features
    cost a forward pass, about a third of a training step)."""
    from tunesmith.train.budget import EVAL_COST, measure_step_s

    settings = train_settings(recipe.config, kind=recipe.kind, loss_weights=loss_weights(recipe))
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
) -> Kept:
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
            FOLD_LEAST_S, (left - (time.perf_counter() - started)) / (len(folds) - index))
        model, result = train_candidate(fold_prepared, trial_dir / f"fold-{index}",
                                        reporter=reporter if index == 0 else None,
                                        time_budget=share)
        if result.stopped == "pruned":
            return Kept(prepared=candidate, model=model, result=replace(result, best_val={}))
        fold_outputs, fold_targets = predict_part(model, fold_prepared, fold.data.val, result)
        members.append(model)
        results.append(result)
        outputs.append(fold_outputs)
        targets.append(fold_targets)
    oof = out_of_fold(folds, outputs, targets)
    return Kept(
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


def check_space(given: Config, recipe: Prepared) -> None:
    """The search space the config asks for, checked as the search will (`tunesmith validate`):
    keys outside the space, values it does not allow, keys also fixed."""
    from tunesmith.search.space import search_space

    with naming_the_config(given):
        search_space(_space_context(recipe), given)


def _space_context(prepared: Prepared) -> Any:
    from tunesmith.search.space import SpaceContext

    return SpaceContext(
        profile=prepared.profile,
        recipe=prepared.config,
        blocks=len(prepared.backbone.blocks()),
        scratch=is_scratch(prepared.config),
        adapters=takes_adapters(prepared.config),
    )


FOLDERS = re.compile(r"/?(?:[^/?=:]+/)+")  # the folders of a path, up to its last part
# Settings that may differ between the workers of one study: where each reads the data from
# (the split's row hashes say it is the same data) and what suits each machine.
WORKER_OWN_SETTINGS = frozenset({
    "data.train", "data.val", "data.test", "data.format", "data.delimiter", "data.encoding",
    "train.precision", "train.workers", "train.compile", "train.log_to", "train.checkpoint_steps",
})


def _signature(given: Config, space: Any, recipe: Prepared, *, folds: int) -> dict[str, Any]:
    """What makes two searches the same study: the task, the data's split, the folds a trial is
    scored on, the space, and every other setting of the data, model and training as the config
    gives it (an optimizer or schedule not searched, the patience, the augmentation)."""
    searched = {param.key for param in space.params} | set(space.fixed)
    settings = _flat(given.model_dump(mode="json", include={"data", "model", "train"}))
    # a backbone by its name: each machine may keep the weights in a folder of its own
    settings["model.backbone"] = FOLDERS.sub("", str(settings["model.backbone"]))
    return {
        "task": recipe.data.task,
        "folds": folds,
        "splits": {name: part["ids_sha256"]
                   for name, part in recipe.data.splits["parts"].items()},
        "space": {param.name: repr(param.distribution) for param in space.params},
        "fixed": {key: str(value) for key, value in space.fixed.items()},
        "settings": {key: repr(value) for key, value in settings.items()
                     if key not in searched and key not in WORKER_OWN_SETTINGS},
    }


def _flat(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} as {"train.lr": 1}."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def trained_trial(given: Config, recipe: Prepared, trial: Any, folds: list[Any]) -> Kept:
    """A trial an earlier process trained, rebuilt from its config and best weights (with folds,
    each fold's, their out-of-fold outputs computed again)."""
    from tunesmith.search.folds import out_of_fold
    from tunesmith.train.checkpoint import BEST

    trial_dir = recipe.config.run_dir / "trials" / str(trial.number)
    values = trial_values(trial, config_values(trial.params))
    candidate = prepare(given.with_values(values), data=recipe.data)
    if candidate.config.model.peft is not None:
        raise TunesmithError(
            f"trial {trial.number} (an adapter) was trained by an earlier run and cannot be "
            "rebuilt yet",
            file=trial_dir, field="--resume", fix="run without --resume to search afresh",
        )
    epochs = logged_epochs(trial_dir)
    result = TrialResult(
        best_epoch=int(trial.user_attrs.get("best_epoch", -1)),
        best_val=dict(trial.user_attrs.get("val", {})),
        precision=resolve_precision(candidate.config.train.precision, default_device()),
        history=epochs,
        steps=int(epochs[-1]["step"]) if epochs else 0,
        stopped=trial.user_attrs.get(STOPPED_ATTR),
        wall_s=float(trial.user_attrs.get(WALL_ATTR, 0.0)),
    )

    def rebuilt(prepared: Prepared, folder: Path) -> TaskModel:
        model = task_model(prepared)
        weights = _trained_weights(folder)
        if weights is not None and weights.name != BEST:  # a linear probe: the pretrained
            load_weights(ProbeModel(model.head), weights, field="--resume",  # backbone under
                         architecture="the trial's head")  # the probed head
        else:  # a missing file's error names it
            load_weights(model, folder / BEST, field="--resume", architecture="the trial's model")
        return model

    if not folds:
        return Kept(trial.number, candidate, rebuilt(candidate, trial_dir), result)
    members, outputs, targets = [], [], []
    for index, fold in enumerate(folds):
        fold_prepared = prepare(given.with_values(values), data=fold.data)
        members.append(rebuilt(fold_prepared, trial_dir / f"fold-{index}"))
        fold_outputs, fold_targets = predict_part(members[-1], fold_prepared, fold.data.val, result)
        outputs.append(fold_outputs)
        targets.append(fold_targets)
    return Kept(trial.number, candidate, Ensemble(members, candidate.kind), result,
                 out_of_fold(folds, outputs, targets))
