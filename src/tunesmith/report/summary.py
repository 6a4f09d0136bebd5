"""The end-of-run summary: what was trained and how well it scores on held-out data."""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table


def summary_table(metrics: dict[str, Any], run_dir: str) -> Table:
    table = Table(title=f"tunesmith: {run_dir}", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("test [95% interval]", justify="right")
    table.add_column(f"{val_heading(metrics)} [95% interval]", justify="right")
    baseline_name, baseline_metrics = next(iter(metrics["baselines"].items()))
    table.add_column(f"{baseline_name} baseline", justify="right")
    for name, value in metrics["test"].items():
        baseline = baseline_metrics.get(name)
        table.add_row(
            name + (" (primary)" if name == metrics["primary_metric"] else ""),
            _shown(value),
            _shown(metrics["val"].get(name)),
            metric_text(baseline) if baseline is not None else "–",
        )
    table.caption = (
        f"{metrics['test_rows']} test rows · {metrics['wall_s']:.0f} s · "
        f"precision {metrics['train']['precision']} · "
        f"{metrics['train']['samples_per_s']:.1f} train samples/s"
    )
    return table


def fold_count(metrics: dict[str, Any]) -> int:
    """The folds each trial was trained on (1: the run's own validation part)."""
    return int((metrics.get("search") or {}).get("folds", 1))


def val_heading(metrics: dict[str, Any], word: str = "val") -> str:
    """What the val scores are: the validation part's, or with folds the out-of-fold scores of
    the fold models over the rows they were trained on (train and val)."""
    folds = fold_count(metrics)
    return f"{word}, out of fold ({folds} folds)" if folds > 1 else word


def metric_text(value: float, *, signed: bool = False) -> str:
    """A metric to four decimals (0.8123, 76.7520), or to four significant digits where those
    would hide it (an RMSE of 7.474e-05 in a target of millionths, 1.235e+09 in one of
    billions)."""
    sign = "+" if signed else ""
    value += 0.0  # -0.0 (a negated zero bound) is shown as 0
    if value == 0 or 1e-3 <= abs(value) < 1e6 or not math.isfinite(value):
        return f"{value:{sign}.4f}"
    return f"{value:{sign}.4g}"


def scored_text(score: dict[str, Any], *, signed: bool = False) -> str:
    """0.8123 [0.7890, 0.8345]: a metric and its 95% interval, where it has one."""
    interval = score.get("ci95")
    shown = metric_text(score["value"], signed=signed)
    if not interval:
        return shown
    low, high = (metric_text(bound, signed=signed) for bound in interval)
    return f"{shown} [{low}, {high}]"


def _shown(score: dict[str, Any] | None) -> str:
    return "–" if score is None else scored_text(score)


def baselines_ahead(metrics: dict[str, Any]) -> list[str]:
    """A plain sentence for each baseline that beats the fine-tuned model on validation: by how
    much (baseline minus model), with the paired interval of the difference."""
    from tunesmith.evaluate.metrics import objective_for

    primary = metrics["primary_metric"]
    greater = objective_for(metrics["task"].split("-", 1)[1]).greater_is_better
    where = ("the validation part (the model's own scores there, not its out-of-fold ones)"
             if fold_count(metrics) > 1 else "validation")
    lines = []
    for name, baseline in metrics["baselines"].items():
        gap = baseline.get("val_difference", {}).get(primary)
        if gap is None or (gap["value"] >= 0 if greater else gap["value"] <= 0):
            continue
        interval = gap.get("ci95")
        shown = (f" (95% interval [{metric_text(-interval[1], signed=True)}, "
                 f"{metric_text(-interval[0], signed=True)}])" if interval else "")
        lines.append(
            f"the {name} baseline ({baseline['about']}) beats the fine-tuned model on "
            f"{where}: {primary} {metric_text(baseline['val'][primary])} against "
            f"{metric_text(baseline['val'][primary] + gap['value'])}, a difference of "
            f"{metric_text(-gap['value'], signed=True)}{shown}")
    return lines
