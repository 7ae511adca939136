"""Plot what `score_runs.py` wrote: one panel a metric, a group of bars a scoring, a bar a run.

python bench/studies/plot_scores.py docs/studies/unseen seen unseen    # -> unseen/scores_seen_unseen.png
python bench/studies/plot_scores.py docs/studies/full dev-full         # -> full/scores_dev-full.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NOT_METRICS = {"eval_seconds", "trainable_params", "stored_bytes", "step_time_s", "peak_mem_mb", "seconds"}
LOWER_IS_BETTER = {"TER"}


def read_scoring(sweep: Path, label: str) -> list[dict]:
    path = sweep / f"{label}.json"
    try:
        runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise SystemExit(
            f"cannot read {path} ({err}): score the sweep first with bench/studies/score_runs.py "
            f"{sweep} --label {label} ..."
        ) from None
    if not runs:
        raise SystemExit(f"{path} holds no scored runs: has the sweep finished any?")
    return runs


def metrics_of(runs: list[dict]) -> list[str]:
    """The scores a scoring holds, in its own order: numeric columns that are not costs."""
    first = runs[0]
    return [k for k, v in first.items() if isinstance(v, int | float) and k not in NOT_METRICS]


def plot(scorings: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(scorings)
    metrics = metrics_of(scorings[labels[0]])
    runs = [r["run"] for r in scorings[labels[0]]]
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.2 + 2.3 * len(metrics), 3.6), squeeze=False)
    width = 0.8 / len(runs)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for i, run in enumerate(runs):
            values = [next(r[metric] for r in scorings[label] if r["run"] == run) for label in labels]
            xs = [g + (i - (len(runs) - 1) / 2) * width for g in range(len(labels))]
            bars = ax.bar(xs, values, width, label=run)
            ax.bar_label(bars, fmt="%.1f" if max(values) >= 10 else "%.2f", fontsize=6)
        ax.set_xticks(range(len(labels)), labels=labels, fontsize=8)
        ax.set_title(metric + (" (lower is better)" if metric in LOWER_IS_BETTER else ""), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="a sweep folder that score_runs.py has scored")
    parser.add_argument("labels", nargs="+", help="the --label of each scoring to draw, e.g. seen unseen")
    args = parser.parse_args()
    scorings = {label: read_scoring(args.sweep, label) for label in args.labels}
    runs = {label: sorted(r["run"] for r in rows) for label, rows in scorings.items()}
    if len({tuple(r) for r in runs.values()}) > 1:
        raise SystemExit(f"the scorings hold different runs ({runs}): score every run under each label")
    path = args.sweep / f"scores_{'_'.join(args.labels)}.png"
    plot(scorings, path)
    print("wrote", path)


if __name__ == "__main__":
    main()
