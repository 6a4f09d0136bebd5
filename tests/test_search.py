"""The search: trials in a real Optuna study (SQLite or a journal file), trial 0 the recipe,
pruning, the trial and time limits, resuming a killed search, and its bad inputs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

from conftest import config_dict, logged, write_yaml
from tunesmith import api, searching
from tunesmith.config import load_config
from tunesmith.errors import TunesmithError
from tunesmith.search.space import config_values

SMALL_SPACE = {"train.lr": {"low": 1e-3, "high": 3e-2}, "model.scratch.depth": [1, 2]}


def wine_config(folder: Path, csv: Path, name: str = "wine", train: dict[str, Any] | None = None,
                **search: Any) -> Path:
    raw = config_dict(folder, data_path=csv, backbone="scratch:mlp",
                      train_settings={"epochs": 6, "precision": "fp32", **(train or {})},
                      name=name,
                      search={"space": SMALL_SPACE, "folds": 1, **search})
    return write_yaml(folder / f"{name}.yaml", raw)


def study_of(run_dir: Path, name: str = "wine") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{run_dir / 'study.db'}")


def test_a_search_runs_its_trials_in_the_run_folder_study_with_trial_zero_the_recipe(
    tmp_path: Path, wine_csv: Path
) -> None:
    # one activation, so that trials share the best's architecture and the greedy soup looks;
    # the optimizer searched too (a network from scratch searches it where listed)
    space = {**SMALL_SPACE, "model.scratch.activation": ["relu"],
             "train.optimizer": ["adamw", "sgd"]}
    summary = api.fit(wine_config(tmp_path, wine_csv, trials=4, pruner="none", space=space))
    study = study_of(summary.run_dir)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    # trial 0 is the recipe: its lr the recipe's (1e-3 for a network from scratch), its depth
    # the recipe's for this table
    recipe = api.prepare(load_config(wine_config(tmp_path, wine_csv, trials=4))).config
    assert trials[0].params["train.lr"] == pytest.approx(float(recipe.train.lr))
    # a trial that draws SGD draws its rate as train.lr@sgd; either sets train.lr
    rates = [config_values(t.params)["train.lr"] for t in trials]
    assert trials[0].user_attrs["recipe"] is True
    assert len(set(rates)) == 4  # the others are drawn
    # each trial trained in its own folder with its own resolved config, and scored itself
    for trial, rate in zip(trials, rates, strict=True):
        folder = summary.run_dir / "trials" / str(trial.number)
        assert (folder / "best.safetensors").is_file()
        saved = load_config(folder / "config.yaml")
        assert float(saved.train.lr) == pytest.approx(rate)
        assert saved.train.optimizer == trial.params["train.optimizer"]
        assert trial.value == pytest.approx(trial.user_attrs["val"]["accuracy"])
    # the final model is the best on validation, and metrics.json says which
    best = max(trials, key=lambda t: (t.value, -t.number))
    metrics = json.loads((summary.run_dir / "metrics.json").read_text())
    assert metrics["search"]["best_trial"] == best.number
    assert metrics["search"]["trials_completed"] == 4
    assert metrics["search"]["best_params"] == config_values(best.params)
    # the greedy soup starts from the best trial and is used only when it beats it on val
    soup = metrics["search"]["soup"]
    assert soup["ingredients"][0] == best.number
    assert set(soup["ingredients"]) <= {t.number for t in trials}
    assert soup["best_single_val"] == pytest.approx(best.value)
    assert soup["used"] == (soup["val"] > best.value)
    chosen_val = soup["val"] if soup["used"] else best.value
    # without a better soup: an ensemble of the trials within noise of the best, if better
    ensemble = metrics["search"].get("ensemble")
    assert (ensemble is None) == soup["used"]
    if ensemble is not None:
        assert ensemble["within_noise"][0] == best.number
        if "members" in ensemble:
            assert ensemble["members"][0] == best.number
            assert set(ensemble["members"]) <= set(ensemble["within_noise"])
            assert ensemble["used"] == (ensemble["val"] > best.value)
        chosen_val = ensemble["val"] if ensemble["used"] else chosen_val
    assert metrics["val"]["accuracy"]["value"] == pytest.approx(chosen_val)
    # the bundle is the chosen model: it scores on the val rows what metrics.json says
    prepared = api.prepare(load_config(wine_config(tmp_path, wine_csv, trials=4)))
    val = prepared.data.val
    predicted = api.load(summary.run_dir).predict(val.features)
    accuracy = np.mean([str(p) == str(t) for p, t in zip(predicted, val.labels, strict=True)])
    assert accuracy == pytest.approx(chosen_val)
    assert 0.8 <= metrics["test"]["accuracy"]["value"] <= 1.0


def test_the_same_seed_gives_the_same_search(tmp_path: Path, wine_csv: Path) -> None:
    runs = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        summary = api.fit(wine_config(tmp_path / folder, wine_csv, trials=3, pruner="none"))
        runs.append([(t.params, t.value) for t in study_of(summary.run_dir).get_trials()])
    assert runs[0] == runs[1]


def test_hyperband_prunes_trials_that_fall_behind(tmp_path: Path, wine_csv: Path) -> None:
    # Rates from 1e-5 (hopeless in 6 epochs) to 3e-2: the slow ones are stopped early.
    config = write_yaml(tmp_path / "prune.yaml", config_dict(
        tmp_path, data_path=wine_csv, backbone="scratch:mlp", name="prune",
        train_settings={"epochs": 9, "precision": "fp32"},
        search={"folds": 1, "trials": 12, "pruner": "hyperband",
                "space": {"train.lr": {"low": 1e-6, "high": 3e-2}}}))
    summary = api.fit(config)
    trials = study_of(summary.run_dir, "prune").get_trials()
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "no trial was pruned"
    for trial in pruned:  # a pruned trial stopped before its last epoch
        assert max(trial.intermediate_values) < 9
    metrics = json.loads((summary.run_dir / "metrics.json").read_text())
    assert metrics["search"]["trials_pruned"] == len(pruned)


def test_a_time_budget_ends_the_search_and_is_kept(tmp_path: Path, wine_csv: Path) -> None:
    started = time.perf_counter()
    summary = api.fit(wine_config(tmp_path, wine_csv, budget="25s", pruner="none"))
    wall = time.perf_counter() - started
    trials = study_of(summary.run_dir).get_trials()
    assert len(trials) >= 2
    assert wall < 25 + max(t.user_attrs["wall_s"] for t in trials) + 15


class FakeClock:
    """`time` as the search loop reads it: a clock that moves only when a fake trial trains."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def _loop_trials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, seconds: float | None, trials: int,
    trial_s: float | list[float], replicate_seed: int | None = None,
    other_worker: Callable[[optuna.Study, int], None] | None = None,
    study: optuna.Study | None = None, least_trial_s: float = 0.0,
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The search loop on a real in-memory study and a fake clock, trial k taking `trial_s`
    seconds (or `trial_s[k]`, the last repeated), or what is left of the budget (then cut short,
    as the training loop's time budget cuts it); `other_worker(study, k)` acts on the study
    before the k-th training, as a worker sharing it would. (values trained, user attributes)
    of each trial trained, in order."""
    from optuna.distributions import FloatDistribution

    from tunesmith.evaluate.metrics import objective_for
    from tunesmith.search import run
    from tunesmith.search.space import Param, Space
    from tunesmith.search.study import make_sampler
    from tunesmith.train import TrialResult

    clock = FakeClock()
    monkeypatch.setattr(run, "time", clock)
    durations = trial_s if isinstance(trial_s, list) else [trial_s]
    if study is None:
        study = optuna.create_study(direction="maximize", sampler=make_sampler(0))
    space = Space((Param("train.lr", FloatDistribution(1e-4, 1e-1, log=True)),))
    trained: list[dict[str, Any]] = []
    numbers: list[int] = []

    def train(values: dict[str, Any], trial_dir: Path, reporter: Any, left: Any) -> TrialResult:
        if other_worker is not None:
            other_worker(study, len(trained))
        wanted = durations[min(len(trained), len(durations) - 1)]
        trained.append(values)
        numbers.append(reporter.trial.number)
        cut = left is not None and left < wanted
        clock.now += max(0.0, left) if cut else wanted
        reporter.trial.set_user_attr("cut_short", cut)  # what this fake trial knows of itself
        return TrialResult(best_epoch=0, best_val={"accuracy": 0.5}, precision="fp32",
                           stopped="time budget" if cut else None)

    run.run_trials(study, space, train, objective=objective_for("classification"),
                   budget=run.Budget(seconds, trials, started=clock.now,
                                     least_trial_s=least_trial_s), run_dir=tmp_path,
                   first={"train.lr": 1e-3}, replicate_seed=replicate_seed)
    attrs = {t.number: t.user_attrs for t in study.get_trials()}
    return [(values, attrs[number]) for values, number in zip(trained, numbers, strict=True)]


def replicates(trials: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[int | None]:
    return [attrs.get("replicate") for _, attrs in trials]


def test_no_trial_starts_with_no_more_left_than_its_folds_take_at_least(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each fold of a trial is given at least a second whatever is left, so a trial started with
    less than that overran the budget (5 folds, 20 s: the search spent 20.3 s)."""
    plain = _loop_trials(tmp_path, monkeypatch, seconds=8, trials=10, trial_s=3)
    assert len(plain) == 3 and plain[-1][1]["cut_short"]  # at 6 s, 2 s left: one more, cut
    folded = _loop_trials(tmp_path, monkeypatch, seconds=8, trials=10, trial_s=3,
                          least_trial_s=4)  # 2 s left is less than such a trial takes
    assert len(folded) == 2 and not any(attrs["cut_short"] for _, attrs in folded)


def test_a_budget_of_few_trials_is_spent_on_seeded_replicates_of_the_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 0.5 s trials in a 1.6 s budget: 1 done + 1.1 s left holds about 3 trials, fewer than the
    # sampler's 5 random draws, so the trials after the recipe repeat it with seeds 8, 9; then
    # 0.1 s is left, too little for any trial.
    trials = _loop_trials(tmp_path, monkeypatch, seconds=1.6, trials=4, trial_s=0.5,
                          replicate_seed=7)
    assert replicates(trials) == [None, 1, 2]
    (recipe, recipe_attrs), *others = trials
    assert recipe == {"train.lr": 1e-3} and recipe_attrs["recipe"] is True
    for number, (values, attrs) in enumerate(others, start=1):
        assert values == {"train.lr": 1e-3, "seed": 7 + number}
        assert attrs["replicate"] == number and attrs["seed"] == 7 + number


def test_no_replicate_starts_in_less_time_than_a_whole_one_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1.35 s of 0.5 s trials: after the recipe and one replicate 0.35 s are left, more than
    # half a trial (which a sampled trial may take) but less than a whole replicate, which
    # would be cut short: a squeezed schedule is another recipe, and it would dilute the soup.
    trials = _loop_trials(tmp_path, monkeypatch, seconds=1.35, trials=10, trial_s=0.5,
                          replicate_seed=7)
    assert replicates(trials) == [None, 1]
    assert not any(attrs["cut_short"] for _, attrs in trials)


def test_the_pace_of_replicates_is_their_quickest_whole_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The recipe's 0.8 s hold one-off costs; replicates take 0.5 s. After two of them 0.55 s
    # are left: a third fits at their pace (it would not at the recipe's).
    trials = _loop_trials(tmp_path, monkeypatch, seconds=1.85, trials=10,
                          trial_s=[0.8, 0.5], replicate_seed=7)
    assert replicates(trials) == [None, 1, 2]
    assert not any(attrs["cut_short"] for _, attrs in trials)


def test_what_two_workers_both_queued_trains_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Workers sharing a study each look before they queue the recipe or a replicate; two that
    # look at once both queue it. Here two workers queued the recipe before this loop looks (it
    # queues none then), and while it trains two others queue the first replicate (seed 8)
    # each: each trains once, and the later copies are dropped naming the trial that trained.
    from tunesmith.search.study import make_sampler

    def other_workers(study: optuna.Study, trained: int) -> None:
        if trained == 0:
            for _ in range(2):
                study.enqueue_trial({"train.lr": 1e-3}, user_attrs={"replicate": 1, "seed": 8})

    study = optuna.create_study(direction="maximize", sampler=make_sampler(0))
    for _ in range(2):
        study.enqueue_trial({"train.lr": 1e-3}, user_attrs={"recipe": True})
    trials = _loop_trials(tmp_path, monkeypatch, seconds=1.6, trials=4, trial_s=0.5,
                          replicate_seed=7, other_worker=other_workers, study=study)
    assert replicates(trials) == [None, 1, 2]
    assert [values.get("seed") for values, _ in trials] == [None, 8, 9]
    dropped = {t.number: t.user_attrs["duplicate_of"] for t in study.get_trials()
               if t.state == optuna.trial.TrialState.FAIL}
    assert dropped == {1: 0, 3: 2}


def test_two_workers_asking_for_the_last_trial_at_once_do_not_overrun_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # search.trials is 2. After the recipe this loop counts one trial and asks for another; a
    # second worker, past the same count, asked a moment before: its trial is number 1, this
    # loop's number 2, and the trials before 2 fill the limit, so this loop drops it and stops.
    from tunesmith.search.study import make_sampler

    study = optuna.create_study(direction="maximize", sampler=make_sampler(0))
    ask, asked = study.ask, []

    def another_worker_asks_first(*args: Any, **kwargs: Any) -> optuna.Trial:
        asked.append(True)
        if len(asked) == 2:
            ask()
        return ask(*args, **kwargs)

    monkeypatch.setattr(study, "ask", another_worker_asks_first)
    trials = _loop_trials(tmp_path, monkeypatch, seconds=None, trials=2, trial_s=0.5,
                          study=study)
    assert len(trials) == 1 and trials[0][1]["recipe"] is True
    states = {t.number: (t.state.name, t.user_attrs.get("over_limit")) for t in study.get_trials()}
    assert states == {0: ("COMPLETE", None), 1: ("RUNNING", None), 2: ("FAIL", 2)}


def test_what_counts_against_the_limit_is_the_same_for_every_worker() -> None:
    # Each worker decides alone whether the trial it drew is over search.trials, from the
    # trials numbered before it: done, pruned or under way, but not failed, not waiting in the
    # queue, and not a later copy of a queued trial (its worker drops it, marked yet or not).
    from tunesmith.search.run import over_limit

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(direction="maximize", storage=storage)
    recipe = {"train.lr": 1e-3}
    study.tell(study.ask(), 0.5)  # 0: done
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)  # 1: its training failed
    for _ in range(2):
        study.enqueue_trial(recipe, user_attrs={"recipe": True})
    study.ask(), study.ask()  # 2 and its copy 3, both drawn
    study.enqueue_trial(recipe, user_attrs={"replicate": 1})  # 4: waiting in the queue
    # 5: a worker that asked before 4 was queued, whose trial reached the storage after it
    storage.create_new_trial(storage.get_study_id_from_name(study.study_name))

    def filled(limits: tuple[int, ...] = (1, 2, 3)) -> dict[int, list[bool]]:
        return {t.number: [over_limit(study, t, limit) for limit in limits]
                for t in study.get_trials()}

    assert filled() == {
        0: [False, False, False],  # nothing before it
        1: [True, False, False],  # 0
        2: [True, False, False],  # 0 (1 failed)
        3: [True, True, False],  # 0, 2
        4: [True, True, False],  # 0, 2 (3 is a copy of 2)
        5: [True, True, False],  # 0, 2 (4 waits)
    }
    drawn = study.ask()
    assert drawn.number == 4
    assert filled()[5] == [True, True, True]  # 0, 2, 4


