"""The train stage: precision, schedule, parameter groups, and one real trial on the tiny BERT."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import CliResult, config_dict, logged, write_yaml
from tunesmith import api
from tunesmith.config import load_config
from tunesmith.evaluate import collect_logits, task_metrics
from tunesmith.models import TaskModel, make_head
from tunesmith.search import train_settings
from tunesmith.train import TrialResult, resolve_precision, train_trial
from tunesmith.train.loop import Diverged
from tunesmith.train.optim import (
    Plan,
    make_optimizer,
    parameter_groups,
    schedule_factor,
    warmup_cosine,
)
from tunesmith.train.precision import cpu_bf16_is_fast

Cli = Callable[[list[str | Path]], CliResult]

# ----------------------------------------------------------------------------------------------
# precision


def test_explicit_precision_is_kept() -> None:
    for device in (torch.device("cpu"), torch.device("cuda")):
        assert resolve_precision("fp32", device) == "fp32"
        assert resolve_precision("bf16", device) == "bf16"
    assert resolve_precision("fp16", torch.device("cuda")) == "fp16"
    # A CPU has neither fp16 matrix units nor a gradient scaler: fp16 there means fp32.
    assert resolve_precision("fp16", torch.device("cpu")) == "fp32"


def test_auto_precision_on_cpu_follows_the_bf16_probe() -> None:
    expected = "bf16" if cpu_bf16_is_fast() else "fp32"
    assert resolve_precision("auto", torch.device("cpu")) == expected


@pytest.mark.parametrize(("supported", "expected"), [(True, "bf16"), (False, "fp16")])
def test_auto_precision_on_gpu_follows_capability(
    monkeypatch: pytest.MonkeyPatch, supported: bool, expected: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    assert resolve_precision("auto", torch.device("cuda")) == expected


# ----------------------------------------------------------------------------------------------
# schedule and optimizer


def lr_at_steps(total: int, warmup: int, steps: list[int]) -> list[float]:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=2.0)
    plan = Plan(total, warmup / total)
    assert plan.warmup_steps == warmup
    scheduler = warmup_cosine(optimizer, plan)
    seen: dict[int, float] = {}
    for step in range(total + 1):
        seen[step] = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
    return [seen[step] for step in steps]


def test_warmup_cosine_values() -> None:
    start, last_warm, peak, quarter, middle, end = lr_at_steps(110, 10, [0, 9, 10, 35, 60, 110])
    assert start == pytest.approx(2.0 * 1 / 11)  # linear ramp from near 0 ...
    assert last_warm == pytest.approx(2.0 * 10 / 11)
    assert peak == pytest.approx(2.0)  # ... to the base lr at the end of warm-up
    assert quarter == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert middle == pytest.approx(1.0)  # half-way through the decay: half the base lr
    assert end == pytest.approx(0.0, abs=1e-12)


def test_warmup_cosine_without_warmup_starts_at_the_peak_and_decreases() -> None:
    values = lr_at_steps(20, 0, list(range(21)))
    assert values[0] == pytest.approx(2.0)
    assert all(a > b for a, b in itertools.pairwise(values))


@pytest.fixture(scope="module")
def tiny_classifier(tiny_bert: Path) -> TaskModel:
    from tunesmith.models import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone(f"hf:{tiny_bert}", modality="text", resolve=Path)
    head = make_head(32, 2, layers=1, hidden=16, activation="gelu", init="xavier_uniform",
                     dropout=0.1)
    return TaskModel(backbone, head)


def placement(model: TaskModel, groups: list[dict[str, object]]) -> dict[str, tuple[float, float]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}  # type: ignore[attr-defined]


def test_parameter_groups_split_decay_and_head_lr(tiny_classifier: TaskModel) -> None:
    groups = parameter_groups(tiny_classifier, lr=1e-4, head_lr=1e-2, weight_decay=0.05)
    placed = placement(tiny_classifier, groups)
    assert sum(len(g["params"]) for g in groups) == len(placed)  # type: ignore[arg-type]
    assert len(placed) == len(list(tiny_classifier.parameters()))
    for name, (lr, decay) in placed.items():
        assert lr == (1e-2 if name.startswith("head.") else 1e-4), name
        is_plain = name.endswith(".bias") or "LayerNorm" in name
        assert decay == (0.0 if is_plain else 0.05), name
    assert placed["head.0.weight"] == (1e-2, 0.05)
    assert placed["head.3.bias"] == (1e-2, 0.0)
    assert placed["backbone.network.embeddings.LayerNorm.weight"] == (1e-4, 0.0)
    assert placed["backbone.network.encoder.layer.0.attention.self.query.weight"] == (1e-4, 0.05)


def test_layer_decay_lowers_the_rate_block_by_block_towards_the_input(
    tiny_classifier: TaskModel,
) -> None:
    groups = parameter_groups(
        tiny_classifier, lr=1e-4, head_lr=1e-2, weight_decay=0.0, layer_decay=0.5
    )
    placed = placement(tiny_classifier, groups)
    # Blocks of the 2-layer BERT: embeddings, layer 0, layer 1; then the head.
    assert [b.name for b in tiny_classifier.depth_groups()] == [
        "embeddings", "encoder.layer.0", "encoder.layer.1", "head"]
    prefix = "backbone.network."
    expected = {"embeddings.": 0.25e-4, "encoder.layer.0.": 0.5e-4, "encoder.layer.1.": 1e-4}
    for name, (lr, _) in placed.items():
        if name.startswith("head."):
            assert lr == 1e-2
            continue
        (rate,) = [v for k, v in expected.items() if name.startswith(prefix + k)]
        assert lr == pytest.approx(rate), name


def test_optimizers_take_the_groups(tiny_classifier: TaskModel) -> None:
    groups = parameter_groups(tiny_classifier, lr=1e-4, head_lr=1e-2, weight_decay=0.05)
    optimizer = make_optimizer("adamw", groups)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [(g["lr"], g["weight_decay"], g["block"]) for g in optimizer.param_groups] == [
        (g["lr"], g["weight_decay"], g["block"]) for g in groups]
    assert {g["block"] for g in optimizer.param_groups} == {
        "embeddings", "encoder.layer.0", "encoder.layer.1", "head"}
    sgd = make_optimizer("sgd", parameter_groups(tiny_classifier, lr=0.1, head_lr=0.1,
                                                weight_decay=0.0), momentum=0.8)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.8 and sgd.defaults["nesterov"]
    assert isinstance(make_optimizer("adam", groups), torch.optim.Adam)


# ----------------------------------------------------------------------------------------------
# one trial


def prepared_trial(config_path: Path, epochs: int):  # type: ignore[no-untyped-def]
    prepared = api.prepare(load_config(config_path, [f"train.epochs={epochs}"]))
    model = api.task_model(prepared)
    settings = train_settings(prepared.config, kind=prepared.kind)
    batches = api.batches_for(prepared, settings.batch_size, settings.seed)
    return model, batches.train, batches.val, settings


@pytest.fixture(scope="module")
def trained(tiny_bert: Path, text_csv: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from conftest import TEXT_EXTRA, TEXT_TRAIN, config_dict, write_yaml

    folder = tmp_path_factory.mktemp("trial")
    config = write_yaml(folder / "config.yaml", config_dict(
        folder, data_path=text_csv, backbone=f"hf:{tiny_bert}", train_settings=TEXT_TRAIN,
        **TEXT_EXTRA))
    model, loader, val, settings = prepared_trial(config, epochs=10)
    trial_dir = folder / "trials" / "0"
    result = train_trial(model, loader, val, settings, trial_dir)
    return model, val, settings, trial_dir, result


def test_training_loss_falls(trained) -> None:  # type: ignore[no-untyped-def]
    *_, result = trained
    losses = [epoch["train_loss"] for epoch in result.history]
    assert losses[0] > 0.6  # two balanced classes start near ln 2 = 0.69
    assert losses[-1] < 0.5 * losses[0]
    assert result.history[-1]["val_accuracy"] > 0.8


def test_metrics_jsonl_has_one_line_per_epoch(trained) -> None:  # type: ignore[no-untyped-def]
    _, _, settings, trial_dir, result = trained
    lines = logged(trial_dir)
    assert len(lines) == settings.epochs == 10
    assert lines == result.history
    steps_per_epoch = math.ceil(192 / settings.batch_size)
    assert [line["epoch"] for line in lines] == list(range(1, 11))
    assert [line["step"] for line in lines] == [steps_per_epoch * e for e in range(1, 11)]
    for line in lines:
        assert set(line) >= {"train_loss", "lr", "val_loss", "val_accuracy", "val_macro_f1"}
        assert 0.0 <= line["val_accuracy"] <= 1.0
    total = steps_per_epoch * 10
    # each step logs the rate it trained at (the schedule's value before it moved on): the last
    # one's is small but not zero, and the top block's, train.lr (layer decay lowers the rest)
    steps = logged(trial_dir, "step")
    assert [line["step"] for line in steps] == list(range(1, total + 1))
    plan = Plan(total, settings.warmup)
    expected = [settings.lr * schedule_factor("cosine", step - 1, plan) for step in range(1, 11)]
    assert [line["lr"] for line in steps[:10]] == pytest.approx(expected, rel=1e-9)
    assert 0.0 < steps[-1]["lr"] == pytest.approx(
        settings.lr * schedule_factor("cosine", total - 1, plan), rel=1e-9)
    assert lines[-1]["lr"] == steps[-1]["lr"]  # an epoch's: its last step's


def test_the_model_returned_holds_the_best_val_epoch(trained) -> None:  # type: ignore[no-untyped-def]
    model, val, _, trial_dir, result = trained
    accuracies = [epoch["val_accuracy"] for epoch in result.history]
    # the epoch of the highest accuracy; of several, the one of the lowest loss
    best = min((e for e, a in enumerate(accuracies) if a == max(accuracies)),
               key=lambda e: result.history[e]["val_loss"])
    assert result.best_epoch == best + 1
    assert result.best_val["accuracy"] == max(accuracies)
    assert result.best_val["loss"] == pytest.approx(result.history[best]["val_loss"])

    saved = load_file(str(trial_dir / "best.safetensors"))
    state = model.state_dict()
    assert set(saved) <= set(state)
    for key, tensor in saved.items():
        assert torch.equal(state[key], tensor), key

    # Scored afresh, the returned model reproduces the best epoch's validation numbers.
    logits, targets = collect_logits(model, val)
    assert task_metrics("classification", logits, targets)["accuracy"] == max(accuracies)
    loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits),
                                                   torch.from_numpy(targets)))
    assert loss == pytest.approx(result.history[best]["val_loss"], abs=1e-5)
    # With these seeds validation accuracy reaches 1.0 at epoch 7 and stays there while the loss
    # goes on falling (0.0054 to 0.0024): the tie goes to the last epoch, not the first.
    tied = [e + 1 for e, a in enumerate(accuracies) if a == max(accuracies)]
    assert tied == [7, 8, 9, 10] and result.best_epoch == 10


def test_a_tie_goes_to_the_lower_loss_and_the_model_returned_holds_that_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tunesmith.models.inputs import EvalBatches
    from tunesmith.train import loop
    from tunesmith.train.loop import TrainSettings

    # (accuracy, loss) of each evaluation: epoch 3 ties epoch 2 at a lower loss and is the best;
    # epoch 4's loss is lower by less than the tie margin (noise), epoch 5 is worse.
    scripted = [(0.5, 0.70), (0.8, 0.50), (0.8, 0.40), (0.8, 0.3999), (0.7, 0.60)]
    states: list[dict[str, torch.Tensor]] = []

    def evaluate(run: Any, batches: Any) -> dict[str, float]:
        states.append({k: v.clone() for k, v in loop._plain(run).state_dict().items()})
        accuracy, loss = scripted[len(states) - 1]
        return {"loss": loss, "accuracy": accuracy, "macro_f1": accuracy}

    monkeypatch.setattr(loop, "_evaluate", evaluate)
    settings = TrainSettings(lr=0.05, head_lr=0.05, weight_decay=0.0, epochs=5, batch_size=16,
                             warmup=0.0, grad_clip=None, precision="fp32", seed=0, patience=2)
    model = mlp_model()
    val = EvalBatches(feature_loader(32, 32), list(range(32)))
    result = train_trial(model, feature_loader(64, 16), val, settings, tmp_path / "t")
    assert result.best_epoch == 3 and result.best_val["loss"] == 0.40
    assert result.stopped == "early stopping"  # epochs 4 and 5 did not improve: patience 2
    assert len(states) == 5
    saved = load_file(str(tmp_path / "t" / "best.safetensors"))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, states[2][name]), name
        assert torch.equal(saved[name], states[2][name]), name
    assert any(not torch.equal(states[2][k], states[4][k]) for k in states[2])  # it trained on


class Recorder:
    def __init__(self, prune_after: int) -> None:
        self.reports: list[tuple[float, int]] = []
        self.prune_after = prune_after

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return len(self.reports) >= self.prune_after


def test_a_run_that_diverges_stops_and_keeps_its_last_finite_best(
    text_config: Callable[..., Path], tmp_path: Path
) -> None:
    """Weights that blew up gave NaN outputs, whose argmax scored as well as chance: such an
    epoch was marked best and its weights kept, and the run went on to crash in calibration."""
    model, loader, val, settings = prepared_trial(text_config(), epochs=4)
    recorder = Recorder(prune_after=99)

    def blow_up(epoch: int, epochs: int) -> None:
        if epoch == 2:  # after two good epochs, as a rate far too high does
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(math.nan)

    result = train_trial(model, loader, val, settings, tmp_path / "t", reporter=recorder,
                         before_epoch=blow_up)
    assert result.stopped == "diverged"
    assert [math.isfinite(e["val_loss"]) for e in result.history] == [True, True, False]
    assert len(recorder.reports) == 2  # the diverged evaluation is not reported as a score
    assert result.best_epoch in (1, 2) and math.isfinite(result.best_val["loss"])
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the best weights, back
    # Diverged from the first epoch: nothing to keep, the error a search fails the trial with.
    model, loader, val, settings = prepared_trial(text_config(), epochs=3)
    with pytest.raises(Diverged, match="not finite from epoch 1 on") as raised:
        train_trial(model, loader, val, settings, tmp_path / "u",
                    before_epoch=lambda epoch, epochs: blow_up(epoch + 2, epochs))
    assert raised.value.field == "train.lr"


def test_a_reporter_sees_each_epoch_and_can_stop_the_trial(
    text_config: Callable[..., Path], tmp_path: Path
) -> None:
    model, loader, val, settings = prepared_trial(text_config(), epochs=5)
    recorder = Recorder(prune_after=2)
    result = train_trial(model, loader, val, settings, tmp_path / "t", reporter=recorder)
    steps_per_epoch = math.ceil(192 / settings.batch_size)  # reports count optimizer steps
    assert [step for _, step in recorder.reports] == [steps_per_epoch, 2 * steps_per_epoch]
    assert [value for value, _ in recorder.reports] == [e["val_accuracy"] for e in result.history]
    assert len(logged(tmp_path / "t")) == 2


def test_trials_of_different_precision_in_one_process(
    text_config: Callable[..., Path], tmp_path: Path
) -> None:
    """A search (or a notebook calling tunesmith.fit twice) runs many trials in one process."""
    results: list[TrialResult] = []
    for precision in ("fp32", "bf16"):
        model, loader, val, settings = prepared_trial(text_config(), epochs=1)
        settings = replace(settings, precision=precision)
        results.append(train_trial(model, loader, val, settings, tmp_path / precision))
    assert [r.precision for r in results] == ["fp32", "bf16"]
    assert all(len(r.history) == 1 for r in results)


def test_train_settings_come_from_the_resolved_config(text_config: Callable[..., Path]) -> None:
    resolved = api.prepare(load_config(text_config(), ["seed=11", "train.warmup=0.2"])).config
    settings = train_settings(resolved, kind="classification")
    assert (settings.lr, settings.head_lr, settings.epochs, settings.batch_size, settings.warmup,
            settings.precision, settings.seed) == (2e-3, 5e-3, 12, 16, 0.2, "fp32", 11)
    assert settings.weight_decay == resolved.train.weight_decay
    assert settings.loss.label_smoothing == resolved.train.label_smoothing
    assert settings.loss.name == "cross_entropy" and settings.layer_decay == 1.0
    with pytest.raises(ValueError, match="resolved config"):
        train_settings(load_config(text_config()), kind="classification")


def test_weight_average_is_the_running_mean_then_an_exponential_average() -> None:
    from torch import nn

    from tunesmith.train.ema import WeightAverage

    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = WeightAverage(model, decay=0.8)
    seen = [0.0]
    for value in (1.0, 3.0, 5.0):  # while fewer than 1 / (1 - 0.8) = 5 updates: the plain mean
        with torch.no_grad():
            model.weight.fill_(value)
        average.update()
        seen.append(value)
        assert average.shadow[0].item() == pytest.approx(sum(seen) / len(seen))
    for _ in range(10):  # then capped at the decay
        before = average.shadow[0].item()
        with torch.no_grad():
            model.weight.fill_(10.0)
        average.update()
        assert average.shadow[0].item() == pytest.approx(0.8 * before + 0.2 * 10.0)

    expected = average.shadow[0].item()
    with average.applied():
        assert model.weight.item() == pytest.approx(expected)
    assert model.weight.item() == 10.0
    assert average.shadow[0].item() == pytest.approx(expected)


# ----------------------------------------------------------------------------------------------
# time budget


def test_a_plan_is_fitted_to_the_time_left() -> None:
    import time

    from tunesmith.train.budget import Clock, fit_plan

    plan = Plan(total_steps=1000, warmup_fraction=0.1)
    # 0.1 s a step, 2 s an epoch beyond its steps (100 steps an epoch), 30 s left: a step costs
    # 0.1 s, so k more steps and their evaluations fit while 0.1 k + 2 ceil(k / 100) <= 30.
    clock = Clock(time.perf_counter() + 30.0, step_s=3.1, timed_steps=31, epoch_extra_s=2.0)
    fit_plan(plan, clock, 32, batch_size=16, steps_per_epoch=100, val_rows=100)
    # Ending at step T in (200, 300] costs 0.1 (T - 32) + 2 * 3 evaluations: at most 30 s for
    # T <= 272 (a moment less than 30 s is left when it is computed).
    assert 268 <= plan.total_steps <= 272
    assert plan.requested_steps == 1000
    assert plan.warmup_steps == round(0.1 * plan.total_steps)
    roomy = Plan(total_steps=100, warmup_fraction=0.0)
    fit_plan(roomy, clock, 32, batch_size=16, steps_per_epoch=100, val_rows=100)
    assert roomy.total_steps == 100  # a plan is never stretched past what the epochs asked
    late = Clock(time.perf_counter() - 1.0, step_s=3.1, timed_steps=31)
    fit_plan(plan, late, 40, batch_size=16, steps_per_epoch=100, val_rows=100)
    assert plan.total_steps == 40  # past the deadline: this step is the last


def test_a_time_budget_shortens_the_schedule_and_ends_it_at_zero(
    text_config: Callable[..., Path], tmp_path: Path
) -> None:
    model, loader, val, settings = prepared_trial(text_config(), epochs=400)
    requested = 400 * len(loader)
    settings = replace(settings, time_budget=4.0)
    result = train_trial(model, loader, val, settings, tmp_path / "t")
    assert result.stopped == "time budget"
    assert 8 < result.steps < requested
    lines = logged(tmp_path / "t")
    assert lines[-1]["step"] == result.steps
    # The cosine decayed inside the budget: to zero at the fitted last step, or (when the machine
    # slowed down after the last re-fit and the deadline came first) nearly so.
    assert lines[-1]["lr"] <= 0.05 * settings.lr
    assert len(lines) == math.ceil(result.steps / len(loader))  # an evaluation per epoch


# ----------------------------------------------------------------------------------------------
# schedules, accumulation, early stopping


def factors(kind: str, total: int, warmup: float) -> list[float]:
    from tunesmith.train.optim import schedule_factor

    plan = Plan(total, warmup)
    return [schedule_factor(kind, step, plan) for step in range(total + 1)]


def test_every_schedule_has_its_shape() -> None:
    linear = factors("linear", 110, 10 / 110)
    assert linear[9] == pytest.approx(10 / 11) and linear[10] == pytest.approx(1.0)
    assert linear[60] == pytest.approx(0.5) and linear[110] == pytest.approx(0.0)
    constant = factors("constant", 110, 10 / 110)
    assert constant[0] == pytest.approx(1 / 11) and set(constant[10:]) == {1.0}
    step = factors("step", 100, 0.0)
    assert (step[0], step[49], step[50], step[74], step[75], step[100]) == pytest.approx(
        (1.0, 1.0, 0.1, 0.1, 0.01, 0.01))
    cycle = factors("one-cycle", 100, 0.3)
    assert cycle[0] == pytest.approx(1 / 25)  # torch's OneCycleLR: max_lr / div_factor
    assert cycle[30] == pytest.approx(1.0) and max(cycle) == pytest.approx(1.0)
    assert cycle[100] == pytest.approx(1 / 25 / 1e4)
    assert all(a <= b for a, b in itertools.pairwise(cycle[:31]))
    assert all(a >= b for a, b in itertools.pairwise(cycle[30:]))


def test_one_cycle_matches_torch_one_cycle_lr() -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.5)
    reference = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=0.5, total_steps=101, pct_start=31 / 101, anneal_strategy="cos",
        cycle_momentum=False, three_phase=False)
    seen = []
    for _ in range(101):
        seen.append(reference.get_last_lr()[0])
        optimizer.step()
        reference.step()
    # torch peaks at step pct_start * total_steps - 1 (30 here) and ends at step 100; ours peaks
    # after the warm-up fraction of the plan's 100 steps.
    ours = [0.5 * f for f in factors("one-cycle", 100, 0.3)]
    np.testing.assert_allclose(ours, seen, rtol=1e-6, atol=1e-12)


def feature_loader(rows: int, batch_size: int) -> torch.utils.data.DataLoader:  # type: ignore[type-arg]
    from tunesmith.data.features import FeatureRows, feature_collate

    generator = np.random.default_rng(0)
    features = generator.normal(size=(rows, 6)).astype(np.float32)
    targets = (features[:, 0] + features[:, 1] > 0).astype(np.int64)
    return torch.utils.data.DataLoader(FeatureRows(features, list(targets)),
                                       batch_size=batch_size, collate_fn=feature_collate)


def mlp_model() -> TaskModel:
    from tunesmith.models.scratch import ScratchNetwork, ScratchShape

    torch.manual_seed(0)
    shape = ScratchShape(depth=2, width=16, channels=8, kernel_size=3, groups=1,
                         activation="tanh", norm="none", dropout=0.0, init="default")
    backbone = ScratchNetwork("mlp", shape, in_features=6)
    return TaskModel(backbone, make_head(16, 2, layers=0, hidden=16, activation="gelu",
                                         init="xavier_uniform", dropout=0.0))


def test_accumulated_batches_step_as_one_larger_batch(tmp_path: Path) -> None:
    from tunesmith.models.inputs import EvalBatches
    from tunesmith.train.loop import TrainSettings

    val_loader = feature_loader(32, 32)
    val = EvalBatches(val_loader, list(range(32)))
    base = TrainSettings(lr=0.05, head_lr=0.05, weight_decay=0.0, epochs=3, batch_size=16,
                         warmup=0.0, grad_clip=None, precision="fp32", seed=0, optimizer="sgd",
                         momentum=0.0)
    whole, halves = mlp_model(), mlp_model()
    one = train_trial(whole, feature_loader(64, 16), val, base, tmp_path / "whole")
    two = train_trial(halves, feature_loader(64, 8), val, replace(base, accumulate=2),
                      tmp_path / "halves")
    assert one.steps == two.steps == 3 * 4  # 64 rows in steps of 16
    before = mlp_model().state_dict()
    for name, tensor in whole.state_dict().items():
        assert not torch.equal(tensor, before[name]), name  # training moved every weight
        torch.testing.assert_close(halves.state_dict()[name], tensor, rtol=1e-5, atol=1e-6)


def test_patience_stops_a_run_that_stopped_improving(tmp_path: Path) -> None:
    from tunesmith.models.inputs import EvalBatches
    from tunesmith.train.loop import TrainSettings

    val = EvalBatches(feature_loader(32, 32), list(range(32)))
    frozen = TrainSettings(lr=1e-12, head_lr=1e-12, weight_decay=0.0, epochs=20, batch_size=16,
                           warmup=0.0, grad_clip=None, precision="fp32", seed=0, patience=3)
    result = train_trial(mlp_model(), feature_loader(64, 16), val, frozen, tmp_path / "t")
    # A learning rate of 1e-12 never changes the score: the first evaluation stays the best.
    assert result.stopped == "early stopping"
    assert [epoch["epoch"] for epoch in result.history] == [1, 2, 3, 4]
    assert result.best_epoch == 1


def test_tensorboard_gets_every_step_and_evaluation(
    text_config: Callable[..., Path], tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, loader, val, settings = prepared_trial(text_config(), epochs=3)
    trial = tmp_path / "t"
    result = train_trial(model, loader, val, replace(settings, log_to="tensorboard"), trial)
    events = EventAccumulator(str(trial / "tensorboard"))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [event.step for event in losses] == list(range(1, result.steps + 1))
    steps = logged(trial, "step")
    assert [e.value for e in losses] == pytest.approx([line["loss"] for line in steps], rel=1e-6)
    accuracy = events.Scalars("train/val_accuracy")
    epochs = logged(trial)
    assert [e.step for e in accuracy] == [line["step"] for line in epochs]
    assert [e.value for e in accuracy] == pytest.approx([line["val_accuracy"] for line in epochs])


# ----------------------------------------------------------------------------------------------
# the learning-rate range test


def test_valley_is_two_thirds_down_the_longest_fall() -> None:
    from tunesmith.train.lr_find import _valley

    lrs = [10.0 ** (-7 + k / 10) for k in range(60)]
    # Noise, then a fall from index 20 to 44, then divergence.
    losses = [1.0 + 0.01 * ((-1) ** k) for k in range(20)]
    losses += [1.0 - 0.03 * (k + 1) for k in range(25)] + [0.3 + 0.2 * k for k in range(15)]
    # The longest falling subsequence: 1.01 (index 18), 0.99 (19), then the 25 points of the fall
    # (20 to 44): 27 long. fastai counts its start as end - length = 17, and takes the point
    # 17 + 27 // 3 + (27 / 3) // 2 = 17 + 9 + 4 = 30.
    assert _valley(lrs, losses) == lrs[30]


def test_lr_find_repeats_for_a_seed_and_suggests_a_rate_on_the_fall(
    text_config: Callable[..., Path], run_cli: Cli
) -> None:
    config = text_config("sweep")  # the tiny BERT from random weights, its recipe's batches
    results = [run_cli(["lr-find", config, "--steps", "60"]) for _ in range(2)]
    assert all(result.code == 0 for result in results), results[0].err[-2000:]
    run_dir = config.parent / "runs" / "sweep"
    record = json.loads((run_dir / "lr_find.json").read_text())
    assert results[0].out == results[1].out  # the same seed, the same sweep and suggestion
    lrs, losses = record["lrs"], record["losses"]
    assert lrs[0] == pytest.approx(1e-7) and all(b > a for a, b in itertools.pairwise(lrs))
    assert 1e-7 < record["suggested_lr"] < lrs[-1]
    at = lrs.index(record["suggested_lr"])
    assert losses[at] < losses[0] and losses[at] > min(losses)  # on the way down
    assert f"--set train.lr={record['suggested_lr']:.2e}" in results[0].out
    # The tiny BERT diverges before lr 1: the sweep stopped there, or its last loss is well above
    # the lowest (1.8x on an AVX-512 CPU whose sweep ran all 60 steps).
    assert len(lrs) < 60 or losses[-1] > 1.5 * min(losses)
    from PIL import Image

    with Image.open(run_dir / "lr_find.png") as image:
        pixels = np.asarray(image.convert("L"))
    assert image.format == "PNG" and pixels.std() > 10  # a drawn chart, not a blank image


# ----------------------------------------------------------------------------------------------
# loading: workers, and augmentation that depends on the seed and the epoch alone


def epoch_pixels(loader: Any, epoch: int, skip: int = 0) -> list[torch.Tensor]:
    """Each batch of one epoch as (pixels, labels) rows, `skip` batches left out."""
    loader.batch_sampler.set_epoch(epoch)
    loader.batch_sampler.skip(skip)
    return [torch.cat([batch["pixel_values"].flatten(1), batch["labels"]], dim=1)
            for batch in loader]


def test_augmented_batches_depend_on_seed_and_epoch_alone(
    image_config: Callable[..., Path],
) -> None:
    config = image_config("mixed", data={"augment": {"preset": "strong", "mixup": 0.4,
                                                     "cutmix": 1.0}})
    prepared = api.prepare(load_config(config))
    in_process = api.batches_for(prepared, 16, seed=3).train
    in_workers = api.batches_for(prepared, 16, seed=3, workers=2).train
    assert in_process.num_workers == 0 and in_workers.num_workers == 2
    first = epoch_pixels(in_process, 1)
    assert len(first) == 5 and first[0].shape[0] == 16  # 90 rows, the last part-batch dropped
    soft = torch.cat([batch[:, -2:] for batch in first])  # the labels, mixed
    assert torch.allclose(soft.sum(dim=1), torch.ones(len(soft)))
    assert ((soft > 0.01) & (soft < 0.99)).any()
    torch.manual_seed(123)  # whatever drew from the global generator before
    torch.rand(1000)
    assert all(map(torch.equal, epoch_pixels(in_workers, 1), first))
    # A resumed epoch (batches skipped) continues with the very batches it would have had.
    assert all(map(torch.equal, epoch_pixels(in_process, 1, skip=4), first[4:]))
    assert not torch.equal(epoch_pixels(in_process, 2)[0], first[0])  # a new epoch, new draws
    other_seed = epoch_pixels(api.batches_for(prepared, 16, seed=4).train, 1)
    assert not torch.equal(other_seed[0], first[0])


def test_workers_change_nothing_in_a_run(image_config: Callable[..., Path], run_cli: Cli) -> None:
    results = []
    for workers in (0, 2):
        config = image_config(f"workers-{workers}", train={"epochs": 2, "workers": workers},
                              data={"augment": {"preset": "medium"}})
        assert run_cli(["run", config]).code == 0
        run_dir = config.parent / "runs" / f"workers-{workers}"
        resolved = load_config(run_dir / "config.yaml")
        assert resolved.train.workers == workers
        results.append([{k: v for k, v in line.items() if k != "train_samples_per_s"}
                        for line in logged(run_dir / "trials/0")])
    assert results[0] == results[1]


def test_workers_are_chosen_for_images_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunesmith.search.recipe import loader_workers

    for cores, expected in ((1, 0), (2, 1), (8, 2), (64, 4)):
        monkeypatch.setattr("os.cpu_count", lambda cores=cores: cores)
        assert loader_workers("image") == expected
        assert loader_workers("text") == loader_workers("tabular") == 0


def test_a_compiled_model_trains_as_the_eager_one(tmp_path: Path, run_cli: Cli) -> None:
    """Without dropout: compiled dropout draws its masks from inductor's own generator."""
    from sklearn.datasets import load_breast_cancer

    from conftest import config_dict, write_yaml
    from test_tasks import sklearn_table

    sklearn_table(load_breast_cancer, tmp_path / "cancer.csv")
    lines = []
    for compile_ in (False, True):
        name = f"compile-{compile_}"
        raw = config_dict(tmp_path, data_path=tmp_path / "cancer.csv", backbone="scratch:mlp",
                          name=name, train_settings={"epochs": 3, "batch_size": 32,
                                                     "precision": "fp32", "compile": compile_},
                          model={"scratch": {"dropout": 0.0}, "head": {"dropout": 0.0}})
        assert run_cli(["run", write_yaml(tmp_path / f"{name}.yaml", raw)]).code == 0
        lines.append(logged(tmp_path / "runs" / name / "trials/0"))
    for eager, compiled in zip(*lines, strict=True):
        assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-4)
        # inductor's fused kernels round differently: 1.1e-4 apart on one AVX-512 CPU
        assert compiled["val_loss"] == pytest.approx(eager["val_loss"], rel=1e-3)


