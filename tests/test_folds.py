"""Cross-validated trials for small data: the folds, the ensemble of fold models, and a real
search whose trials are scored out of fold and whose bundle is the chosen trial's ensemble."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_wine

from conftest import config_dict, write_yaml
from tunesmith import api
from tunesmith.config import load_config
from tunesmith.errors import TunesmithError
from tunesmith.models.ensemble import Ensemble
from tunesmith.search.folds import fold_count, make_folds, out_of_fold, pooled


def wine_config(folder: Path, csv: Path, **search: Any) -> Path:
    return write_yaml(folder / "wine.yaml", config_dict(
        folder, data_path=csv, backbone="scratch:mlp", name="wine",
        train_settings={"epochs": 6, "precision": "fp32"},
        search={"space": {"train.lr": {"low": 1e-3, "high": 3e-2}}, **search}))


def test_folds_partition_train_and_val_stratified_and_out_of_fold_restores_row_order(
    tmp_path: Path, wine_csv: Path
) -> None:
    data = api.prepare(load_config(wine_config(tmp_path, wine_csv, trials=2))).data
    assert fold_count(load_config(wine_config(tmp_path, wine_csv, trials=2)), data) == 5
    folds = make_folds(data, 5, seed=0)
    pool = pooled(data)
    assert len(pool) == len(data.train) + len(data.val)
    seen = np.concatenate([fold.val_rows for fold in folds])
    assert sorted(seen) == list(range(len(pool)))  # every row validated exactly once
    overall = pd.Series(pool.labels).value_counts(normalize=True)
    for fold in folds:
        assert not set(fold.data.train.ids) & set(fold.data.val.ids)
        assert len(fold.data.train) + len(fold.data.val) == len(pool)
        assert fold.data.test.ids == data.test.ids  # the test part stays out
        share = pd.Series(fold.data.val.labels).value_counts(normalize=True)
        assert (share - overall).abs().max() < 0.06  # stratified: about the pool's mix
    # each fold's val outputs (here: its rows' positions) come back in the pool's order
    outputs = [fold.val_rows.astype(float)[:, None] for fold in folds]
    targets = [np.asarray(data.targets(fold.data.val)) for fold in folds]
    stitched, truth = out_of_fold(folds, outputs, targets)
    assert stitched[:, 0].tolist() == list(range(len(pool)))
    assert truth.tolist() == data.targets(pool)


def test_folds_are_refused_where_a_split_must_not_be_shuffled(tmp_path: Path) -> None:
    frame = load_wine(as_frame=True).frame.rename(columns={"target": "label"})
    frame["day"] = range(len(frame))
    frame.to_csv(tmp_path / "timed.csv", index=False)
    raw = config_dict(tmp_path, data_path=tmp_path / "timed.csv", backbone="scratch:mlp",
                      name="timed", train_settings={"epochs": 2, "precision": "fp32"},
                      data={"split": {"time_column": "day"}}, search={"trials": 2, "folds": 3})
    with pytest.raises(TunesmithError, match="time split") as caught:
        api.fit(write_yaml(tmp_path / "timed.yaml", raw))
    assert caught.value.field == "search.folds"
    raw["search"]["folds"] = "auto"  # auto validates on the later rows, as the split says
    config = load_config(write_yaml(tmp_path / "timed.yaml", raw))
    assert fold_count(config, api.prepare(config).data) == 1


class Fixed(torch.nn.Module):
    def __init__(self, output: list[list[float]]) -> None:
        super().__init__()
        self.output = torch.tensor(output)
        self.backbone = None

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.output


def test_an_ensemble_averages_probabilities_or_predictions() -> None:
    first, second = [[2.0, 0.0, -1.0]], [[-1.0, 3.0, 0.0]]
    mean = (torch.softmax(torch.tensor(first), -1) + torch.softmax(torch.tensor(second), -1)) / 2
    ensemble = Ensemble([Fixed(first), Fixed(second)], "classification")  # type: ignore[list-item]
    assert torch.allclose(torch.softmax(ensemble({}), -1), mean, atol=1e-6)
    labels = Ensemble([Fixed(first), Fixed(second)], "multilabel")  # type: ignore[list-item]
    expected = (torch.sigmoid(torch.tensor(first)) + torch.sigmoid(torch.tensor(second))) / 2
    assert torch.allclose(torch.sigmoid(labels({})), expected, atol=1e-6)
    numbers = Ensemble([Fixed([[1.0]]), Fixed([[4.0]])], "regression")  # type: ignore[list-item]
    assert numbers({}).item() == pytest.approx(2.5)


def test_a_small_table_searches_with_five_folds_and_ships_their_ensemble(
    tmp_path: Path, wine_csv: Path, run_cli: Any
) -> None:
    config = wine_config(tmp_path, wine_csv, trials=3, pruner="none")
    # a worker trains the study's trials; the run then finds no room for more and rebuilds the
    # best trial's fold models from their files, out-of-fold outputs computed again
    assert run_cli(["search", config]).code == 0
    summary = api.fit(config)
    run_dir = summary.run_dir
    study = optuna.load_study(study_name="wine", storage=f"sqlite:///{run_dir / 'study.db'}")
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state.name == "COMPLETE" for t in trials)
    for trial in trials:  # five models a trial, each with its best weights
        for fold in range(5):
            assert (run_dir / "trials" / str(trial.number) / f"fold-{fold}"
                    / "best.safetensors").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    best = max(trials, key=lambda t: (t.value, -t.number))
    assert metrics["search"]["folds"] == 5 and metrics["search"]["best_trial"] == best.number
    assert "soup" not in metrics["search"]
    # the validation score is the out-of-fold one over every train and val row, as the trial
    # recorded it, with its interval
    val = metrics["val"]["accuracy"]
    assert val["value"] == pytest.approx(best.value)
    low, high = val["ci95"]
    assert low <= val["value"] <= high and high - low < 0.2
    # ... and the page, the card and the summary say so (they read as the val part's, 15 rows)
    heading = "val, out of fold (5 folds)"
    page = (run_dir / "report.html").read_text()
    assert f"<th>test</th><th>{heading}</th>" in page
    assert "its line is the first fold's" in page
    assert "| metric | test | validation, out of fold (5 folds) |" in (
        run_dir / "best" / "README.md").read_text()
    # the bundle is the ensemble of the five fold models and predicts what was scored
    manifest = json.loads((run_dir / "best" / "tunesmith.json").read_text())
    assert manifest["ensemble"] == {"members": 5, "kind": "classification"}
    # no temperature from single fold models' outputs for their (softer) average
    assert manifest["temperature"] is None and metrics["calibration"] is None
    predictor = api.load(run_dir)
    prepared = api.prepare(load_config(config))
    test = prepared.data.test
    predicted = predictor.predict(test.features)
    accuracy = float(np.mean([str(p) == str(t) for p, t in zip(predicted, test.labels,
                                                                strict=True)]))
    assert accuracy == pytest.approx(metrics["test"]["accuracy"]["value"])
    assert metrics["test"]["accuracy"]["value"] >= 0.85


def test_a_run_without_a_search_records_no_folds(tmp_path: Path, wine_csv: Path) -> None:
    """The resolved config.yaml of a run of the recipe alone said `folds: 5` (what a search
    would have used) for a run that validated on its val part."""
    alone = api.prepare(load_config(wine_config(tmp_path, wine_csv)))
    assert alone.config.search.folds == 1
    assert "folds: 1" in alone.config.to_yaml()
    searched = api.prepare(load_config(wine_config(tmp_path, wine_csv, trials=2)))
    assert searched.config.search.folds == 5
