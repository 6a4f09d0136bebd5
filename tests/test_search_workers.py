"""A search shared between runs and workers, as users meet it: the run that chooses the final model
waits for the trials other workers are training, a worker with other settings is refused, a
resumed run whose search had ended trains nothing more, a new run does not take over a study
an earlier run ended, pruned fold trials are this run's own, and a storage that cannot be a
journal is named."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from conftest import config_dict, write_yaml
from tunesmith import api
from tunesmith.config import load_config
from tunesmith.errors import TunesmithError
from tunesmith.search.run import WORKER_ATTR, Budget, run_trials, worker_id
from tunesmith.search.study import open_storage
from tunesmith.searching import _weights_here
from tunesmith.train.checkpoint import BEST

SMALL_SPACE = {"train.lr": {"low": 1e-3, "high": 3e-2}}


def wine(folder: Path, csv: Path, name: str = "wine", train: dict[str, Any] | None = None,
         **search: Any) -> Path:
    raw = config_dict(folder, data_path=csv, backbone="scratch:mlp", name=name,
                      train_settings={"epochs": 6, "precision": "fp32", **(train or {})},
                      search={"space": SMALL_SPACE, "folds": 1, **search})
    return write_yaml(folder / f"{name}.yaml", raw)


def test_the_final_model_waits_for_a_trial_another_worker_is_training(tmp_path: Path) -> None:
    """The limit counts another worker's running trial; the run that chooses used to choose at
    once, without it, and left it RUNNING in its snapshot."""
    storage = open_storage(f"journal:{tmp_path / 'j.log'}", source="test")
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    other = study.ask()  # a trial another live worker (this process) is training
    study._storage.set_trial_user_attr(other._trial_id, WORKER_ATTR, worker_id())

    def finish_later() -> None:
        threading.Event().wait(3.0)
        study.tell(other, 0.75)

    thread = threading.Thread(target=finish_later)
    thread.start()

    def never(*_: Any) -> Any:
        raise AssertionError("the limit is reached: no trial is trained here")

    trials = run_trials(study, Any, never, objective=Any, budget=Budget(None, 1),  # type: ignore[arg-type]
                        run_dir=tmp_path, wait_for_others=True)
    thread.join()
    assert [(t.number, t.state, t.value) for t in trials] == [(0, TrialState.COMPLETE, 0.75)]
    # a worker (no waiting) leaves at once, with the trial still running
    study.ask().set_user_attr(WORKER_ATTR, worker_id())
    left = run_trials(study, Any, never, objective=Any, budget=Budget(None, 2),  # type: ignore[arg-type]
                      run_dir=tmp_path)
    assert [t.number for t in left] == [0]


def test_a_worker_with_other_settings_is_refused_naming_them(tmp_path: Path,
                                                             wine_csv: Path) -> None:
    journal = f"journal:{tmp_path / 'shared.log'}"
    api.fit(wine(tmp_path, wine_csv, trials=2, storage=journal))
    # the same space, but a momentum and schedule the space does not search
    other = wine(tmp_path, wine_csv, name="other", trials=3, storage=journal, study="wine",
                 train={"momentum": 0.5, "schedule": "constant"})
    with pytest.raises(TunesmithError, match="another config") as caught:
        api.search_worker(other)
    problem = caught.value.problem
    assert "train.momentum: 0.9 in the study, 0.5 here" in problem
    assert "train.schedule: 'auto' in the study, 'constant' here" in problem
    # a searched parameter fixed here: named as the parameter that differs
    fixed = wine(tmp_path, wine_csv, name="fixed", trials=3, storage=journal, study="wine",
                 train={"warmup": 0.1})
    with pytest.raises(TunesmithError, match="another config") as caught:
        api.search_worker(fixed)
    problem = caught.value.problem
    assert "fixed train.warmup: (unset) in the study, 0.1 here" in problem
    assert "space train.warmup: FloatDistribution(high=0.2, log=False, low=0.0, step=None) in " \
        "the study, (unset) here" in problem
    assert "space train.lr" not in problem  # searched alike in both
    assert caught.value.field == "search.study"
    # a worker that differs only in what suits its machine joins
    same = wine(tmp_path, wine_csv, name="same", trials=3, storage=journal, study="wine",
                train={"precision": "auto", "workers": 0})
    assert api.search_worker(same).study["trials_completed"] == 3


def test_a_run_killed_after_its_search_ended_resumes_without_new_trials(
    tmp_path: Path, wine_csv: Path
) -> None:
    """The resumed budget counts only the trials' own time, so it found room for more: a run
    killed while writing its outputs trained a new trial when resumed."""
    config = wine(tmp_path, wine_csv, budget=25, pruner="none")
    summary = api.fit(config)
    trained = summary.metrics["search"]["trials_completed"]
    for written in ("metrics.json", "report.html"):  # killed before these were written
        (summary.run_dir / written).unlink()
    resumed = api.fit(config, resume=True)
    assert resumed.metrics["search"]["trials_completed"] == trained
    assert resumed.metrics["search"]["best_trial"] == summary.metrics["search"]["best_trial"]
    assert resumed.metrics["test"] == summary.metrics["test"]


def test_a_new_run_does_not_take_over_a_shared_study_an_earlier_run_ended(
    tmp_path: Path, wine_csv: Path
) -> None:
    config = wine(tmp_path, wine_csv, trials=2, storage=f"journal:{tmp_path / 'j.log'}")
    first = api.fit(config)
    before = (first.run_dir / "metrics.json").read_text()
    with pytest.raises(TunesmithError, match="has ended its search already") as caught:
        api.fit(config)
    assert str(first.run_dir) in caught.value.problem
    assert "--resume" in (caught.value.fix or "") and caught.value.field == "search.study"
    # refused before the run folder: the earlier run is where it was, as it was
    assert (first.run_dir / "metrics.json").read_text() == before
    assert sorted(p.name for p in first.run_dir.parent.iterdir()) == ["wine"]


def test_a_refused_budget_leaves_the_last_run_where_it_is(tmp_path: Path,
                                                          wine_csv: Path) -> None:
    config = wine(tmp_path, wine_csv, trials=2)
    first = api.fit(config)
    before = (first.run_dir / "metrics.json").read_text()
    with pytest.raises(TunesmithError, match="too small for one trial"):
        api.fit(config, ["search.trials=null", "search.budget=0.1"])
    assert (first.run_dir / "metrics.json").read_text() == before
    assert sorted(p.name for p in first.run_dir.parent.iterdir()) == ["wine"]


def test_pruned_fold_trials_are_this_folders_own(tmp_path: Path) -> None:
    """A pruned trial stops after its first fold; it was listed as trained elsewhere."""
    config = load_config(write_yaml(tmp_path / "c.yaml", config_dict(
        tmp_path, data_path=tmp_path / "d.csv", backbone="scratch:mlp", name="c",
        train_settings={})))
    trials = [optuna.trial.create_trial(state=TrialState.PRUNED, value=None),
              optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.5),
              optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.6)]
    for number, trial in enumerate(trials):
        trial.number = number
    folds = [object()] * 3
    for number, trained in ((0, 1), (1, 3), (2, 1)):  # trial 2: complete, two folds missing
        for k in range(trained):
            weights = tmp_path / "trials" / str(number) / f"fold-{k}" / BEST
            weights.parent.mkdir(parents=True)
            weights.write_bytes(b"w")
    here, elsewhere = _weights_here(config, tmp_path, trials, folds)
    assert [t.number for t in here] == [0, 1] and elsewhere == [2]


@pytest.mark.parametrize("kind", ["folder", "not a journal"])
def test_a_journal_that_is_a_folder_or_another_file_is_named(tmp_path: Path, wine_csv: Path,
                                                             kind: str) -> None:
    path = tmp_path / "j"
    if kind == "folder":
        path.mkdir()
    else:
        path.write_text(wine_csv.read_text())
    with pytest.raises(TunesmithError) as caught:
        api.fit(wine(tmp_path, wine_csv, trials=2, storage=f"journal:{path}"))
    assert caught.value.field == "search.storage" and caught.value.fix
    assert ("is a folder" if kind == "folder" else "cannot read") in caught.value.problem
    assert str(path) in caught.value.problem
    assert not (tmp_path / "runs" / "wine").exists()  # refused before the run folder


def test_a_run_started_after_a_worker_chooses_among_the_workers_trials(
    tmp_path: Path, wine_csv: Path
) -> None:
    """A worker (`tunesmith search`) started before `tunesmith run` writes its trials into the
    shared run folder; the run moved that folder aside as an earlier run's, then stopped: "no
    trial of the study trained its weights into runs/NAME/trials". It keeps them."""
    from tunesmith.searching import search_worker

    config = wine(tmp_path, wine_csv, trials=3, storage=f"journal:{tmp_path / 'j.log'}")
    worker = search_worker(config, ["search.trials=2"])
    assert sorted(p.name for p in (worker.run_dir / "trials").iterdir()) == ["0", "1"]
    summary = api.fit(config)
    assert summary.run_dir == worker.run_dir
    assert sorted(p.name for p in summary.run_dir.parent.iterdir()) == ["wine"]  # none moved
    study = summary.metrics["search"]
    assert study["trials_completed"] + study["trials_pruned"] == 3
    assert sorted(p.name for p in (summary.run_dir / "trials").iterdir()) == ["0", "1", "2"]
    # an earlier run's folder (its config.yaml beside the trials) is still moved aside
    other = wine(tmp_path, wine_csv, trials=2, storage=f"journal:{tmp_path / 'k.log'}",
                 name="other")
    (tmp_path / "runs" / "other" / "trials").mkdir(parents=True)
    (tmp_path / "runs" / "other" / "config.yaml").write_text("name: other\n")
    api.fit(other)
    assert len([p for p in (tmp_path / "runs").iterdir() if p.name.startswith("other-")]) == 1
