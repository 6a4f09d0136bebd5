"""`report.html`: one self-contained page about a run, readable offline.

Everything comes from the run folder (`config.yaml`, `metrics.json`, `data_report.json`,
`predictions.npz`, `test_predictions.csv`, the study and the trials' `metrics.jsonl`), so
`tunesmith report RUN_DIR` rebuilds the page at any time. Charts are Matplotlib figures embedded as
PNG data URLs and images as thumbnails; no script, font or style is fetched. A section whose
inputs are missing says which file is missing instead of failing the page.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tunesmith.report.summary import fold_count, metric_text, scored_text, val_heading

REPORT = "report.html"
WORST_ERRORS = 12
LEARNING_CURVES = 5  # the best trials drawn


@dataclass(frozen=True)
class Section:
    title: str
    body: str  # HTML


class Missing(Exception):
    """A section's input is not in the run folder."""


class Unreadable(Exception):
    """A section's input is in the run folder but cannot be read (damaged, cut short)."""


class NotShown(Exception):
    """A section that does not apply to this run (its message says why)."""


# What reading a damaged JSON, YAML or .npz file raises (an empty .npz: EOFError)
DAMAGED = (ValueError, yaml.YAMLError, OSError, EOFError, KeyError, zipfile.BadZipFile)


def write_report(run_dir: Path) -> Path:
    """Build `run_dir/report.html` from the run folder; returns its path."""
    from tunesmith.io import write_text

    run = _Run(run_dir)
    sections = [_section(title, build, run) for title, build in SECTIONS]
    page = _PAGE.format(title=html.escape(f"tunesmith: {run.name}"), name=html.escape(run.name),
                        task=html.escape(str(run.metrics.get("task", "unknown task"))),
                        toc="".join(f'<li><a href="#s{i}">{html.escape(s.title)}</a></li>'
                                    for i, s in enumerate(sections)),
                        sections="".join(
                            f'<section id="s{i}"><h2>{html.escape(s.title)}</h2>{s.body}</section>'
                            for i, s in enumerate(sections)))
    path = run_dir / REPORT
    write_text(path, page)
    return path


class _Run:
    """The run folder's files, each read once when a section first asks for it."""

    def __init__(self, run_dir: Path) -> None:
        from tunesmith.io import require_run_folder

        self.dir = require_run_folder(run_dir)
        self.name = run_dir.resolve().name  # `tunesmith report .` names the run too
        self._cache: dict[str, Any] = {}
        self.read: list[str] = []  # the files the section being built has asked for
        self._metrics_problem: Exception = Missing("metrics.json")
        try:
            metrics = self.json("metrics.json")
        except (Missing, Unreadable) as problem:
            metrics, self._metrics_problem = {}, problem
        if not isinstance(metrics, dict):
            metrics = {}
            self._metrics_problem = Unreadable("metrics.json (not a JSON object)")
        self.metrics: dict[str, Any] = metrics

    def file(self, name: str) -> Path:
        self.read.append(name)
        path = self.dir / name
        if not path.exists():
            raise Missing(name)
        return path

    def json(self, name: str) -> Any:
        if name not in self._cache:
            path = self.file(name)
            try:
                self._cache[name] = json.loads(path.read_text())
            except DAMAGED as error:
                raise Unreadable(f"{name} ({_first_line(error)})") from None
        return self._cache[name]

    def config(self) -> dict[str, Any]:
        if "config" not in self._cache:
            path = self.file("config.yaml")
            try:
                self._cache["config"] = dict(yaml.safe_load(path.read_text()))
            except (*DAMAGED, TypeError) as error:
                raise Unreadable(f"config.yaml ({_first_line(error)})") from None
        return dict(self._cache["config"])

    def predictions(self) -> dict[str, np.ndarray]:
        from tunesmith.io import PREDICTIONS

        if PREDICTIONS not in self._cache:
            path = self.file(PREDICTIONS)
            try:  # arrays only: a pickled object inside is refused, not run
                with np.load(path, allow_pickle=False) as arrays:
                    self._cache[PREDICTIONS] = {k: arrays[k] for k in arrays.files}
            except DAMAGED as error:
                raise Unreadable(f"{PREDICTIONS} ({_first_line(error)})") from None
        return dict(self._cache[PREDICTIONS])

    def needs_metrics(self) -> dict[str, Any]:
        if not self.metrics:
            raise self._metrics_problem
        return self.metrics

    @property
    def kind(self) -> str:
        return str(self.needs_metrics()["task"]).split("-", 1)[1]

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.json("data_report.json").get("classes") or []]


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def _section(title: str, build: Callable[[_Run], str], run: _Run) -> Section:
    run.read = ["metrics.json"] if run.metrics else []
    try:
        return Section(title, build(run))
    except Missing as missing:
        return Section(title, f'<p class="missing">Not shown: {html.escape(str(missing))} is '
                              f"missing from the run folder.</p>")
    except Unreadable as damaged:
        return Section(title, f'<p class="missing">Not shown: the run folder\'s '
                              f"{html.escape(str(damaged))} cannot be read.</p>")
    except NotShown as reason:
        return Section(title, f"<p>{html.escape(str(reason))}</p>")
    except Exception as error:
        # A file edited or cut short where the reading above cannot tell (a CSV without its
        # columns, a JSON list for an object, an .npz without an array): the page is still
        # built, and this section names what it read.
        read = ", ".join(dict.fromkeys(run.read)) or "the run folder"
        return Section(title, f'<p class="missing">Not shown: {html.escape(read)} does not hold '
                              f"what this section reads ({html.escape(_first_line(error))}).</p>")


