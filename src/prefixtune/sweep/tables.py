"""A sweep's results as tables: every run (JSON, CSV), and the mean and spread over seeds (CSV, Markdown)."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

METRICS = ("best_BLEU", "final_BLEU", "final_dev_loss", "train_loss", "train_loss_std")
SIZES = (
    "trainable_params",
    "stored_params",
    "stored_bytes",
    "prefix_bytes",
    "step_time_s",
    "peak_mem_mb",
    "seconds",
)
"""What a run costs: the same for every seed of a setting, but times and memory (averaged)."""
AVERAGED = frozenset({"step_time_s", "peak_mem_mb", "seconds"})
REPEAT_AXES = ("seed",)
"""Axes whose values are repetitions, not settings: results are averaged over them."""


def aggregate(rows: list[dict[str, Any]], axes: list[str]) -> list[dict[str, Any]]:
    """One row per setting (the axes but the seed): mean, standard deviation and count of each metric."""
    settings = [a for a in axes if a not in REPEAT_AXES]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(repr(row.get(a)) for a in settings), []).append(row)
    table = []
    for members in groups.values():
        out: dict[str, Any] = {a: members[0].get(a) for a in settings}
        out["runs"] = len(members)
        for metric in METRICS:
            values = [m[metric] for m in members if m.get(metric) is not None]
            if values:
                out[f"{metric}_mean"] = statistics.fmean(values)
                out[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        for size in SIZES:
            values = [m[size] for m in members if m.get(size) is not None]
            if values:
                out[size] = statistics.fmean(values) if size in AVERAGED else values[0]
        table.append(out)
    return table


def write_tables(folder: Path, rows: list[dict[str, Any]], axes: list[str]) -> dict[str, Path]:
    """results.json and results.csv (every run), summary.csv and summary.md (over seeds)."""
    summary = aggregate(rows, axes)
    paths = {
        "results.json": folder / "results.json",
        "results.csv": folder / "results.csv",
        "summary.csv": folder / "summary.csv",
        "summary.md": folder / "summary.md",
    }
    paths["results.json"].write_text(json.dumps({"runs": rows, "summary": summary}, indent=1) + "\n")
    _write_csv(paths["results.csv"], [{k: v for k, v in r.items() if k != "loss_curve"} for r in rows])
    _write_csv(paths["summary.csv"], summary)
    paths["summary.md"].write_text(markdown(summary, axes), encoding="utf-8")
    return paths


def markdown(summary: list[dict[str, Any]], axes: list[str]) -> str:
    """A Markdown table: the settings, then `mean ± std` of each metric, then sizes."""
    settings = [a for a in axes if a not in REPEAT_AXES]
    metrics = [m for m in METRICS if any(f"{m}_mean" in r for r in summary)]
    sizes = [s for s in SIZES if any(s in r for r in summary)]
    header = [*settings, "runs", *metrics, *sizes]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(settings) + "---:|" * (len(header) - len(settings)),
    ]
    for row in summary:
        cells = [str(row.get(a)) for a in settings] + [str(row["runs"])]
        for m in metrics:
            mean, std = row.get(f"{m}_mean"), row.get(f"{m}_std")
            cells.append(
                "" if mean is None else f"{mean:.2f} ± {std:.2f}" if row["runs"] > 1 else f"{mean:.2f}"
            )
        cells += [_size(s, row.get(s)) for s in sizes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _size(name: str, value: Any) -> str:
    if value is None:
        return ""
    if name in ("prefix_bytes", "stored_bytes"):
        return f"{value / 1024:.0f} KB" if value < 10 * 2**20 else f"{value / 2**20:.0f} MB"
    if name == "seconds":
        return f"{value:.0f} s"
    if name == "step_time_s":
        return f"{value:.3f} s"
    if name == "peak_mem_mb":
        return f"{value:.0f} MB"
    return f"{int(value):,}"


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
