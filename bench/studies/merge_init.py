"""Join the two sweeps of the initialisation study into one table and one set of plots.

`random` and `text` cannot share one grid (a random prefix has no init text, so crossing `init` with
`init_text` would train the random runs twice), so the study runs two sweeps; this puts their runs
side by side under one `init` column: `random`, or `text: <the words>`.

    python bench/studies/merge_init.py docs/studies/init-text docs/studies/init-random docs/studies/init
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prefixtune.sweep import write_tables
from prefixtune.sweep.plots import write_plots

AXES = ["init", "max_train_examples", "seed"]


def label(row: dict, fixed: dict) -> str:
    setting = {**fixed, **row}  # a sweep's axes are in its rows, its fixed settings in sweep.json
    return f"text: {setting['init_text']}" if setting["init"] == "text" else setting["init"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", type=Path, help="sweep folders, then the output folder")
    args = parser.parse_args()
    *sweeps, out = args.sweeps
    if not sweeps:
        parser.error("give at least one sweep folder, then the output folder")
    rows = []
    for folder in sweeps:
        missing = [n for n in ("sweep.json", "results.json") if not (folder / n).is_file()]
        if missing:
            raise SystemExit(f"{folder} is not a finished sweep (no {' or '.join(missing)}): run it first")
        fixed = json.loads((folder / "sweep.json").read_text(encoding="utf-8"))["fixed"]
        for row in json.loads((folder / "results.json").read_text(encoding="utf-8"))["runs"]:
            rows.append({**row, "init": label(row, fixed)})
    out.mkdir(parents=True, exist_ok=True)
    paths = list(write_tables(out, rows, AXES).values())
    for metric in ("best_BLEU", "final_dev_loss"):  # BLEU on 40 sources is noisy; the dev loss less so
        paths += write_plots(out, rows, AXES, metric)
    print("wrote", ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