# ------------------------------------------------------------------------------------------------
# sections


def _summary(run: _Run) -> str:
    metrics = run.needs_metrics()
    primary = metrics["primary_metric"]
    search = metrics.get("search", {})
    facts = [
        ("task", metrics["task"]),
        ("test rows", metrics.get("test_rows")),
        ("wall time", f"{metrics.get('wall_s', 0):.0f} s"),
        ("budget", _budget(run.config().get("search", {}))),
        ("trials", f"{search.get('trials_completed', 0)} completed, "
                   f"{search.get('trials_pruned', 0)} pruned"),
        ("best trial", search.get("best_trial")),
        ("backbone", run.config().get("model", {}).get("backbone")),
        ("precision", metrics.get("train", {}).get("precision")),
    ]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in facts)
    baselines = metrics.get("baselines", {})
    names = list(baselines)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    table = []
    for metric, score in metrics["test"].items():
        cells = []
        for name in names:
            baseline = baselines[name]
            if metric not in baseline:
                cells.append("<td>–</td>")
                continue
            gap = baseline.get("difference", {}).get(metric, {})
            cells.append(f"<td>{metric_text(baseline[metric])}<br>"
                         f"<small>model {_signed(gap)}</small></td>")
        label = metric + (" (primary)" if metric == primary else "")
        table.append(f"<tr><th>{html.escape(label)}</th><td><b>{_interval(score)}</b></td>"
                     f"<td>{_interval(metrics['val'].get(metric))}</td>{''.join(cells)}</tr>")
    from tunesmith.report.summary import baselines_ahead

    ahead = "".join(f'<p class="warn">{html.escape(line)}</p>' for line in
                    baselines_ahead(metrics))
    best = search.get("best_params") or {}
    params = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_short(v))}</td></tr>"
                     for k, v in best.items())
    calibration = metrics.get("calibration")
    calibrated = ""
    if calibration and calibration.get("fitted", True):
        calibrated = (
            f"<p>Probabilities are calibrated by a temperature of "
            f"{calibration['temperature']:.3f} fitted on validation (validation ECE "
            f"{calibration['val_ece_before']:.4f} before, {calibration['val_ece_after']:.4f} "
            f"after); the bundle applies it.</p>")
    elif calibration:
        calibrated = ("<p>No temperature was fitted: validation cannot pin one down (every "
                      "validation row is right).</p>")
    chosen = _chosen_model(search)
    return (
        f'<table class="facts">{rows}</table>{ahead}'
        f"<h3>Test metrics, with 95% bootstrap intervals, against the baselines</h3>"
        f"<p>Each baseline cell gives its test score and the fine-tuned model's paired "
        f"difference from it (model minus baseline, 95% interval).</p>"
        f"<table><tr><th>metric</th><th>test</th><th>{html.escape(val_heading(metrics))}</th>"
        f"{head}</tr>{''.join(table)}"
        f"</table>{calibrated}<p>{html.escape(chosen)}</p>"
        + (f"<h3>Best configuration</h3><table>{params}</table>" if params else "")
    )