def test_a_budget_of_many_trials_or_the_random_baseline_draws_from_the_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 100 s of 0.01 s trials holds thousands: the sampler draws; and without replicate_seed (the
    # random-search baseline, fold searches) a short budget draws too.
    for seconds, trial_s, seed in ((100.0, 0.01, 7), (1.6, 0.5, None)):
        trials = _loop_trials(tmp_path, monkeypatch, seconds=seconds, trials=3,
                              trial_s=trial_s, replicate_seed=seed)
        drawn = [values for values, attrs in trials[1:]]
        assert len(drawn) == 2 and all(set(values) == {"train.lr"} for values in drawn)
        assert all(values["train.lr"] != 1e-3 for values in drawn)
        assert all("replicate" not in attrs for _, attrs in trials)


def test_a_budget_too_small_for_one_trial_says_the_least_one_and_that_one_fits(
    tmp_path: Path, run_cli: Any
) -> None:
    from sklearn.datasets import make_classification

    features, labels = make_classification(n_samples=20_000, n_features=40, random_state=0)
    frame = pd.DataFrame(features, columns=[f"x{i}" for i in range(40)]).assign(label=labels)
    frame.to_csv(tmp_path / "wide.csv", index=False)

    def config(budget: float) -> Path:  # a wide network: an epoch takes seconds
        return write_yaml(tmp_path / "wide.yaml", config_dict(
            tmp_path, data_path=tmp_path / "wide.csv", backbone="scratch:mlp", name="wide",
            train_settings={"epochs": 2, "precision": "fp32"},
            model={"scratch": {"depth": 3, "width": 1024}},
            search={"budget": budget, "pruner": "none"}))

    result = run_cli(["run", config(0.5)])
    assert result.code == 2
    assert "search.budget" in result.err and "too small for one trial" in result.err
    least = float(re.search(r"give at least (\d+) s", result.err).group(1))
    epoch = float(re.search(r"take about (\d+) s here", result.err).group(1))
    assert least >= epoch / 0.9 - 1 and least > 0.5
    assert not (tmp_path / "runs" / "wide" / "study.db").exists()  # refused before the study
    # What it says is enough: with twice that, trial 0 trains and is scored on validation.
    summary = api.fit(config(2 * least))
    trial = study_of(summary.run_dir, "wide").trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.intermediate_values


def test_a_journal_file_holds_the_study(tmp_path: Path, wine_csv: Path) -> None:
    journal = tmp_path / "shared.journal"
    summary = api.fit(wine_config(tmp_path, wine_csv, trials=2, storage=f"journal:{journal}"))
    assert journal.is_file() and not (summary.run_dir / "study.db").exists()
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    study = optuna.load_study(study_name="wine",
                              storage=JournalStorage(JournalFileBackend(str(journal))))
    assert len(study.get_trials()) == 2
    # The run folder keeps a copy of the study as its search ended, and the report draws the
    # search history from it.
    copy = optuna.load_study(study_name="wine",
                             storage=f"sqlite:///{summary.run_dir / 'study-snapshot.db'}")
    assert [(t.number, t.state, t.value, t.params) for t in copy.get_trials()] == [
        (t.number, t.state, t.value, t.params) for t in study.get_trials()]
    report = (summary.run_dir / "report.html").read_text()
    assert 'alt="search history"' in report and "study-snapshot.db" in report


def test_the_snapshot_of_a_shared_study_holds_every_workers_trials_as_it_stands(
    tmp_path: Path, wine_csv: Path
) -> None:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from tunesmith.search.study import snapshot

    journal = tmp_path / "shared.journal"
    study = optuna.create_study(study_name="wine", direction="maximize",
                                storage=JournalStorage(JournalFileBackend(str(journal))))
    for worker, value in (("a", 0.5), ("b", 0.75)):
        trial = study.ask()
        trial.set_user_attr("worker", worker)
        study.tell(trial, value)
    path = snapshot(study, tmp_path)
    copied = optuna.load_study(study_name="wine", storage=f"sqlite:///{path}")
    assert [(t.value, t.user_attrs["worker"]) for t in copied.get_trials()] == [
        (0.5, "a"), (0.75, "b")]
    study.tell(study.ask(), 0.9)  # a later snapshot replaces the copy, it does not add to it
    again = snapshot(study, tmp_path)
    copied = optuna.load_study(study_name="wine", storage=f"sqlite:///{again}")
    assert [t.value for t in copied.get_trials()] == [0.5, 0.75, 0.9]
    assert copied.best_value == 0.9


def test_the_final_model_is_chosen_among_the_trials_whose_weights_are_here(
    tmp_path: Path, wine_csv: Path, run_cli: Any
) -> None:
    """Workers on other machines write their trials' weights to their own disks: the run that
    chooses the final model picks among the trials its folder holds and names the others."""
    journal = tmp_path / "shared.journal"

    def machine(name: str, trials: int) -> Path:
        folder = tmp_path / name
        return wine_config(folder, wine_csv, trials=trials, pruner="none",
                           storage=f"journal:{journal}", study="shared")

    other = run_cli(["search", machine("b", 2)])  # trials 0 and 1, under b/runs
    assert other.code == 0, other.err
    # A run whose folder holds none of the study's trials says where they are, before anything
    # is evaluated.
    result = run_cli(["run", machine("c", 2)])
    assert result.code == 2
    assert "output_dir" in result.err and "were trained by workers whose run folders" in result.err
    summary = api.fit(machine("a", 4))  # trials 2 and 3, under a/runs
    search = summary.metrics["search"]
    assert search["trials_elsewhere"] == [0, 1]
    assert search["best_trial"] in (2, 3)
    snapshot = summary.run_dir / "study-snapshot.db"
    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{snapshot}")
    local = {t.number: t.user_attrs["val"]["accuracy"] for t in study.trials if t.number >= 2}
    assert local[search["best_trial"]] == max(local.values())


def test_a_linear_probe_trained_by_an_earlier_process_is_rebuilt_from_its_head(
    text_config: Any
) -> None:
    """A linear probe keeps the head alone (the backbone is the pretrained one); rebuilt from its
    files it scores on validation what it scored when trained."""
    from tunesmith.candidate import predict_part
    from tunesmith.searching import trained_trial

    config = load_config(text_config(model={"strategy": "linear-probe"},
                                     search={"trials": 2, "folds": 1}))
    summary = api.fit(config)
    trial = study_of(summary.run_dir, config.name).trials[0]
    assert not (summary.run_dir / "trials" / "0" / "best.safetensors").exists()
    recipe = api.prepare(config)
    kept = trained_trial(config, recipe, trial, [])
    assert kept.model is not None and kept.prepared is not None and kept.result is not None
    outputs, targets = predict_part(kept.model, kept.prepared, kept.prepared.data.val, kept.result)
    accuracy = float(np.mean(outputs.argmax(axis=1) == targets))
    assert accuracy == pytest.approx(trial.user_attrs["val"]["accuracy"])


def test_a_study_made_by_another_config_is_refused_naming_what_differs(
    tmp_path: Path, wine_csv: Path
) -> None:
    journal = tmp_path / "shared.journal"
    api.fit(wine_config(tmp_path, wine_csv, trials=2, storage=f"journal:{journal}"))
    other = write_yaml(tmp_path / "other.yaml", config_dict(
        tmp_path, data_path=wine_csv, backbone="scratch:mlp", name="other",
        train_settings={"epochs": 6, "precision": "fp32"},
        search={"folds": 1, "trials": 2, "study": "wine", "storage": f"journal:{journal}",
                "space": {"train.lr": {"low": 1e-4, "high": 1e-3}}}))
    with pytest.raises(TunesmithError, match="another config") as caught:
        api.search_worker(other)  # a worker joining (a new run is refused: the search ended)
    assert caught.value.field == "search.study" and "train.lr" in caught.value.problem


@pytest.mark.parametrize(
    ("storage", "says"),
    [
        ("postgresql://nobody@127.0.0.1:1/none", "cannot open the study storage"),
        ("sqlite:////no/such/folder/s.db", "cannot open the study storage"),
        ("journal:/no/such/folder/s.journal", "does not exist"),
    ],
)
def test_a_wrong_or_unreachable_storage_is_a_clear_error(
    tmp_path: Path, wine_csv: Path, storage: str, says: str
) -> None:
    with pytest.raises(TunesmithError, match=says) as caught:
        api.fit(wine_config(tmp_path, wine_csv, trials=2, storage=storage))
    assert caught.value.field == "search.storage" and caught.value.fix


@pytest.mark.parametrize(
    ("storage", "says"),
    [
        ("journal:", "journal: names no file"),
        ("notadb://x", "no database called 'notadb'"),
        ("study.db", "not a URL"),
        ("postgresql+nodriver://me:hunter2@db.example/s", "'postgresql+nodriver'"),
    ],
)
def test_validate_refuses_a_storage_that_is_not_a_storage_url(
    tmp_path: Path, wine_csv: Path, run_cli: Any, storage: str, says: str
) -> None:
    from test_cli import assert_user_error

    config = wine_config(tmp_path, wine_csv, trials=2, storage=storage)
    for command in ("validate", "run"):  # before anything is written
        result = run_cli([command, config])
        assert_user_error(result, config, "search.storage", says, "journal:PATH")
        assert "hunter2" not in result.err + result.out  # the password is not shown
    assert not (tmp_path / "runs").exists()
    assert run_cli(["validate", wine_config(tmp_path, wine_csv, trials=2,
                                            storage=f"journal:{tmp_path / 's.log'}")]).code == 0


def test_a_search_space_without_a_trial_limit_or_budget_is_warned_about(
    tmp_path: Path, wine_csv: Path, run_cli: Any
) -> None:
    unlimited = wine_config(tmp_path, wine_csv, name="unlimited")  # a space, no limit
    result = run_cli(["validate", unlimited])
    assert result.code == 0, result.err
    said = " ".join((result.out + result.err).split())
    assert "search.space is set" in said and "set search.trials or search.budget" in said
    limited = run_cli(["validate", wine_config(tmp_path, wine_csv, name="limited", trials=2)])
    assert limited.code == 0 and "search.space is set" not in limited.out + limited.err


def test_a_killed_search_resumes_keeping_finished_trials_and_retrying_the_interrupted_one(
    tmp_path: Path, wine_csv: Path
) -> None:
    # Trials of a few seconds, none stopped early: the kill lands a second into trial 1.
    raw = config_dict(tmp_path, data_path=wine_csv, backbone="scratch:mlp", name="killed",
                      train_settings={"epochs": 200, "patience": None, "precision": "fp32"},
                      search={"folds": 1, "trials": 3, "pruner": "none",
                              "space": {"train.lr": {"low": 1e-3, "high": 3e-2}}})
    config = write_yaml(tmp_path / "killed.yaml", raw)
    run_dir = tmp_path / "runs" / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "tunesmith", "run", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "CI": "1"},
    )
    deadline = time.time() + 240
    log = run_dir / "trials" / "1" / "metrics.jsonl"
    while time.time() < deadline:  # kill it inside trial 1, after trial 0 finished
        if (run_dir / "study.db").is_file() and log.is_file() and log.stat().st_size:
            first_written = log.stat().st_mtime
            break
        time.sleep(0.2)
    time.sleep(1.0)  # a second of training steps
    process.send_signal(signal.SIGKILL)
    killed_at = time.time()
    process.wait()
    before = study_of(run_dir, "killed").get_trials()
    assert before[0].state == optuna.trial.TrialState.COMPLETE
    assert before[1].state == optuna.trial.TrialState.RUNNING

    summary = api.fit(config, resume=True)
    after = study_of(summary.run_dir, "killed").get_trials()
    states = [t.state.name for t in after]
    assert states[0] == "COMPLETE" and after[0].value == before[0].value  # kept, not rerun
    assert states[1] == "FAIL"  # the interrupted one, marked failed...
    retry = next(t for t in after if t.user_attrs.get("retry_of") == 1)
    assert retry.params == before[1].params  # ...and run again with the same values
    assert states.count("COMPLETE") == 3
    metrics = json.loads((summary.run_dir / "metrics.json").read_text())
    assert metrics["search"]["trials_failed"] == 1
    # The budget counts what the interrupted trial ran: its start to its last step's log line,
    # which is no earlier than the line seen before the kill (a fraction of the time to the kill
    # would depend on how busy the machine is: how long its last step took).
    started = before[1].datetime_start.timestamp()
    assert first_written - started - 0.01 <= after[1].user_attrs["wall_s"] <= killed_at - started
    assert after[1].user_attrs["wall_s"] > 0
    assert metrics["search"]["spent_s"] >= sum(t.user_attrs["wall_s"] for t in after)
    # The train section tells the chosen trial's training, whichever process trained it; trial
    # 0's, rebuilt from its files as when it is chosen, tells what the killed process did.
    chosen = metrics["search"]["best_trial"]
    epochs = logged(run_dir / "trials" / str(chosen))
    assert metrics["train"]["steps"] == epochs[-1]["step"] > 0
    assert metrics["train"]["samples_per_s"] > 0
    given = load_config(config)
    rebuilt = searching.trained_trial(given, api.prepare(given), after[0], []).result
    assert rebuilt is not None
    assert rebuilt.steps == logged(run_dir / "trials" / "0")[-1]["step"] > 0
    assert rebuilt.train_samples_per_s > 0 and rebuilt.wall_s == after[0].user_attrs["wall_s"]


