"""The greedy soup: ingredients in order of validation score, each kept only if the average does
not get worse, the soup used only when it beats the best trial; the uniform soup of replicates,
used unless it falls below their mean by more than a standard error; ensembles of outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tunesmith.search.soup import (
    average,
    compatible,
    greedy_soup,
    trained_norms,
    uniform_soup,
)
from tunesmith.train.batch_norm import recalibrate_norms


def state(value: float, *, shape: tuple[int, ...] = (2,)) -> dict[str, torch.Tensor]:
    return {"w": torch.full(shape, value), "steps": torch.tensor(7)}


def test_the_average_is_uniform_and_keeps_integer_buffers() -> None:
    mixed = average([state(1.0), state(2.0), state(6.0)])
    assert torch.equal(mixed["w"], torch.full((2,), 3.0))
    assert mixed["steps"].item() == 7 and mixed["steps"].dtype == torch.int64


def test_greedy_soup_keeps_only_ingredients_that_do_not_hurt_validation() -> None:
    # The score is best when the averaged weight is near 2.0. Trials (number, val, weight):
    # 0 (0.90, w=1), 1 (0.85, w=3) pulls the average to 2 (better), 2 (0.80, w=10) would push
    # it to 4.67 (worse: left out), 3 (0.70, w=2) keeps it at 2 (a tie: kept).
    weights = {0: 1.0, 1: 3.0, 2: 10.0, 3: 2.0}
    scores = {0: 0.90, 1: 0.85, 2: 0.80, 3: 0.70}

    def score(mixed: dict[str, torch.Tensor]) -> float:
        return 1.0 - abs(float(mixed["w"][0]) - 2.0) / 10

    candidates = [(n, scores[n], lambda n=n: state(weights[n])) for n in (2, 0, 3, 1)]
    soup = greedy_soup(candidates, score)
    assert soup.ingredients == (0, 1, 3)
    assert torch.allclose(soup.state["w"], torch.full((2,), 2.0))
    assert soup.score == 1.0 and soup.best_single == 0.90 and soup.improves


def test_a_soup_that_is_no_better_than_the_best_trial_is_not_used() -> None:
    candidates = [(0, 0.9, lambda: state(1.0)), (1, 0.8, lambda: state(5.0))]
    soup = greedy_soup(candidates, lambda mixed: 0.5)  # every average scores worse
    assert soup.ingredients == (0,) and not soup.improves


def test_weights_of_another_architecture_are_skipped_and_lower_is_better_works() -> None:
    candidates = [
        (0, 1.0, lambda: state(4.0)),
        (1, 2.0, lambda: state(0.0, shape=(3,))),  # another head width: not averaged
        (2, 3.0, lambda: state(0.0)),
    ]
    # an error to minimize: the average of trials 0 and 2 (w=2) beats trial 0 alone
    soup = greedy_soup(candidates, lambda mixed: abs(float(mixed["w"][0]) - 2.0),
                       greater_is_better=False)
    assert soup.ingredients == (0, 2) and soup.improves and soup.score == 0.0
    assert not compatible(state(1.0), state(1.0, shape=(3,)))


def test_the_uniform_soup_of_replicates_averages_all_and_is_used_within_a_standard_error() -> None:
    # A score best at w=2; replicates (number, val, w): their mean val is 0.80.
    def score(mixed: dict[str, torch.Tensor]) -> float:
        return 0.82 - abs(float(mixed["w"][0]) - 2.0) / 10

    replicas = [(3, 0.78, lambda: state(3.0)), (0, 0.84, lambda: state(1.0)),
                (5, 0.78, lambda: state(2.0))]  # average w = 2: scores 0.82, above the mean
    soup = uniform_soup(replicas, score)
    assert soup.ingredients == (0, 3, 5)  # all of them, best first: none picked out
    assert torch.allclose(soup.state["w"], torch.full((2,), 2.0))
    assert soup.score == pytest.approx(0.82) and soup.best_single == 0.84 and soup.improves
    # an average below the members' mean: used only within the tolerance (one standard error)
    far = [(0, 0.84, lambda: state(1.0)), (1, 0.84, lambda: state(7.0))]  # w=4: scores 0.62
    assert not uniform_soup(far, score).improves
    assert not uniform_soup(far, score, tolerance=0.2).improves  # 0.62 < 0.84 - 0.2
    assert uniform_soup(far, score, tolerance=0.25).improves
    # an error to minimize: the tolerance works the other way
    low = [(0, 0.10, lambda: state(1.0)), (1, 0.20, lambda: state(2.0))]  # mean 0.15
    assert uniform_soup(low, lambda m: 0.17, greater_is_better=False, tolerance=0.03).improves
    assert not uniform_soup(low, lambda m: 0.19, greater_is_better=False, tolerance=0.03).improves
    assert uniform_soup(low, lambda m: 0.19, greater_is_better=False).ingredients == (0, 1)
    with pytest.raises(ValueError, match="replicates"):
        uniform_soup([(0, 0.9, lambda: state(1.0)), (1, 0.9, lambda: state(1.0, shape=(3,)))],
                     score)


# ----------------------------------------------------------------------------------------------
# greedy ensemble selection over validation outputs


def test_combined_outputs_are_what_the_ensemble_module_predicts() -> None:
    import numpy as np

    from tunesmith.models.ensemble import Ensemble
    from tunesmith.search.selection import combine

    rng = np.random.default_rng(0)
    outputs = [rng.normal(size=(6, 3)).astype(np.float32) for _ in range(3)]

    class Fixed(torch.nn.Module):
        def __init__(self, output: np.ndarray) -> None:
            super().__init__()
            self.output = torch.from_numpy(output)

        def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.output

    for kind in ("classification", "multilabel", "regression"):
        module = Ensemble([Fixed(o) for o in outputs], kind)  # type: ignore[misc]
        assert np.allclose(combine(outputs, kind), module({}).numpy(), atol=1e-5)


def test_greedy_ensemble_keeps_members_that_help_and_is_used_only_when_better() -> None:
    import numpy as np

    from tunesmith.evaluate.metrics import objective_for
    from tunesmith.search.selection import greedy_ensemble

    objective = objective_for("classification")
    targets = np.array([0, 1, 0, 1, 0, 1])
    sure = 4.0

    def logits(right: list[bool]) -> np.ndarray:
        # confident on the rows it gets right, unsure (and wrong) on the others
        out = np.zeros((6, 2), dtype=np.float32)
        for row, (target, good) in enumerate(zip(targets, right, strict=True)):
            out[row, target if good else 1 - target] = sure if good else 0.5
        return out

    a = logits([True, True, True, True, False, False])  # 4/6
    b = logits([False, True, True, True, True, True])  # 5/6, best
    c = logits([True, False, True, True, True, True])  # 5/6: wrong where b is right
    bad = logits([False] * 6)
    chosen = greedy_ensemble([(0, 4 / 6, a), (1, 5 / 6, b), (2, 5 / 6, c), (3, 0.0, bad)],
                             targets, objective)
    assert chosen.members == (1, 2)  # a and bad add nothing once b and c are right everywhere
    assert chosen.best_single == pytest.approx(5 / 6)
    assert chosen.score == pytest.approx(1.0) and chosen.improves  # b and c cover each other
    alone = greedy_ensemble([(1, 5 / 6, b), (3, 0.0, bad)], targets, objective)
    assert alone.members == (1,) and not alone.improves


def test_replicates_are_averaged_uniformly_and_used_when_not_below_their_mean() -> None:
    import numpy as np

    from tunesmith.evaluate.metrics import objective_for
    from tunesmith.search.selection import combine, uniform_ensemble

    objective = objective_for("classification")
    targets = np.array([0, 1, 0, 1])
    a = np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 0.2], [0.0, 2.0]])  # 3/4: row 2 wrong, unsure
    b = np.array([[2.0, 0.0], [0.3, 0.0], [2.0, 0.0], [0.0, 2.0]])  # 3/4: row 1 wrong, unsure
    c = np.array([[0.0, 0.1], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])  # 3/4: row 0 wrong, unsure
    chosen = uniform_ensemble([(4, 0.75, b), (2, 0.75, a), (7, 0.75, c)], targets, objective)
    assert chosen.members == (2, 4, 7)  # all of them, none picked out by validation
    np.testing.assert_allclose(chosen.outputs, combine([a, b, c], "classification"), rtol=1e-6)
    assert chosen.score == 1.0 and chosen.improves  # each is outvoted where it is wrong
    wrong = np.array([[0.0, 3.0], [3.0, 0.0], [0.0, 3.0], [3.0, 0.0]])  # 0/4, and confident
    worse = uniform_ensemble([(0, 0.75, a), (1, 0.0, wrong)], targets, objective)
    assert worse.best_single == 0.75 and worse.score == 0.0  # below the mean, 0.375: not used
    assert not worse.improves
    # within a tolerance of the mean (a standard error of the validation score) it is used
    assert not uniform_ensemble([(0, 0.75, a), (1, 0.0, wrong)], targets, objective,
                                tolerance=0.3).improves
    assert uniform_ensemble([(0, 0.75, a), (1, 0.0, wrong)], targets, objective,
                            tolerance=0.4).improves


def test_trials_within_noise_are_those_within_two_standard_errors() -> None:
    from tunesmith.evaluate.metrics import objective_for
    from tunesmith.search.selection import within_noise

    scores = {0: 0.80, 1: 0.84, 2: 0.81, 3: 0.77, 4: 0.83}
    assert within_noise(scores, 1, 0.02, objective_for("classification")) == [1, 4, 2, 0]
    rmse = {0: 1.0, 1: 1.2, 2: 1.5}
    assert within_noise(rmse, 0, 0.1, objective_for("regression")) == [0, 1]


class Normed(nn.Module):
    """A layer, a ReLU, dropout and batch norm, fed a batch as the task models are: a dict."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.linear, self.drop, self.norm = nn.Linear(3, 4), nn.Dropout(0.5), nn.BatchNorm1d(4)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.norm(self.drop(self.linear(batch["x"]).relu()))

    def activations(self, rows: torch.Tensor) -> torch.Tensor:
        return self.linear(rows).relu().detach()