def _budget(search: dict[str, Any]) -> str:
    if search.get("budget"):
        return f"{search['budget']:.0f} s" if isinstance(search["budget"], int | float) else str(
            search["budget"])
    trials = search.get("trials") or 1
    return f"{trials} trials" if trials > 1 else "none (the recipe alone)"


def _chosen_model(search: dict[str, Any]) -> str:
    soup, ensemble = search.get("soup") or {}, search.get("ensemble") or {}
    if soup.get("used"):
        return f"The final model is a weight soup of trials {soup['ingredients']}."
    if ensemble.get("used"):
        return f"The final model is an ensemble of trials {ensemble['members']}."
    if search.get("folds", 1) > 1:
        return (f"The final model is the ensemble of trial {search.get('best_trial')}'s "
                f"{search['folds']} fold models.")
    return f"The final model is trial {search.get('best_trial', 0)}'s best checkpoint."


SHOWN_CLASSES = 20


def _counts(counts: dict[str, int]) -> str:
    """The first classes' counts, and how many classes and rows the rest hold."""
    shown = ", ".join(f"{k}: {v}" for k, v in list(counts.items())[:SHOWN_CLASSES])
    rest = list(counts.values())[SHOWN_CLASSES:]
    return shown + (f", and {len(rest)} more classes ({sum(rest)} rows)" if rest else "")


def _data(run: _Run) -> str:
    report = run.json("data_report.json")
    trained = report.get("trained_on", {})
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{part['rows']}</td><td>"
        + html.escape(_counts(part.get("label_counts", {}))) + "</td></tr>"
        for name, part in trained.items())
    findings = "".join(
        f"<li><b>{html.escape(f['severity'])}</b> {html.escape(f['check'])}: "
        f"{html.escape(f['message'])}</li>" for f in report.get("findings", []))
    cleaning = html.escape(json.dumps(report.get("cleaning", {}), indent=1))
    return (f"<table><tr><th>part</th><th>rows</th><th>labels</th></tr>{rows}</table>"
            f"<h3>Findings</h3><ul>{findings or '<li>no problems found</li>'}</ul>"
            f"<h3>Cleaning</h3><pre>{cleaning}</pre>")


_Points = list[tuple[int, float, float]]  # (epoch, train loss, val primary metric)


