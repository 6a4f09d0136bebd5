"""The search as a user meets it: counts narrowed to fractions, adapters searched for a user's own
module, a search whose every trial fails, the same trials drawn again by a resumed run or by
workers started together, and a budget the search's own set-up spends before the first trial."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

from conftest import config_dict, write_yaml
from tunesmith.config import config_from_dict
from tunesmith.errors import TunesmithError
from tunesmith.search.recipe import DataProfile
from tunesmith.search.space import SpaceContext, config_values, search_space
from tunesmith.search.study import open_study

TABLE = DataProfile(modality="tabular", train_rows=400, classes=3, in_features=13)
RECIPE = config_from_dict(
    {"name": "s", "data": {"train": "d.csv"}, "model": {"backbone": "scratch:mlp"},
     "train": {"lr": 1e-3, "epochs": 40, "batch_size": 32, "weight_decay": 1e-4,
               "warmup": 0.05, "label_smoothing": 0.0}},
    source="config.yaml", base_dir=Path("."),
)

# A user's own module that trains nothing: its forward pass fails in training mode (its features
# are computed in eval mode, so preparing the model works).
FAILING_MODULE = '''
import torch
from torch import nn


class Failing(nn.Module):
    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 8)
        self.num_features = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError("this module cannot train")
        return self.linear(x)


def build(in_features: int) -> nn.Module:
    return Failing(in_features)
'''


def narrowed(space: dict[str, Any]) -> Any:
    given = config_from_dict(
        {"name": "s", "data": {"train": "d.csv"}, "model": {"backbone": "scratch:mlp"},
         "search": {"trials": 3, "space": space}}, source="config.yaml", base_dir=Path("."))
    context = SpaceContext(profile=TABLE, recipe=RECIPE, blocks=3, scratch=True)
    return search_space(context, given)


def test_a_count_in_the_space_takes_whole_numbers_only() -> None:
    # 5.5 epochs passed `validate` and failed trial 0's config, naming train.epochs.
    with pytest.raises(TunesmithError) as refused:
        narrowed({"train.epochs": [5, 5.5]})
    assert refused.value.field == "search.space.train.epochs"
    assert "5.5 is not a value train.epochs allows (1..1000 whole numbers)" in str(refused.value)
    with pytest.raises(TunesmithError, match=r"takes whole numbers, not 1\.5\.\.4\.0"):
        narrowed({"train.epochs": {"low": 1.5, "high": 4}})
    # A whole number written as a float is that number.
    params = {p.key: p.distribution for p in narrowed({"model.scratch.width": [64.0, 128]}).params}
    assert params["model.scratch.width"].choices == (64, 128)
    assert all(type(choice) is int for choice in params["model.scratch.width"].choices)


def test_a_users_own_module_is_not_searched_over_adapters(tmp_path: Path, wine_csv: Path,
                                                          run_cli: Any) -> None:
    (tmp_path / "own_module.py").write_text(FAILING_MODULE)
    raw = config_dict(tmp_path, data_path=wine_csv, backbone="python:own_module:build",
                      train_settings={"epochs": 2}, name="own",
                      search={"trials": 3, "folds": 1,
                              "space": {"model.strategy": ["full", "lora"]}})
    result = run_cli(["validate", write_yaml(tmp_path / "own.yaml", raw)])
    # Adapters are refused for such a module: searching them stopped the search at the first
    # LoRA draw.
    assert result.code == 2
    assert "search.space.model.strategy" in result.err
    assert "'lora' is not a value model.strategy allows" in result.err


def test_a_search_whose_every_trial_fails_stops_and_says_why(tmp_path: Path,
                                                             wine_csv: Path) -> None:
    (tmp_path / "own_module.py").write_text(FAILING_MODULE)
    raw = config_dict(tmp_path, data_path=wine_csv, backbone="python:own_module:build",
                      train_settings={"epochs": 2, "precision": "fp32"}, name="failing",
                      model={"backbone": "python:own_module:build", "strategy": "full"},
                      search={"trials": 2, "folds": 1})
    config = write_yaml(tmp_path / "failing.yaml", raw)
    # Failed trials do not count against search.trials: the search drew for ever.
    done = subprocess.run([sys.executable, "-m", "tunesmith", "run", str(config)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "failing.yaml" in done.stderr
    assert "every trial of the search failed; the first: RuntimeError: this module cannot " \
        "train" in done.stderr.replace("\n", " ")
    assert "Traceback" not in done.stderr
    study = optuna.load_study(study_name="failing",
                              storage=f"sqlite:///{tmp_path / 'runs' / 'failing' / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL"] * 5


def test_a_resumed_study_does_not_draw_again_the_trials_it_drew(tmp_path: Path) -> None:
    given = config_from_dict(
        {"name": "drawn", "data": {"train": "d.csv"}, "model": {"backbone": "scratch:mlp"},
         "search": {"trials": 5}, "output_dir": str(tmp_path / "runs")},
        source="config.yaml", base_dir=tmp_path)
    run_dir = tmp_path / "runs" / "drawn"
    run_dir.mkdir(parents=True)

    def draw() -> float:
        # each call a new process's view: the study opened again, as `--resume` opens it
        study = open_study(given, run_dir, searched={"space": "x"}, direction="maximize",
                           max_epochs=10)
        trial = study.ask()
        value = trial.suggest_float("train.lr", 1e-4, 1e-1, log=True)
        study.tell(trial, 0.5)
        return value

    first, second, third = draw(), draw(), draw()
    assert len({first, second, third}) == 3
    # A fresh study draws as before: the seed alone decides a search of one process.
    (run_dir / "study.db").unlink()
    assert draw() == first


def test_workers_started_together_draw_trials_of_their_own(tmp_path: Path,
                                                           wine_csv: Path) -> None:
    journal = tmp_path / "shared.journal"
    raw = config_dict(tmp_path, data_path=wine_csv, backbone="scratch:mlp", name="together",
                      train_settings={"epochs": 2, "precision": "fp32"},
                      search={"trials": 5, "folds": 1, "pruner": "none",
                              "space": {"train.lr": {"low": 1e-3, "high": 3e-2}}})
    config = write_yaml(tmp_path / "together.yaml", raw)
    workers = [
        subprocess.Popen([sys.executable, "-m", "tunesmith", "search", str(config),
                          "--storage", f"journal:{journal}", "--study", "together"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    study = optuna.load_study(study_name="together",
                              storage=JournalStorage(JournalFileBackend(str(journal))))
    trained = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trained) == 5
    rates = [config_values(t.params)["train.lr"] for t in trained]
    # Seeded alike, both drew the same first random trials: trained twice each.
    assert len(set(rates)) == 5, rates


def test_a_budget_the_set_up_spends_is_too_small_for_one_trial(tmp_path: Path,
                                                               wine_csv: Path,
                                                               run_cli: Any) -> None:
    # 178 rows: five folds, each model given at least a second. One epoch of so few rows is
    # milliseconds, so the check let the budget through, and the set-up spent it before the
    # first trial: "no trial of the search finished", naming no file.
    raw = config_dict(tmp_path, data_path=wine_csv, backbone="scratch:mlp", name="short",
                      train_settings={"precision": "fp32"}, search={"budget": 1})
    result = run_cli(["run", write_yaml(tmp_path / "short.yaml", raw)])
    assert result.code == 2
    assert "short.yaml" in result.err and "search.budget" in result.err
    assert "too small for one trial" in result.err and "on each of its 5 folds" in result.err
    least = float(re.search(r"give at least (\d+) s", result.err).group(1))  # type: ignore[union-attr]
    assert least >= 5 / 0.9
    assert not (tmp_path / "runs" / "short" / "metrics.json").exists()
    # The least it names is enough: the set-up after the check (the run folder, the study) is
    # counted too, and with no more left than a trial's folds take at least, none starts.
    for folds in (5, 1):  # without folds the least is a second or two: no slack in rounding
        raw["search"].update(budget=0.1, folds=folds)
        result = run_cli(["run", write_yaml(tmp_path / "short.yaml", raw)])
        least = float(re.search(r"give at least (\d+) s", result.err).group(1))  # type: ignore[union-attr]
        raw["search"]["budget"] = least
        result = run_cli(["run", write_yaml(tmp_path / "short.yaml", raw)])
        assert result.code == 0, result.err[-2000:]
        metrics = json.loads((tmp_path / "runs" / "short" / "metrics.json").read_text())
        assert metrics["search"]["trials_completed"] >= 1
        assert metrics["search"]["folds"] == folds


def test_choices_written_1e_3_are_numbers(tmp_path: Path) -> None:
    """YAML 1.1 reads 1e-3 (no dot) as text: pydantic turns it into a number for train.lr, and
    the space's choices were refused as "'1e-3' is not a value train.lr allows"."""
    from tunesmith.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("name: s\ndata: {train: d.csv}\nmodel: {backbone: scratch:mlp}\n"
                    "search:\n  trials: 3\n  space:\n    train.lr: [1e-3, 1e-2]\n")
    given = load_config(path)
    context = SpaceContext(profile=TABLE, recipe=RECIPE, blocks=3, scratch=True)
    lr = next(p for p in search_space(context, given).params if p.key == "train.lr")
    assert lr.distribution.choices == (0.001, 0.01)  # type: ignore[attr-defined]