def test_small_tables_search_without_reading_the_data_again(
    tmp_path: Path, wine_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tunesmith import candidate

    reads = []
    original = candidate.load_task_data

    def counting(config: Any) -> Any:
        reads.append(config)
        return original(config)

    monkeypatch.setattr(candidate, "load_task_data", counting)
    api.fit(wine_config(tmp_path, wine_csv, trials=3, pruner="none"))
    assert len(reads) == 1



def _postgres_url() -> str:
    """The server .ci/run starts; elsewhere the test is skipped (CI must have it)."""
    url = os.environ.get("TUNESMITH_TEST_POSTGRES")
    if url is None:
        if os.environ.get("CI"):
            pytest.fail("CI runs this test against PostgreSQL: start it with .ci/postgres")
        pytest.skip("no PostgreSQL server (TUNESMITH_TEST_POSTGRES); .ci/run starts one")
    return url


@pytest.mark.parametrize("kind", ["postgresql", "journal"])
def test_two_workers_share_one_study_without_duplicate_or_lost_trials(
    tmp_path: Path, wine_csv: Path, kind: str
) -> None:
    if kind == "postgresql":
        storage = _postgres_url()
        study_name = f"shared-{os.getpid()}-{time.time_ns()}"  # a server outlives test runs
        opened: Any = storage
    else:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        journal = tmp_path / "shared.journal"
        storage, study_name = f"journal:{journal}", "shared"
        opened = JournalStorage(JournalFileBackend(str(journal)))
    # Trials long enough (about a second each) that one worker cannot run all six while the
    # other is still importing torch on a loaded machine.
    config = wine_config(tmp_path, wine_csv, name="shared", trials=6, pruner="none",
                         train={"epochs": 150, "patience": None})
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tunesmith", "search", str(config),
             "--storage", storage, "--study", study_name],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for _ in range(2)
    ]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    study = optuna.load_study(study_name=study_name, storage=opened)
    # A recipe both workers queued at once is dropped by the one holding the later copy.
    every = study.get_trials()
    assert sorted(t.number for t in every) == list(range(len(every)))  # none lost
    trials = [t for t in every if "duplicate_of" not in t.user_attrs
              and "over_limit" not in t.user_attrs]
    assert len(trials) == 6
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(t.state == optuna.trial.TrialState.FAIL for t in every if t not in trials)
    workers_seen = {t.user_attrs["worker"] for t in trials}
    assert len(workers_seen) == 2  # both did trials
    assert sum(t.user_attrs.get("recipe", False) for t in trials) == 1  # the recipe once
    # each trial's folder holds its own config; the study's best is one trial
    trials_dir = tmp_path / "runs" / "shared" / "trials"
    for trial in trials:
        assert (trials_dir / str(trial.number) / "config.yaml").is_file()
    assert study.best_trial.value == max(t.value for t in trials)