def _learning_curves(run: _Run) -> str:
    metrics = run.needs_metrics()
    primary = metrics["primary_metric"]
    curves = _stage_curves(run, primary)
    if not curves:
        raise Missing("trials/N/metrics.jsonl")
    greater = primary not in {"rmse", "mae"}

    def score(number: int) -> float:
        # The trial's value is its last stage's best (the probe of lp-ft only starts the model).
        last = [p[2] for p in list(curves[number].values())[-1]]
        return max(last) if greater else -min(last)

    best = sorted(curves, key=score, reverse=True)[:LEARNING_CURVES]
    plt = _pyplot()

    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    for number in best:
        stages = curves[number]
        colour, done = None, 0  # a trial's stages share its colour, each after the one before
        for index, (stage, points) in enumerate(stages.items()):
            epochs, losses, scores = zip(*points, strict=True)
            epochs = tuple(done + epoch for epoch in epochs)
            done = epochs[-1]
            last = index == len(stages) - 1  # solid; the earlier stages dashed and hollow
            style = {"marker": "o", "linestyle": "-" if last else "--",
                     "markerfacecolor": None if last else "white",
                     "label": f"trial {number}" + (f" {stage}" if len(stages) > 1 else "")}
            (line,) = loss_axis.plot(epochs, losses, color=colour, **style)
            colour = line.get_color()
            metric_axis.plot(epochs, scores, color=colour, **style)
    staged = next((list(curves[n]) for n in best if len(curves[n]) > 1), None)
    across = "" if staged is None else " (" + ", then ".join(staged) + ")"
    loss_axis.set(title="train loss", xlabel=f"epoch{across}")
    metric_axis.set(title=f"val {primary}", xlabel=f"epoch{across}")
    metric_axis.legend(fontsize=8)
    note = "" if staged is None else (
        "<p>The strategy trains in stages, each its own line: "
        f"{html.escape(', then '.join(staged))}. A stage's epochs are drawn after those of the "
        "stage before it.</p>")
    folds = fold_count(run.needs_metrics())
    if folds > 1:  # the fold models log alike; the first's stand for the trial
        note += (f"<p>Each trial trained a model on each of {folds} folds; its line is the first "
                 "fold's, validated on that fold's held-out rows (the trial's score is out of "
                 "fold, over all of them).</p>")
    return note + _figure(figure, "learning curves")


def _stage_curves(run: _Run, primary: str) -> dict[int, dict[str, _Points]]:
    """Each trial's epoch records, split by the stage that logged them, in the order they ran
    (lp-ft logs `probe` epochs 1..N, then `train` epochs 1..M: one line would zig-zag)."""
    from tunesmith.io import logged_epochs

    curves: dict[int, dict[str, _Points]] = {}
    for folder in run.file("trials").iterdir():
        if not folder.name.isdigit():
            continue
        stages: dict[str, _Points] = {}
        for record in logged_epochs(folder):
            if f"val_{primary}" in record:
                stages.setdefault(str(record.get("stage", "train")), []).append(
                    (record["epoch"], record["train_loss"], record[f"val_{primary}"]))
        if stages:
            curves[int(folder.name)] = stages
    return curves


def _search_history(run: _Run) -> str:
    import optuna

    from tunesmith.io import SNAPSHOT_FILE, STUDY_FILE

    metrics = run.needs_metrics()
    search = metrics.get("search", {})
    study_name = search.get("study")
    if study_name is None:
        return "<p>This run trained the recipe alone: there was no search.</p>"
    lives = f"<p>The study lives in {html.escape(str(search.get('storage')))}"
    copied = (run.dir / SNAPSHOT_FILE).is_file()  # a study kept elsewhere, copied as it ended
    if not copied and not str(search.get("storage", "sqlite")).startswith("sqlite"):
        return (f"{lives}; trials {search.get('trials_completed', 0)} completed, best trial "
                f"{search.get('best_trial')}.</p>")  # a run made before runs kept the copy
    where = (f"{lives}; shown is the copy of it taken as this run's search ended "
             f"({SNAPSHOT_FILE}), the trials of every worker.</p>") if copied else ""
    file = SNAPSHOT_FILE if copied else STUDY_FILE
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{run.file(file)}")
    except KeyError as error:
        raise NotShown(f"{file} holds no study named {study_name!r}.") from error
    trials = [t for t in study.get_trials(deepcopy=False) if t.value is not None]
    if not trials:
        raise NotShown("No trial of the study finished with a value.")
    plt = _pyplot()

    figure, axis = plt.subplots(figsize=(7, 3.4))
    numbers = [t.number for t in trials]
    values = [float(t.value) for t in trials if t.value is not None]
    axis.scatter(numbers, values, label="trial")
    greater = study.direction == optuna.study.StudyDirection.MAXIMIZE
    running = np.maximum.accumulate(values) if greater else np.minimum.accumulate(values)
    axis.step(numbers, running, where="post", color="tab:orange", label="best so far")
    axis.set(xlabel="trial", ylabel=f"val {metrics['primary_metric']}", title="search history")
    axis.legend(fontsize=8)
    body = where + _figure(figure, "search history")
    body += _importances(study)
    return body


