"""The bundle's model card, `best/README.md`: what the model is, what it was trained and measured
on, how well it does (with intervals, against the baselines), how to use it, and its limits."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

from tunesmith.report.summary import metric_text, scored_text, val_heading

SMALL_SUPPORT = 30  # test rows of a class below which its scores say little


def model_card(metrics: dict[str, Any], config: dict[str, Any],
               data_report: dict[str, Any]) -> str:
    name, task = config.get("name", "model"), metrics["task"]
    primary = metrics["primary_metric"]
    versions = metrics.get("versions", {})
    parts = data_report.get("trained_on", {})
    lines = [
        f"# {name}",
        "",
        f"A {task} model fine-tuned by tunesmith {versions.get('tunesmith', '')} from "
        f"`{config.get('model', {}).get('backbone')}` (strategy "
        f"{metrics.get('train', {}).get('strategy', config.get('model', {}).get('strategy'))}).",
        "",
        "## Data",
        "",
        f"Source: `{config.get('data', {}).get('train')}`.",
        "",
        "| part | rows |",
        "|---|---|",
        *(f"| {part} | {info.get('rows')} |" for part, info in parts.items()),
        "",
    ]
    classes = data_report.get("classes") or []
    if classes:
        lines += [f"Classes ({len(classes)}): " + ", ".join(map(_literal, classes[:30]))
                  + (", ..." if len(classes) > 30 else ""), ""]
    lines += [
        f"## Metrics (test part, {metrics.get('test_rows')} rows, used once; 95% bootstrap "
        "intervals)",
        "",
        f"| metric | test | {val_heading(metrics, 'validation')} |",
        "|---|---|---|",
        *(f"| {metric}{' (primary)' if metric == primary else ''} | {_scored(score)} | "
          f"{_scored(metrics.get('val', {}).get(metric))} |"
          for metric, score in metrics["test"].items()),
        "",
    ]
    baselines = metrics.get("baselines", {})
    if baselines:
        lines += ["## Baselines (same split)", "",
                  f"| baseline | test {primary} | model minus baseline [95% interval] |",
                  "|---|---|---|"]
        for baseline_name, baseline in baselines.items():
            gap = baseline.get("difference", {}).get(primary, {})
            shown = scored_text(gap, signed=True) if gap else "–"
            value = baseline.get(primary)
            lines.append(f"| {baseline_name} ({baseline.get('about', '')}) | "
                         f"{metric_text(value)} | {shown} |" if value is not None else
                         f"| {baseline_name} | – | – |")
        lines.append("")
    calibration = metrics.get("calibration")
    if calibration and calibration.get("fitted"):
        lines += [f"Probabilities are divided by a temperature of "
                  f"{calibration['temperature']:.3f} fitted on validation; `predict_proba` "
                  "applies it.", ""]
    lines += [
        "## Use",
        "",
        "```python",
        "import tunesmith",
        "",
        'predictor = tunesmith.load("best")  # this folder',
        "predictor.predict(inputs)           # "
        + _inputs_of(task),
        "```",
        "",
        "or `tunesmith predict best INPUT...` on the command line.",
        "",
        "## Intended use and limitations",
        "",
        f"Intended for inputs like the training data: {_inputs_of(task)} from the same source "
        "and of the same kind.",
        "",
        "- The scores above are measured on a held-out part of the same data; on data from "
        "elsewhere they are unmeasured and may be lower.",
        "- The intervals reflect the sampling noise of the test part only, not the training seed "
        "or another split.",
    ]
    rare = [row["label"] for row in metrics.get("per_class") or []
            if row.get("support", 0) < SMALL_SUPPORT]
    if rare:
        lines.append(f"- Classes with fewer than {SMALL_SUPPORT} test rows, whose per-class "
                     f"scores say little: {', '.join(map(_literal, rare[:20]))}"
                     + (", ..." if len(rare) > 20 else "") + ".")
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    return "\n".join(lines)


def _scored(score: dict[str, Any] | None) -> str:
    return scored_text(score) if score else "–"


MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~-])")


def _literal(name: Any) -> str:
    """A class name as itself in Markdown: its HTML escaped (`<script>` is not a tag to a
    viewer that renders HTML), its Markdown marks backslashed (`*a*` is not emphasis)."""
    return MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(str(name), quote=False))


def _inputs_of(task: str) -> str:
    modality = task.split("-", 1)[0]
    return {"text": "a list of texts", "image": "a list of image paths",
            "tabular": "a DataFrame with the training feature columns"}.get(modality, "inputs")


def write_model_card(folder: Path, metrics: dict[str, Any], config: dict[str, Any],
                     data_report: dict[str, Any]) -> Path:
    from tunesmith.io import write_text

    path = folder / "README.md"
    write_text(path, model_card(metrics, config, data_report))
    return path
