"""The paper's ladder in one plot: written prompts on the frozen model, then trained prompts and prefixes.

Reads the three `evaluate` outputs of the prompting study (bare, instruction, few-shot) and a kind sweep
(its `results.json`; `kind-3seeds` has three seeds), and draws dev BLEU on the same 40 sources for each
rung, trained rungs as mean ± std over their seeds:

    python bench/studies/ladder.py docs/studies/prompting docs/studies/kind-3seeds
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

PROMPTS = {"bare": "source alone", "instruction": "instruction", "few-shot": "instruction\n+ 3 examples"}
TRAINED = ("embedding", "prefix")  # the kind study's rungs above the written prompts, in the paper's order


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"cannot read {path}: {err}; run the study that writes it first") from None


def rungs(prompting: Path, kind: Path) -> list[tuple[str, float, float, int]]:
    """(label, BLEU, std, runs) for each rung, lowest first."""
    out = [
        (label, _read(prompting / f"{name}.json")["scores"]["BLEU"], 0.0, 1)
        for name, label in PROMPTS.items()
    ]
    runs = _read(kind / "results.json")["runs"]
    for name in TRAINED:
        for length in sorted({r["length"] for r in runs if r.get("kind") == name}):
            scores = [r["best_BLEU"] for r in runs if r.get("kind") == name and r["length"] == length]
            std = statistics.stdev(scores) if len(scores) > 1 else 0.0
            out.append((f"{name}\nlength {length}", statistics.mean(scores), std, len(scores)))
    return out


def plot(rows: list[tuple[str, float, float, int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colours = ["tab:gray"] * len(PROMPTS) + ["tab:blue"] * (len(rows) - len(PROMPTS))
    xs = range(len(rows))
    ax.bar(
        xs,
        [r[1] for r in rows],
        yerr=[r[2] if r[3] > 1 else float("nan") for r in rows],
        capsize=4,
        color=colours,
    )
    ax.set_xticks(list(xs), labels=[r[0] for r in rows], fontsize=8)
    for x, (_, bleu, _, n) in zip(xs, rows, strict=True):
        ax.annotate(
            f"{bleu:.1f}" + (f"\n({n} seeds)" if n > 1 else ""),
            (x, bleu),
            ha="center",
            va="bottom",
            fontsize=7,
            xytext=(0, 3),
            textcoords="offset points",
        )
    ax.set_ylabel("dev BLEU, 40 sources, greedy")
    ax.set_title("frozen SmolLM2-135M: written prompts (grey) against 150 trained steps (blue)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "prompting", type=Path, help="the prompting study's folder (bare/instruction/few-shot.json)"
    )
    parser.add_argument("kind", type=Path, help="a kind sweep's folder (results.json)")
    args = parser.parse_args()
    path = args.prompting / "ladder.png"
    plot(rungs(args.prompting, args.kind), path)
    print("wrote", path)


if __name__ == "__main__":
    main()
