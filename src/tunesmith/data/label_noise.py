"""Likely label errors, found before training, in the manner of confident learning.

Northcutt, Jiang and Chuang (2021), "Confident learning: estimating uncertainty in dataset labels"
(the method behind cleanlab, which is not a dependency): a quick model predicts every row's class
probabilities out of fold, so no row is judged by a model that saw its label. Class j's threshold
t_j is the mean probability of j over the rows labelled j: how confident the model is, on average,
when the label is right. A row is a likely error when some other class k clears its own threshold
and is the most probable of the classes that do (an off-diagonal entry of the confident joint).
The rows are ranked by the probability of their given label, lowest first.

The features are deliberately simple (TF-IDF words, tiny grayscale thumbnails, the user's own
columns): a label the quick model contradicts with confidence is worth a human look, while a
clean label it merely finds hard is not flagged, because the thresholds adapt to each class.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse
from PIL import Image
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from tunesmith.data.image_scan import upright

MAX_VOCABULARY = 50_000  # word 1-2 grams kept for text; more slows the model, rarely helps it
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "F")  # 16/32-bit images: "L" would clip them


@dataclass(frozen=True, eq=False)  # eq=False: array fields make the generated __eq__ ambiguous
class LabelIssues:
    """Rows whose label the out-of-fold model contradicts, most suspicious first."""

    rows: np.ndarray  # row indices into the full input
    given: np.ndarray  # the given class code of each flagged row
    suggested: np.ndarray  # the class the model believes instead
    given_probability: np.ndarray  # the model's probability of the given class (ranking key)
    checked_rows: int  # how many rows were checked (a stratified sample for big data)
    model: str  # what made the probabilities, for the report
    accuracy: float  # out-of-fold accuracy of the quick model on the given labels
    majority: float  # the share of the largest class: what a model that learned nothing gets

    @property
    def informative(self) -> bool:
        """Whether the quick model learned enough to judge labels: it must remove at least a
        quarter of the majority class's error. Near chance, disagreement with a label says
        nothing about the label (orientation in raw pixels, for one, is beyond a linear model)."""
        return self.accuracy >= self.majority + 0.25 * (1.0 - self.majority)

    def __len__(self) -> int:
        return len(self.rows)


def text_features(texts: Sequence[str]) -> scipy.sparse.csr_matrix:
    """TF-IDF of word 1-2 grams: sublinear tf, min_df 2, at most `MAX_VOCABULARY` terms.

    Fitting the vocabulary on all rows does not leak labels: it never sees them. A term in one
    text only cannot carry over from training folds to a held-out row, hence min_df 2. When no
    term occurs twice the result has no columns, and `find_label_issues` returns None for it.
    """
    vectorizer = TfidfVectorizer(
        ngram_range=(1, 2), sublinear_tf=True, min_df=2, max_features=MAX_VOCABULARY
    )
    try:
        matrix = vectorizer.fit_transform(texts)
    except ValueError:  # "empty vocabulary" or "no terms remain": nothing to learn from
        return scipy.sparse.csr_matrix((len(texts), 0))
    return scipy.sparse.csr_matrix(matrix)


def image_features(paths: Sequence[str], *, side: int = 16) -> np.ndarray:
    """Grayscale `side` x `side` thumbnails with pixels in [0, 1], one flattened row per image.

    Every path must be a readable image (the data stage checks them first): a failed read raises
    rather than becoming a row of zeros, which would look like a confident "dark image" class.
    """
    rows = np.empty((len(paths), side * side), dtype=np.float32)
    for i, path in enumerate(paths):
        rows[i] = _thumbnail(path, side).ravel()
    return rows


def _thumbnail(path: str, side: int) -> np.ndarray:
    with Image.open(path) as opened:
        # JPEG decodes at 1/2, 1/4 or 1/8 scale when asked first: several times faster.
        opened.draft("L", (side, side))
        image = upright(opened)
        if image.mode in _WIDE_MODES:
            pixels = np.asarray(image.convert("F").resize((side, side), Image.Resampling.BOX))
            low, high = float(pixels.min()), float(pixels.max())
            return (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
        small = image.convert("L").resize((side, side), Image.Resampling.BOX)
        return np.asarray(small, dtype=np.float32) / 255.0


def find_label_issues(
    features: Any,
    classes: np.ndarray,
    *,
    seed: int = 0,
    folds: int = 5,
    max_rows: int = 20_000,
) -> LabelIssues | None:
    """Flag the rows whose label (int codes 0..K-1) the out-of-fold model confidently disputes.

    `features` is a dense array or a scipy sparse matrix with one row per label. Above `max_rows`
    rows a seeded stratified sample of `max_rows` is checked. Returns None when the check cannot
    be made honestly: a single class, a class with fewer than 2 rows, or no feature columns. With
    fewer than `folds` rows in some class, the folds shrink to that count.
    """
    labels = np.asarray(classes)
    if labels.ndim != 1 or features.shape[0] != len(labels):
        raise ValueError(
            f"features have {features.shape[0]} rows but there are {labels.size} class codes"
        )
    if folds < 2:
        raise ValueError(f"folds must be at least 2, not {folds}")
    sample = _stratified_sample(labels, max_rows, keep=folds, seed=seed)
    inputs = features[sample] if scipy.sparse.issparse(features) else np.asarray(features)[sample]
    present, y = np.unique(labels[sample], return_inverse=True)
    if len(present) < 2:
        return None
    usable_folds = min(folds, int(np.bincount(y).min()))
    if len(present) < 2 or usable_folds < 2 or inputs.shape[1] == 0:
        return None

    model, description = _quick_model(sparse=scipy.sparse.issparse(inputs), seed=seed)
    probabilities = _out_of_fold_probabilities(model, inputs, y, folds=usable_folds, seed=seed)
    flagged, suggested = _confident_off_diagonal(probabilities, y)
    given_probability = probabilities[flagged, y[flagged]]
    order = np.argsort(given_probability, kind="stable")
    return LabelIssues(
        rows=sample[flagged][order],
        given=present[y[flagged]][order],
        suggested=present[suggested][order],
        given_probability=given_probability[order],
        checked_rows=len(sample),
        model=f"{description}, {usable_folds}-fold out-of-fold",
        accuracy=float((probabilities.argmax(axis=1) == y).mean()),
        majority=float(np.bincount(y).max() / len(y)),
    )


def _stratified_sample(labels: np.ndarray, size: int, *, keep: int, seed: int) -> np.ndarray:
    """Sorted row indices: all rows, or `size` of them with each class in proportion.

    Each class first keeps up to `keep` rows (the fold count), so that sampling alone never makes
    a rare class too small to cross-validate; the rest of `size` is shared in proportion.
    """
    if len(labels) <= size:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    codes, y = np.unique(labels, return_inverse=True)
    counts = np.bincount(y, minlength=len(codes))
    quota = np.minimum(counts, keep)
    if quota.sum() > size:  # absurdly many classes for the sample: plain proportions
        quota = np.zeros_like(counts)
    quota += _share(size - int(quota.sum()), counts - quota)
    chosen = [rng.permutation(np.flatnonzero(y == code))[:take] for code, take in enumerate(quota)]
    return np.sort(np.concatenate(chosen))


def _share(total: int, weights: np.ndarray) -> np.ndarray:
    """Split `total` into integers proportional to `weights` (largest remainders get the rest)."""
    exact: np.ndarray = total * weights / weights.sum()
    whole: np.ndarray = np.floor(exact).astype(int)
    leftover = total - int(whole.sum())
    whole[np.argsort(whole - exact, kind="stable")[:leftover]] += 1
    return whole


def _quick_model(*, sparse: bool, seed: int) -> tuple[Pipeline | LogisticRegression, str]:
    """Logistic regression (C=1); dense columns are standardized inside each training fold."""
    if sparse:
        # saga: on 20,000 TF-IDF rows of 10 classes it converged in about 20 epochs, five times
        # faster than lbfgs; liblinear is one-vs-rest only and deprecated for multiclass.
        # saga visits rows in a random order: seeded, or the report changes from run to run.
        model = LogisticRegression(C=1.0, solver="saga", max_iter=200, random_state=seed)
        return model, "logistic regression on sparse features"
    model = make_pipeline(
        StandardScaler(), LogisticRegression(C=1.0, max_iter=1000, random_state=seed)
    )
    return model, "standardized features + logistic regression"


def _out_of_fold_probabilities(
    model: Pipeline | LogisticRegression, inputs: Any, y: np.ndarray, *, folds: int, seed: int
) -> np.ndarray:
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # A few more iterations would move the probabilities in a late decimal, not the ranking.
        warnings.simplefilter("ignore", ConvergenceWarning)
        probabilities = cross_val_predict(model, inputs, y, cv=splitter, method="predict_proba")
    return np.asarray(probabilities, dtype=np.float64)


def _confident_off_diagonal(
    probabilities: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(indices of rows counted off the diagonal of the confident joint, their believed class)."""
    classes = probabilities.shape[1]
    thresholds = np.array([probabilities[y == j, j].mean() for j in range(classes)])
    confident = probabilities >= thresholds
    believed = np.where(confident, probabilities, -np.inf).argmax(axis=1)
    flagged = np.flatnonzero(confident.any(axis=1) & (believed != y))
    return flagged, believed[flagged]