@pytest.mark.parametrize("kind", ["postgresql", "journal"])
def test_a_trial_whose_worker_went_silent_is_failed_and_queued_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A worker on another machine that dies leaves its trial running; its heartbeats stop
    (PostgreSQL's own, or those the workers record in a journal), and after the grace period
    the next worker fails the trial and queues its values again. A trial whose worker still
    beats is left alone."""
    from tunesmith.search import run
    from tunesmith.search import study as studies

    monkeypatch.setattr(studies, "HEARTBEAT_S", 1)
    monkeypatch.setattr(studies, "HEARTBEAT_GRACE_S", 3)
    url = _postgres_url() if kind == "postgresql" else f"journal:{tmp_path / 'shared.journal'}"
    storage = studies.open_storage(url, source="test")
    name = f"silent-{os.getpid()}-{time.time_ns()}"
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    lr = {"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    dead = study.ask(lr)
    dead.set_user_attr(run.WORKER_ATTR, "gpu-node-7:4242")  # another machine: no pid to check
    dead.set_user_attr(run.REPLICATE_ATTR, 2)
    alive = study.ask(lr)
    alive.set_user_attr(run.WORKER_ATTR, "gpu-node-8:4242")
    with run.heartbeat(study, dead):  # it beat, then its machine died
        pass
    with run.heartbeat(study, alive):
        assert run.fail_silent_workers_trials(study) == []  # within the grace period
        time.sleep(4.5)
        assert run.retry_interrupted(study) == [dead.number]
        assert run.fail_silent_workers_trials(study) == []  # failed once, queued once
    trials = study.get_trials()
    assert trials[dead.number].state == optuna.trial.TrialState.FAIL
    assert trials[alive.number].state == optuna.trial.TrialState.RUNNING
    queued = [t for t in trials if t.state == optuna.trial.TrialState.WAITING]
    assert len(queued) == 1 and queued[0].user_attrs[run.RETRY_ATTR] == dead.number
    assert queued[0].user_attrs[run.REPLICATE_ATTR] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        retry = study.ask(lr)
    assert retry.number == queued[0].number and retry.params == dead.params


def test_a_journal_trial_that_never_beat_counts_from_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that died between asking for its trial and its first heartbeat: the trial's
    start stands in for the heartbeat it never recorded. A second worker's copy of the study
    sees the same and queues nothing twice."""
    from tunesmith.search import run
    from tunesmith.search import study as studies

    monkeypatch.setattr(studies, "HEARTBEAT_GRACE_S", 2)
    url = f"journal:{tmp_path / 'shared.journal'}"
    study = optuna.create_study(study_name="s", storage=studies.open_storage(url, source="t"))
    lr = {"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    silent = study.ask(lr)
    silent.set_user_attr(run.WORKER_ATTR, "gpu-node-7:4242")
    assert run.fail_silent_workers_trials(study) == []
    time.sleep(2.5)
    other = optuna.load_study(study_name="s", storage=studies.open_storage(url, source="t"))
    stale = other.get_trials()[silent.number]  # both workers see the trial running and silent
    assert run.fail_silent_workers_trials(study) == [silent.number]
    # The other worker read the trial list before that: its write comes second and loses, so
    # it queues nothing again.
    monkeypatch.setattr(other, "get_trials", lambda **_: [stale])
    assert run.fail_silent_workers_trials(other) == []
    monkeypatch.undo()
    states = [t.state for t in other.get_trials()]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]


OPEN_STORAGE = """
import sys, time
from pathlib import Path
from tunesmith.search.study import open_storage
import optuna.storages, sqlalchemy  # imported before the start line, so that all start together
Path(sys.argv[2] + ".ready." + sys.argv[3]).touch()
while not Path(sys.argv[2]).exists():
    time.sleep(0.001)
open_storage(sys.argv[1], source="race")
"""


def test_workers_meeting_an_empty_database_all_open_it(tmp_path: Path) -> None:
    """The first contact makes Optuna's tables; workers started together race to make them.
    A new database on the server, then three processes opening it at once."""
    import psycopg

    server = _postgres_url()
    database = f"empty_{os.getpid()}_{time.time_ns()}"
    with psycopg.connect(server, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {database}")
    url = server.rsplit("/", 1)[0] + "/" + database
    script = tmp_path / "open_storage.py"
    script.write_text(OPEN_STORAGE)
    go = tmp_path / "go"
    workers = [
        subprocess.Popen([sys.executable, str(script), url, str(go), str(n)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for n in range(3)
    ]
    while len(list(tmp_path.glob("go.ready.*"))) < 3:
        assert all(worker.poll() is None for worker in workers), "a worker ended early"
        time.sleep(0.05)
    go.touch()
    outputs = [worker.communicate(timeout=120)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0, 0], outputs
    assert optuna.get_all_study_summaries(url) == []  # the tables exist, and nothing else


def test_search_refuses_a_config_that_does_not_search(
    tmp_path: Path, wine_csv: Path, run_cli: Any
) -> None:
    result = run_cli(["search", wine_config(tmp_path, wine_csv, trials=1)])
    assert result.code == 2 and "does not search" in result.err


CONSTANT_MODULE = """
import torch
from torch import nn


class Constant(nn.Module):
    num_features = 4

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.bias.expand(x.shape[0], 4)


def build(in_features):
    return Constant()
"""


def test_linear_probes_rank_candidate_backbones_and_drop_hopeless_ones(
    tmp_path: Path, wine_csv: Path
) -> None:
    (tmp_path / "constant_features.py").write_text(CONSTANT_MODULE)
    hopeless = "python:constant_features:build"
    config = write_yaml(tmp_path / "backbones.yaml", config_dict(
        tmp_path, data_path=wine_csv, backbone="scratch:mlp", name="backbones",
        train_settings={"epochs": 6, "precision": "fp32"},
        search={"folds": 1, "trials": 3, "pruner": "none",
                "space": {"model.backbone": ["scratch:mlp", hopeless]}}))
    summary = api.fit(config)
    metrics = json.loads((summary.run_dir / "metrics.json").read_text())
    probes = metrics["search"]["backbone_probes"]
    assert set(probes) == {"scratch:mlp", hopeless}
    # constant features can do no better than the majority class; random MLP features of the
    # standardized columns separate the three wines
    assert probes[hopeless] <= 0.5 < 0.8 <= probes["scratch:mlp"]
    trials = study_of(summary.run_dir, "backbones").get_trials()
    assert {t.params["model.backbone"] for t in trials} == {"scratch:mlp"}  # the other dropped


def test_survivors_are_those_within_two_standard_errors_of_the_best_probe() -> None:
    from tunesmith.evaluate.metrics import OBJECTIVES
    from tunesmith.search.fidelity import surviving

    accuracy = OBJECTIVES["classification"]
    # 400 val rows: the standard error at 0.80 is 0.02, so 0.77 stays and 0.75 goes
    scores = {"a": 0.75, "b": 0.80, "c": 0.77}
    assert surviving(scores, 400, accuracy) == ["b", "c"]
    # 25 rows: 0.08, so all three are within noise
    assert surviving(scores, 25, accuracy) == ["b", "c", "a"]
    rmse = OBJECTIVES["regression"]  # lower is better: SE about 1.0 / sqrt(200) = 0.07
    assert surviving({"x": 1.0, "y": 1.1, "z": 1.2}, 100, rmse) == ["x", "y"]


def test_trials_release_their_models_and_memory_between_trials(
    tmp_path: Path, wine_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    from tunesmith import searching
    from tunesmith.models import TaskModel

    live, resident = [], []
    original = searching.train_candidate

    def counting(*args: Any, **kwargs: Any) -> Any:
        gc.collect()
        live.append(sum(type(o) is TaskModel for o in gc.get_objects()))
        with open("/proc/self/statm") as statm:
            resident.append(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
        return original(*args, **kwargs)

    monkeypatch.setattr(searching, "train_candidate", counting)
    api.fit(wine_config(tmp_path, wine_csv, trials=10, pruner="none"))
    assert len(live) == 10
    # before each trial, at most the best model so far is alive: the others were let go
    assert max(live) <= 1 and live[0] == 0
    assert max(resident[2:]) <= 1.05 * resident[1]


def test_replicates_of_the_recipe_are_souped_uniformly_when_not_below_their_mean(
    tmp_path: Path, text_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # However long the trials take here, the trials after the recipe are its replicates.
    monkeypatch.setattr("tunesmith.search.run.replicates_fit", lambda *args: True)
    from safetensors.torch import load_file

    config = text_config("replicas", search={"budget": 600, "trials": 3, "folds": 1})
    assert api.prepare(load_config(config)).config.model.head.init == "zeros"  # one init for all
    summary = api.fit(config)
    trials = study_of(summary.run_dir, "replicas").get_trials()
    assert [t.user_attrs.get("replicate") for t in trials] == [None, 1, 2]
    assert [t.user_attrs.get("seed") for t in trials] == [None, 1, 2]
    values = {t.number: t.value for t in trials}
    assert len(set(values.values())) > 1 or len({t.user_attrs["best_epoch"] for t in trials}) > 1
    metrics = json.loads((summary.run_dir / "metrics.json").read_text())
    soup = metrics["search"]["soup"]
    best = metrics["search"]["best_trial"]
    assert soup["uniform"] is True and soup["ingredients"][0] == best
    assert set(soup["ingredients"]) <= {0, 1, 2} and len(soup["ingredients"]) >= 2
    assert soup["best_single_val"] == pytest.approx(values[best])
    mean = np.mean([values[n] for n in soup["ingredients"]])
    assert soup["ingredients_mean_val"] == pytest.approx(mean)
    error = soup["val_standard_error"]
    assert 0 < error < 0.2
    # The soup and the replicates' uniform ensemble, each admissible unless below its
    # ingredients' mean by more than a standard error: the better on validation is used, the
    # soup on a tie (one model's prediction cost).
    ensemble = metrics["search"]["ensemble"]
    soup_ok = soup["val"] >= mean - error
    ensemble_ok = "members" in ensemble and ensemble["val"] >= np.mean(
        [values[n] for n in ensemble["members"]]) - error
    assert soup["used"] == (soup_ok and not (ensemble_ok and ensemble["val"] > soup["val"]))
    assert ensemble["used"] == (ensemble_ok and not soup["used"])
    bundle = load_file(summary.run_dir / "best" / "model.safetensors")
    states = [load_file(summary.run_dir / "trials" / str(n) / "best.safetensors")
              for n in soup["ingredients"]]
    if soup["used"]:  # the bundle holds the average of the ingredients' best weights
        assert metrics["val"]["accuracy"]["value"] == pytest.approx(soup["val"])
        for key, tensor in bundle.items():
            if tensor.is_floating_point():
                expected = sum(s[key].float() for s in states) / len(states)
                assert np.allclose(tensor.float().numpy(), expected.numpy(), atol=1e-6), key
    else:  # the replicates' uniform ensemble, or the best trial alone
        ensemble = metrics["search"]["ensemble"]
        chosen = ensemble["val"] if ensemble["used"] else values[best]
        assert metrics["val"]["accuracy"]["value"] == pytest.approx(chosen)


def test_replicates_of_a_network_from_scratch_are_ensembled_not_souped(
    tmp_path: Path, wine_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each replicate draws its first weights from its own seed: averaging the weights of such
    networks averages unrelated units, so their outputs are averaged instead."""
    monkeypatch.setattr("tunesmith.search.run.replicates_fit", lambda *args: True)
    from safetensors.torch import load_file

    from tunesmith import searching

    asked = []
    original = searching._replicate_soup
    monkeypatch.setattr(searching, "_replicate_soup",
                        lambda *args: asked.append(args) or original(*args))
    summary = api.fit(wine_config(tmp_path, wine_csv, budget=600, trials=3, pruner="none"))
    assert not asked  # no uniform soup of the replicates is even tried
    trials = study_of(summary.run_dir).get_trials()
    assert [t.user_attrs.get("replicate") for t in trials] == [None, 1, 2]
    first, second = (load_file(summary.run_dir / "trials" / str(n) / "best.safetensors")
                     for n in (0, 1))
    assert any(not torch.equal(first[k], second[k]) for k in first)  # other weights
    search = summary.metrics["search"]
    assert not search.get("soup", {}).get("uniform")  # no uniform soup of unrelated units
    if not search.get("soup", {}).get("used"):  # a greedy soup better on validation is kept
        assert "ensemble" in search  # the replicates within noise are weighed as an ensemble


def test_a_soup_of_batch_norm_replicates_has_its_own_statistics(
    tmp_path: Path, image_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tunesmith.search.run.replicates_fit", lambda *args: True)
    from safetensors.torch import load_file

    config = image_config("bn-replicas", search={"budget": 600, "trials": 3, "folds": 1})
    summary = api.fit(config)
    metrics = json.loads((summary.run_dir / "metrics.json").read_text())
    soup = metrics["search"]["soup"]
    assert soup["uniform"] is True and len(soup["ingredients"]) >= 2
    bundle = load_file(summary.run_dir / "best" / "model.safetensors")
    states = [load_file(summary.run_dir / "trials" / str(n) / "best.safetensors")
              for n in soup["ingredients"]]
    norms = [key for key in bundle if key.endswith("running_mean")]
    assert norms  # test_resnet normalizes with batch norm
    averaged = {key: sum(s[key].float() for s in states) / len(states) for key in bundle
                if bundle[key].is_floating_point()}
    assert soup["used"]  # the stripes are easy: every replicate and the soup score 1.0
    for key, expected in averaged.items():  # averaged weights ...
        if "running_" not in key:
            assert np.allclose(bundle[key].float().numpy(), expected.numpy(), atol=1e-6), key
    moved = [float((bundle[key] - averaged[key]).abs().max()) for key in norms]
    assert max(moved) > 1e-3  # ... with statistics measured again, not averaged
    assert metrics["val"]["accuracy"]["value"] == pytest.approx(soup["val"])


def test_a_greedy_soup_takes_only_trials_of_the_best_trials_activations(
    tmp_path: Path, wine_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trials that differ only in their activation have weights of the same names and shapes,
    but weights trained under tanh do not average into a ReLU network: the soup is offered
    only trials of the best one's activation."""
    from tunesmith.search import soup

    offered: list[list[int]] = []
    original = soup.greedy_soup

    def watched(candidates: Any, *args: Any, **kwargs: Any) -> Any:
        offered.append([number for number, _, _ in candidates])
        return original(candidates, *args, **kwargs)

    monkeypatch.setattr(soup, "greedy_soup", watched)
    space = {"model.scratch.depth": [2], "model.scratch.width": [64],
             "model.scratch.activation": ["relu", "tanh", "sigmoid"]}
    summary = api.fit(wine_config(tmp_path, wine_csv, train={"epochs": 10}, trials=8,
                                  pruner="none", sampler="random", space=space))
    trials = {t.number: t for t in study_of(summary.run_dir).get_trials()}
    drawn = [t.params["model.scratch.activation"] for t in trials.values()]
    best = trials[offered[0][0]] if offered else None
    assert best is not None and drawn.count(best.params["model.scratch.activation"]) >= 2
    assert len(set(drawn)) >= 2  # trials of other activations were there to be offered
    assert {trials[n].params["model.scratch.activation"] for n in offered[0]} == {
        best.params["model.scratch.activation"]}
    from tunesmith.searching import SOUP_CANDIDATES

    assert len(offered[0]) == min(SOUP_CANDIDATES,
                                  drawn.count(best.params["model.scratch.activation"]))
