"""A sweep's plots (PNG): the metric against each setting varied, and every run's training loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefixtune.sweep.tables import REPEAT_AXES, aggregate


def write_plots(folder: Path, rows: list[dict[str, Any]], axes: list[str], metric: str) -> list[Path]:
    """`METRIC_by_AXIS.png` per setting varied (mean ± std over seeds), and `loss_curves.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    summary = aggregate(rows, axes)
    settings = [a for a in axes if a not in REPEAT_AXES]
    for axis in settings:
        others = [a for a in settings if a != axis]
        fig, ax = plt.subplots(figsize=(6, 4))
        series: dict[str, list[dict]] = {}
        for row in summary:
            label = ", ".join(f"{a}={row[a]}" for a in others) or metric
            series.setdefault(label, []).append(row)
        numeric = all(isinstance(r[axis], int | float) and not isinstance(r[axis], bool) for r in summary)
        for label, members in series.items():
            members = [m for m in members if f"{metric}_mean" in m]
            if not members:
                continue
            xs = [m[axis] if numeric else str(m[axis]) for m in members]
            ys = [m[f"{metric}_mean"] for m in members]
            errs = [m.get(f"{metric}_std", 0.0) for m in members]
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=4, label=label)
        if numeric and _spread(summary, axis) >= 8:
            ax.set_xscale("log", base=2)
            ticks = sorted({r[axis] for r in summary if r[axis] > 0})
            ax.set_xticks(ticks, labels=[f"{t:g}" for t in ticks])  # the grid's own values, not 2^k
            ax.minorticks_off()
        ax.set_xlabel(axis)
        ax.set_ylabel(f"{metric} (mean ± std over {', '.join(REPEAT_AXES)})")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = folder / f"{metric}_by_{axis}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    paths.append(_loss_curves(folder, rows, settings, plt))
    return paths


def _loss_curves(folder: Path, rows: list[dict[str, Any]], settings: list[str], plt) -> Path:
    """Each run's training loss (a moving average), one colour per setting, seeds in the same colour."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours: dict[str, str] = {}
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row in rows:
        curve = row.get("loss_curve") or []
        if not curve:
            continue
        label = ", ".join(f"{a}={row.get(a)}" for a in settings) or "run"
        first = label not in colours
        colour = colours.setdefault(label, palette[len(colours) % len(palette)])
        ax.plot(
            range(1, len(curve) + 1), _smooth(curve), color=colour, alpha=0.8, label=label if first else None
        )
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (moving average)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = folder / "loss_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _smooth(values: list[float]) -> list[float]:
    window = max(1, len(values) // 25)
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _spread(summary: list[dict[str, Any]], axis: str) -> float:
    values = [r[axis] for r in summary if isinstance(r[axis], int | float) and r[axis] > 0]
    return max(values) / min(values) if values else 0.0