def _importances(study: Any) -> str:
    import optuna
    from optuna.importance import FanovaImportanceEvaluator

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 3:
        return ("<p>Parameter importances need at least 3 completed trials; this study has "
                f"{len(complete)}.</p>")
    try:
        importances = optuna.importance.get_param_importances(
            study, evaluator=FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError) as error:  # e.g. no parameter varied across trials
        return f"<p>Parameter importances could not be computed: {html.escape(str(error))}</p>"
    if not importances:
        return "<p>No parameter varied across the completed trials.</p>"
    plt = _pyplot()

    names = list(importances)[::-1]
    figure, axis = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2))
    axis.barh(names, [importances[n] for n in names])
    axis.set(title="parameter importances (fANOVA)", xlabel="share of the variance")
    return _figure(figure, "parameter importances")


def _errors_charts(run: _Run) -> str:
    arrays = run.predictions()
    outputs, targets = arrays["test_outputs"], arrays["test_targets"]
    kind = run.kind
    plt = _pyplot()

    if kind == "regression":
        figure, axis = plt.subplots(figsize=(4.8, 4.4))
        axis.scatter(targets.reshape(-1), outputs.reshape(-1), s=8, alpha=0.6)
        low = float(min(targets.min(), outputs.min()))
        high = float(max(targets.max(), outputs.max()))
        axis.plot([low, high], [low, high], color="gray", linestyle="--")
        axis.set(xlabel="true", ylabel="predicted", title="test: predicted against true")
        return _figure(figure, "predicted against true")
    if kind == "multilabel":
        raise NotShown("A multilabel task has no confusion matrix; see the per-class table.")
    from sklearn.metrics import confusion_matrix

    classes = run.classes
    labels = list(range(outputs.shape[1]))
    confusion = confusion_matrix(targets.astype(int), outputs.argmax(axis=1), labels=labels)
    size = min(12.0, 2.5 + 0.45 * len(labels))
    figure, axis = plt.subplots(figsize=(size, size * 0.85))
    image = axis.imshow(confusion, cmap="Blues")
    figure.colorbar(image, ax=axis)
    if len(labels) <= 30:
        names = classes if len(classes) == len(labels) else [str(i) for i in labels]
        axis.set_xticks(labels, names, rotation=90, fontsize=8)
        axis.set_yticks(labels, names, fontsize=8)
        for i in labels:
            for j in labels:
                if confusion[i, j]:
                    axis.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7,
                              color="white" if confusion[i, j] > confusion.max() / 2 else "black")
    axis.set(xlabel="predicted", ylabel="true", title="test confusion matrix")
    return _figure(figure, "confusion matrix")