def batches_of(rows: torch.Tensor, size: int) -> list[dict[str, torch.Tensor]]:
    return [{"x": rows[i:i + size], "labels": torch.zeros(size)} for i in range(0, len(rows), size)]


def trained_statistics(model: Normed, rows: torch.Tensor) -> None:
    """Running statistics as training leaves them: many momentum updates on these rows."""
    model.train()
    with torch.no_grad():
        for _ in range(200):
            model.norm(model.activations(rows))
    model.eval()


def test_a_soups_batch_norm_statistics_are_those_of_its_own_activations() -> None:
    rows = torch.randn(64, 3) * torch.tensor([1.0, 3.0, 0.5]) + torch.tensor([2.0, -1.0, 0.0])
    a, b = Normed(0), Normed(1)
    for model in (a, b):
        trained_statistics(model, rows)
    soup = Normed(2)
    soup.load_state_dict(average([a.state_dict(), b.state_dict()]))
    soup.eval()
    weights = {k: v.detach().clone() for k, v in soup.named_parameters()}
    activations = soup.activations(rows)
    # The averaged statistics are not the averaged network's (a ReLU lies between weights and
    # norm): its activations are off-centre and off-scale.
    assert (soup.norm.running_mean - activations.mean(0)).abs().max() > 0.1
    assert (soup.norm.running_var / activations.var(0)).log().abs().max() > 0.2

    made = []
    assert recalibrate_norms(soup, lambda: made.append(1) or batches_of(rows, 16))
    # The mean of four equal batches' means and unbiased variances, dropout left out (p = 0.5
    # would have scaled and zeroed activations); the weights, momentum and mode as they were.
    chunks = activations.split(16)
    expected_mean = torch.stack([c.mean(0) for c in chunks]).mean(0)
    expected_var = torch.stack([c.var(0, unbiased=True) for c in chunks]).mean(0)
    assert torch.allclose(soup.norm.running_mean, expected_mean, atol=1e-5)
    assert torch.allclose(soup.norm.running_var, expected_var, atol=1e-4)
    assert torch.allclose(soup.norm.running_mean, activations.mean(0), atol=1e-5)
    assert all(torch.equal(v, dict(soup.named_parameters())[k]) for k, v in weights.items())
    assert soup.norm.num_batches_tracked.item() == 4
    assert soup.norm.momentum == 0.1 and not soup.training and made == [1]


