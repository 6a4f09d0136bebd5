"""Greedy ensemble selection among trials that validation cannot tell apart (Caruana et al. 2004,
"Ensemble selection from libraries of models", as AutoGluon and auto-sklearn use it).

When the best trials score within noise of each other on validation, picking the top one is
picking the luckiest; averaging their predictions keeps what each learned. The candidates are
the trials within two standard errors of the best (the standard error from the best's own
validation interval); in order of validation score, each is added to the average if it makes
the average's validation score better (a member costs a forward pass at every prediction), so
the ensemble is used only when it beats the best single trial. It works on the members'
validation outputs alone: nothing is recomputed.

Replicates of one configuration (the recipe trained again with other seeds) are another matter:
they are exchangeable by construction, so validation has nothing to choose between them, and a
greedy pick among them follows the noise. They are averaged uniformly, all of them
(`uniform_ensemble`, the deep ensembles of Lakshminarayanan et al. 2017), and the average is used
unless it scores below the mean of its members by more than a standard error: the best member's
score is the maximum of a few noisy draws, and each member's is the best of its epochs on these
same rows, yardsticks biased upwards. Over 15 sets of 4 of 6 MiniLM replicates on Rotten
Tomatoes, the uniform average scored 0.813 on test on average, the greedy pick 0.812 (with a
validation score 1.9 points above its test score, against 1.1 for the uniform one) and the best
replicate on validation 0.805. (The search first tries their uniform weight soup,
`soup.uniform_soup`, which predicts at the cost of one model.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tunesmith.evaluate.metrics import Objective


@dataclass(frozen=True)
class Selection:
    members: tuple[int, ...]  # trial numbers whose outputs are averaged
    outputs: np.ndarray  # the ensemble's validation outputs
    score: float
    best_single: float
    improves: bool


def combine(outputs: Sequence[np.ndarray], kind: str) -> np.ndarray:
    """The ensemble's outputs from its members', as `tunesmith.models.ensemble.Ensemble` forms
    them: log of the mean probability (classes), logit of the mean probability (labels), mean
    (numbers)."""
    stacked = np.stack([np.asarray(o, dtype=np.float64) for o in outputs])
    if kind == "classification":
        shifted = stacked - stacked.max(axis=-1, keepdims=True)
        probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
        combined = np.log(np.clip(probabilities.mean(axis=0), 1e-12, None))
    elif kind == "multilabel":
        mean = (1.0 / (1.0 + np.exp(-stacked))).mean(axis=0).clip(1e-7, 1 - 1e-7)
        combined = np.log(mean / (1 - mean))
    else:
        combined = stacked.mean(axis=0)
    return np.asarray(combined, dtype=np.float32)


def greedy_ensemble(
    candidates: Sequence[tuple[int, float, np.ndarray]],
    targets: np.ndarray,
    objective: Objective,
) -> Selection:
    """`candidates`: (trial number, validation score, validation outputs), any order, the first
    by score the best trial."""
    sign = 1.0 if objective.greater_is_better else -1.0
    ordered = sorted(candidates, key=lambda c: (-sign * c[1], c[0]))
    number, best_score, outputs = ordered[0]
    chosen, members = [outputs], [number]
    score = best_score
    for number, _, outputs in ordered[1:]:
        trial_score = objective.score(combine([*chosen, outputs], objective.kind),
                                      targets)[objective.metric]
        if sign * trial_score > sign * score:  # each member must earn its prediction cost
            chosen.append(outputs)
            members.append(number)
            score = trial_score
    better = len(members) > 1 and sign * score > sign * best_score
    return Selection(tuple(members), combine(chosen, objective.kind), score, best_score, better)


def within_noise(scores: dict[int, float], best: int, error: float, objective: Objective,
                 *, limit: int = 5) -> list[int]:
    """The trials (best first) whose score is within two standard errors of the best's."""
    sign = 1.0 if objective.greater_is_better else -1.0
    close = [n for n, s in scores.items() if sign * (scores[best] - s) <= 2 * error]
    close.sort(key=lambda n: (-sign * scores[n], n))
    return ([best] + [n for n in close if n != best])[:limit]


def uniform_ensemble(
    candidates: Sequence[tuple[int, float, np.ndarray]],
    targets: np.ndarray,
    objective: Objective,
    *,
    tolerance: float = 0.0,
) -> Selection:
    """All `candidates` (replicates of one configuration) averaged with equal weight; used unless
    the average scores below its members' mean score by more than `tolerance` (each member's
    score is its best epoch's on these rows: biased upwards, see `soup.uniform_soup`)."""
    sign = 1.0 if objective.greater_is_better else -1.0
    ordered = sorted(candidates, key=lambda c: (-sign * c[1], c[0]))
    outputs = combine([c[2] for c in ordered], objective.kind)
    score = objective.score(outputs, targets)[objective.metric]
    mean = float(np.mean([c[1] for c in ordered]))
    better = len(ordered) > 1 and sign * score >= sign * mean - tolerance
    return Selection(tuple(c[0] for c in ordered), outputs, score, ordered[0][1], better)