def _reliability(run: _Run) -> str:
    from tunesmith.evaluate.calibration import reliability

    if run.kind != "classification":
        raise NotShown("Calibration is measured for single-label classification only.")
    arrays = run.predictions()
    outputs, targets = arrays["test_outputs"], arrays["test_targets"]
    temperature = float((run.metrics.get("calibration") or {}).get("temperature", 1.0))
    plt = _pyplot()

    figure, axis = plt.subplots(figsize=(5.2, 4.4))
    axis.plot([0, 1], [0, 1], color="gray", linestyle="--", label="perfect")
    after = reliability(outputs, targets)
    label = "accuracy per bin" + (f" (T = {temperature:.2f})" if temperature != 1.0 else "")
    axis.bar([(p["low"] + p["high"]) / 2 for p in after], [p["accuracy"] for p in after],
             width=1 / 15, alpha=0.6, edgecolor="tab:blue", label=label)
    if temperature != 1.0:
        before = reliability(outputs * temperature, targets)
        axis.plot([p["confidence"] for p in before], [p["accuracy"] for p in before],
                  marker="o", color="tab:red", label="before the temperature")
    axis.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
             title="test reliability (15 bins)")
    axis.legend(fontsize=8)
    ece = run.metrics.get("test", {}).get("ece")
    ece_before = (run.metrics.get("calibration") or {}).get("test_ece_before")
    note = (f"<p>Test ECE (15 bins): {_interval(ece)}"
            + (f", {ece_before:.4f} before the temperature" if ece_before is not None
               and temperature != 1.0 else "") + ".</p>") if ece else ""
    return _figure(figure, "reliability diagram") + note


def _per_class(run: _Run) -> str:
    table = run.needs_metrics().get("per_class")
    if not table:
        raise NotShown("A regression has no classes.")
    rows = "".join(
        f"<tr><th>{html.escape(str(r['label']))}</th><td>{r['precision']:.3f}</td>"
        f"<td>{r['recall']:.3f}</td><td>{r['f1']:.3f}</td><td>{r['support']}</td></tr>"
        for r in table)
    return ("<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>"
            f"<th>support</th></tr>{rows}</table>")


def _worst_errors(run: _Run) -> str:
    import pandas as pd

    from tunesmith.io import TEST_PREDICTIONS

    # ids as written (row numbers would read as ints, "007" as 7); a classifier's labels too
    as_written = dict.fromkeys(["id"] if run.kind == "regression" else ["id", "label",
                                                                          "predicted"], str)
    table = pd.read_csv(run.file(TEST_PREDICTIONS), dtype=as_written, keep_default_na=False)
    if run.kind == "regression":
        table["error"] = (table["predicted"].astype(float) - table["label"].astype(float)).abs()
        worst = table.sort_values("error", ascending=False).head(WORST_ERRORS)
    elif run.kind == "multilabel":  # label sets written "a|b": how many labels are wrong
        table["error"] = [len(_label_set(label) ^ _label_set(predicted))
                          for label, predicted in zip(table["label"], table["predicted"],
                                                      strict=True)]
        worst = table[table["error"] > 0].sort_values("error", ascending=False, kind="stable")
        worst = worst.head(WORST_ERRORS)
    else:
        wrong = table[table["label"] != table["predicted"]]
        if "probability" in wrong:
            wrong = wrong.sort_values("probability", ascending=False)
        worst = wrong.head(WORST_ERRORS)
    if worst.empty:
        return "<p>No test row is wrong.</p>"
    image = run.json("data_report.json").get("task", "").startswith("image")
    rows = []
    # Rows as records, not iterrows: its Series would make a regression's ids floats (25.0).
    for row in worst.to_dict("records"):
        shown = html.escape(str(row.get("id", "")))
        if "input" in row:
            shown = _thumbnail(Path(str(row["input"]))) if image else html.escape(
                str(row["input"])[:400])
        confidence = (f"{float(row['probability']):.3f}" if "probability" in row
                      else str(row["error"]) if run.kind == "multilabel"
                      else _number(float(row.get("error", 0))))
        rows.append(f"<tr><td>{shown}</td><td>{html.escape(_number(row['label']))}</td>"
                    f"<td>{html.escape(_number(row['predicted']))}</td><td>{confidence}</td></tr>")
    last = ("probability" if "probability" in worst else "labels wrong"
            if run.kind == "multilabel" else "absolute error")
    return (f"<p>The test rows the model got most confidently wrong.</p><table><tr><th>input"
            f"</th><th>label</th><th>predicted</th><th>{last}</th></tr>{''.join(rows)}</table>")