def test_a_model_without_batch_norm_is_left_alone_and_no_batches_are_made() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def batches() -> list[dict[str, torch.Tensor]]:
        raise AssertionError("no batch norm: the training rows need not be read")

    assert recalibrate_norms(model, batches) is False
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_only_the_norms_the_runs_trained_are_measured_again_and_single_rows_are_skipped() -> None:
    # Two "runs" of one network whose first norm was frozen (the same statistics in both) and
    # whose second trained (different ones): only the second is measured again.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 4), nn.BatchNorm1d(4))
    a = {k: v.clone() for k, v in net.state_dict().items()}
    b = {k: v.clone() for k, v in a.items()}
    b["3.running_mean"] += 1.0
    assert trained_norms([a, b]) == {"3"} and trained_norms([a, a]) == frozenset()
    other_shape = {k: v.clone() for k, v in b.items() if not k.startswith("3.")}
    assert trained_norms([a, other_shape]) == frozenset()  # never in a soup with `a`

    class Dict(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.net(batch["x"])

    model = Dict()
    model.load_state_dict({f"net.{k}": v for k, v in average([a, b]).items()})
    model.train()
    frozen_before = model.net[1].running_mean.clone()
    rows = torch.randn(33, 3)  # batches of 16, 16 and 1: the last has no variance
    assert recalibrate_norms(model, lambda: batches_of(rows, 16), layers={"net.3"})
    assert torch.equal(model.net[1].running_mean, frozen_before)  # the frozen norm as it was
    with torch.no_grad():
        inner = model.net[2](model.net[1].eval()(model.net[0](rows[:32])))
    expected = torch.stack([c.mean(0) for c in inner.split(16)]).mean(0)
    assert torch.allclose(model.net[3].running_mean, expected, atol=1e-5)
    assert model.net[3].num_batches_tracked.item() == 2
    assert model.training  # put back in the mode it came in
