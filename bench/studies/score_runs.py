"""Score every run a finished sweep kept with `prefixtune evaluate`, and tabulate scores beside costs.

A sweep picks each run's best checkpoint on a small greedy evaluation (`--eval-sources`). The paper
reports the final model on a whole set with beam search and more metrics; this runs `evaluate` on what
each run kept (a prefix folder, a fine-tuned model or a LoRA adapter), with any of its options, writes
`runs/NAME/LABEL.json` (kept when it exists, so an interrupted scoring continues where it stopped) and
`LABEL.md`/`LABEL.json` in the sweep folder: one row a run, its grid values, scores and costs.

    python bench/studies/score_runs.py docs/studies/full --label dev-full \\
        --data ../shared/data/e2e/devset.csv --num-beams 5
    (any further option is evaluate's: --categories, --metrics, --max-sources, --max-new-tokens, ...)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from prefixtune.cli import main as prefixtune

KEPT = {"prefix": "prefix", "finetune": "model", "lora": "adapter"}
COSTS = ("trainable_params", "stored_bytes", "step_time_s", "peak_mem_mb", "seconds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="a finished sweep folder")
    parser.add_argument("--label", required=True, help="name of this scoring, e.g. dev-full or unseen")
    args, evaluate_options = parser.parse_known_args()
    results = args.sweep / "results.json"
    if not results.is_file():
        raise SystemExit(f"{args.sweep} is not a finished sweep (no results.json): run the sweep first")
    plan = json.loads((args.sweep / "sweep.json").read_text(encoding="utf-8"))
    rows = json.loads(results.read_text(encoding="utf-8"))["runs"]
    table = [score(args.sweep, row, plan["fixed"], args.label, evaluate_options) for row in rows]
    (args.sweep / f"{args.label}.json").write_text(
        json.dumps({"evaluate": evaluate_options, "runs": table}, indent=1) + "\n", encoding="utf-8"
    )
    text = markdown(table)
    (args.sweep / f"{args.label}.md").write_text(text, encoding="utf-8")
    print(text)


def score(sweep: Path, row: dict, fixed: dict, label: str, options: list[str]) -> dict:
    method = row.get("method", fixed.get("method", "prefix"))
    folder = sweep / "runs" / row["run"]
    out = folder / f"{label}.json"
    if not out.is_file():
        argv = ["evaluate", "--prefix", str(folder / KEPT[method]), "--output", str(out), *options]
        if method == "prefix":
            argv += ["--base", fixed.get("base", "smollm2-135m")]
        print(f"{row['run']}: prefixtune {' '.join(argv)}", flush=True)
        started = time.perf_counter()
        if prefixtune(argv) != 0:
            raise SystemExit(f"evaluate failed for {folder}")
        scored = json.loads(out.read_text(encoding="utf-8"))  # kept with its time, for a rerun's table
        scored["eval_seconds"] = round(time.perf_counter() - started, 1)
        out.write_text(json.dumps(scored, indent=1) + "\n", encoding="utf-8")
    scored = json.loads(out.read_text(encoding="utf-8"))
    return {
        "run": row["run"],
        "method": method,
        **scored["scores"],
        "eval_seconds": scored.get("eval_seconds"),
        **{k: row.get(k) for k in COSTS},
    }


def markdown(table: list[dict]) -> str:
    metrics = [k for k in table[0] if k not in {"run", "method", "eval_seconds", *COSTS}]
    head = ["run", *metrics, *COSTS]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row in table:
        cells = [row["run"], *(f"{row[m]:.2f}" for m in metrics), *(_cost(k, row[k]) for k in COSTS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cost(name: str, value) -> str:
    if value is None:
        return "-"
    if name == "stored_bytes":
        return f"{value / 2**20:.1f} MB"
    if name == "trainable_params":
        return f"{value:,}"
    return f"{value:g}"


if __name__ == "__main__":
    main()