def _thumbnail(path: Path) -> str:
    from tunesmith.data.image_scan import DECODE_ERRORS, open_image

    try:  # as a viewer shows it, and the model saw it: upright, 16 bits stretched, alpha on white
        small = open_image(path, "RGB")
        small.thumbnail((96, 96))
        buffer = io.BytesIO()
        small.save(buffer, format="PNG")
    except DECODE_ERRORS:
        return f"<i>{html.escape(path.name)} (unreadable)</i>"
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img class="thumb" alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def _versions(run: _Run) -> str:
    versions = dict(run.needs_metrics().get("versions", {}))
    import platform

    versions.setdefault("python", platform.python_version())

    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                               for k, v in versions.items()) + "</table>"


SECTIONS: list[tuple[str, Callable[[_Run], str]]] = [
    ("Summary", _summary),
    ("Data", _data),
    ("Learning curves of the best trials", _learning_curves),
    ("Search history and parameter importances", _search_history),
    ("Errors", _errors_charts),
    ("Calibration", _reliability),
    ("Per class", _per_class),
    ("Worst errors", _worst_errors),
    ("Versions", _versions),
]


# ------------------------------------------------------------------------------------------------
# pieces


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no screen: draw to files
    import matplotlib.pyplot as plt

    return plt


def _figure(figure: Any, alt: str) -> str:
    plt = _pyplot()

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=96)
    plt.close(figure)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img class="chart" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _interval(score: dict[str, Any] | None) -> str:
    if not score:
        return "–"
    interval = score.get("ci95")
    return metric_text(score["value"]) + (
        f" <small>[{metric_text(interval[0])}, {metric_text(interval[1])}]</small>"
        if interval else "")


def _signed(gap: dict[str, Any]) -> str:
    if not gap:
        return "–"
    return scored_text(gap, signed=True)


def _label_set(text: Any) -> set[str]:
    from tunesmith.io import LABEL_JOINER

    return {name for name in str(text).split(LABEL_JOINER) if name}


def _number(value: Any) -> str:
    """A float to four significant digits, but every digit of its whole part (245310, not
    2.453e+05); anything else (an int, a class name) as it is."""
    if not isinstance(value, float) or not math.isfinite(value):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _short(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    return str(value)


# The page: plain HTML and CSS; the one script checks that every chart decoded and says so in the
# console (a browser test reads it) and in the page's data attributes.
_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1em 2em;
       color: #1d2330; line-height: 1.45; }}
h1 {{ margin-bottom: 0; }} h2 {{ border-bottom: 2px solid #dde3ee; padding-bottom: .2em;
       margin-top: 2em; }}
table {{ border-collapse: collapse; margin: .6em 0; }}
th, td {{ border: 1px solid #dde3ee; padding: .3em .6em; text-align: left;
         vertical-align: top; }}
th {{ background: #f4f6fa; font-weight: 600; }}
img.chart {{ max-width: 100%; display: block; margin: .6em 0; }}
img.thumb {{ width: 64px; height: 64px; object-fit: contain; image-rendering: pixelated; }}
.warn {{ background: #fff4d6; border-left: 4px solid #e0a800; padding: .5em .8em; }}
.missing {{ color: #8a5a00; font-style: italic; }}
nav ul {{ columns: 3; }} small {{ color: #5a6376; }}
pre {{ background: #f4f6fa; padding: .6em; overflow-x: auto; font-size: 85%; }}
</style></head>
<body><h1>{name}</h1><p>{task} · a tunesmith run report</p>
<nav><ul>{toc}</ul></nav>
{sections}
<script>
window.addEventListener("load", function () {{
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) {{ return !(i.complete && i.naturalWidth > 0); }});
  document.body.dataset.images = String(images.length);
  document.body.dataset.broken = String(broken.length);
  if (broken.length) {{ console.error("tunesmith report: " + broken.length + " images failed"); }}
}});
</script>
</body></html>
"""
