"""The data report on the terminal: one table of numbers per part, one of findings."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table

SEVERITY_STYLE = {"fatal": "bold red", "warning": "yellow", "info": "dim"}


def data_tables(report: dict[str, Any]) -> Group:
    """Rich tables for a data report as written to data_report.json."""
    return Group(_parts_table(report), _findings_table(report))


def _parts_table(report: dict[str, Any]) -> Table:
    parts = report["parts"]
    table = Table(title=f"data: {report['task']}", header_style="bold")
    table.add_column("")
    for name in parts:
        table.add_column(name, justify="right")
    rows: list[tuple[str, list[str]]] = [
        ("file", [_short(part["file"]) for part in parts.values()]),
        ("format", [part["format"] for part in parts.values()]),
        ("rows", [f"{part['rows']:,}" for part in parts.values()]),
        ("columns", [str(part["columns"]) for part in parts.values()]),
        ("labels", [_labels(part) for part in parts.values()]),
        ("imbalance (max/min)", [str(part.get("imbalance_ratio", "–")) for part in parts.values()]),
        ("missing values", [str(sum(part["missing_values"].values())) for part in parts.values()]),
        (
            "duplicates exact / near",
            [
                f"{part['duplicates']['exact']} / {part['duplicates']['near']}"
                for part in parts.values()
            ],
        ),
    ]
    if any("text_chars" in part for part in parts.values()):
        rows.append(("text chars median / p95", [_chars(part) for part in parts.values()]))
    if any("images" in part for part in parts.values()):
        rows.append(("unreadable images", [_images(part) for part in parts.values()]))
    for label, values in rows:
        table.add_row(label, *values)
    leaks = [
        f"{name[len('leakage_') :]}: {value['exact']} exact, {value['near']} near"
        for name, value in report.items()
        if name.startswith("leakage_")
    ]
    if leaks:
        table.caption = "overlap " + "; ".join(leaks)
    return table


def _findings_table(report: dict[str, Any]) -> Table:
    table = Table(title="findings", header_style="bold", show_lines=False)
    table.add_column("severity")
    table.add_column("check")
    table.add_column("what", overflow="fold")
    table.add_column("fix", overflow="fold")
    findings = report["findings"]
    order = {"fatal": 0, "warning": 1, "info": 2}
    for finding in sorted(findings, key=lambda f: order[f["severity"]]):
        style = SEVERITY_STYLE[finding["severity"]]
        table.add_row(
            f"[{style}]{finding['severity']}[/]",
            finding["check"],
            finding["message"],
            finding["fix"] or "",
        )
    if not findings:
        table.add_row("[green]ok[/]", "", "no problems found", "")
    return table


def _short(path: str) -> str:
    return path if len(path) <= 40 else "…" + path[-39:]


def _labels(part: dict[str, Any]) -> str:
    if "target" in part:
        target = part["target"]
        return f"{target.get('min', 0):.3g}..{target.get('max', 0):.3g}" if target else "–"
    counts = part.get("label_counts", {})
    shown = ", ".join(f"{name}: {count}" for name, count in list(counts.items())[:4])
    return shown + (f", … ({len(counts)} classes)" if len(counts) > 4 else "")


def _chars(part: dict[str, Any]) -> str:
    chars = part.get("text_chars") or {}
    return f"{chars['median']:.0f} / {chars['p95']:.0f}" if chars else "–"


def _images(part: dict[str, Any]) -> str:
    return str(part["images"]["unreadable"]) if "images" in part else "–"