def test_the_recipes_early_stop_of_a_table_scores_as_the_full_schedule_does(
    tmp_path: Path, wine_csv: Path
) -> None:
    """Stopping 20 evaluations after the best epoch (the recipe for a network from scratch)
    trains less than the whole 200-epoch schedule and scores the same on validation and test
    (the whole schedule goes on lowering the validation loss a little at the same accuracy)."""
    runs = {}
    for name, patience in (("stopped", "auto"), ("whole", None)):
        raw = config_dict(tmp_path, data_path=wine_csv, backbone="scratch:mlp",
                          train_settings={"patience": patience}, name=name)
        runs[name] = api.fit(write_yaml(tmp_path / f"{name}.yaml", raw))
    stopped, whole = (runs[n].metrics["train"] for n in ("stopped", "whole"))
    assert stopped["stopped"] == "early stopping" and whole["stopped"] is None
    assert stopped["precision"] == whole["precision"] == "fp32"
    assert stopped["steps"] < 0.75 * whole["steps"]
    assert stopped["best_epoch"] < whole["best_epoch"]
    for part in ("val", "test"):
        scores = [runs[n].metrics[part]["accuracy"]["value"] for n in ("stopped", "whole")]
        assert scores[0] == scores[1], part


def test_a_small_network_trains_on_one_cpu_thread_and_the_count_comes_back() -> None:
    """A table's MLP trained faster on one thread than two (24,600 against 17,500 samples/s
    for breast cancer's), and many times slower on two when another process held a core."""
    import torch

    from tunesmith.train.loop import ONE_THREAD_FLOPS, _threads_for

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        small = torch.nn.Linear(30, 64)
        with _threads_for(small, 32):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="boom"), _threads_for(small, 32):
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
        large = torch.nn.Linear(1000, 1000)  # 6 x 1e6 x 32 = 1.9e8 FLOPs a step
        assert ONE_THREAD_FLOPS <= 6 * 1_001_000 * 32
        with _threads_for(large, 32):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
