"""The end-of-run summary: what was trained and how well it scores on held-out data."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def summary_table(metrics: dict[str, Any], run_dir: str) -> Table:
    table = Table(title=f"tunesmith: {run_dir}", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("test [95% interval]", justify="right")
    table.add_column("val [95% interval]", justify="right")
    baseline_name, baseline_metrics = next(iter(metrics["baselines"].items()))
    table.add_column(f"{baseline_name} baseline", justify="right")
    for name, value in metrics["test"].items():
        baseline = baseline_metrics.get(name)
        table.add_row(
            name + (" (primary)" if name == metrics["primary_metric"] else ""),
            _shown(value),
            _shown(metrics["val"].get(name)),
            f"{baseline:.4f}" if baseline is not None else "–",
        )
    table.caption = (
        f"{metrics['test_rows']} test rows · {metrics['wall_s']:.0f} s · "
        f"precision {metrics['train']['precision']} · "
        f"{metrics['train']['samples_per_s']:.1f} train samples/s"
    )
    return table


def _shown(score: dict[str, Any] | None) -> str:
    """0.8123 [0.7890, 0.8345]"""
    if score is None:
        return "–"
    interval = score.get("ci95")
    shown = f"{score['value']:.4f}"
    return shown + (f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "")


def baselines_ahead(metrics: dict[str, Any]) -> list[str]:
    """A plain sentence for each baseline that beats the fine-tuned model on validation: by how
    much (baseline minus model), with the paired interval of the difference."""
    from tunesmith.evaluate.metrics import objective_for

    primary = metrics["primary_metric"]
    greater = objective_for(metrics["task"].split("-", 1)[1]).greater_is_better
    lines = []
    for name, baseline in metrics["baselines"].items():
        gap = baseline.get("val_difference", {}).get(primary)
        if gap is None or (gap["value"] >= 0 if greater else gap["value"] <= 0):
            continue
        interval = gap.get("ci95")
        shown = f" (95% interval [{-interval[1]:+.4f}, {-interval[0]:+.4f}])" if interval else ""
        lines.append(
            f"the {name} baseline ({baseline['about']}) beats the fine-tuned model on "
            f"validation: {primary} {baseline['val'][primary]:.4f} against "
            f"{baseline['val'][primary] + gap['value']:.4f}, a difference of {-gap['value']:+.4f}"
            f"{shown}")
    return lines
