"""Join the two sweeps of the initialisation study into one table and one set of plots.

`random` and `text` cannot share one grid (a random prefix has no init text, so crossing `init` with
`init_text` would train the random runs twice), so the study runs two sweeps; this puts their runs
side by side under one `init` column: `random`, or `text: <the words>`.

    python bench/studies/merge_init.py docs/studies/init-text docs/studies/init-random docs/studies/init
"""

from __future__ import annotations

import argparse
from pathlib import Path

from merge_methods import sweep_rows, write_merged

AXES = ["init", "max_train_examples", "seed"]


def label(setting: dict) -> str:
    return f"text: {setting['init_text']}" if setting["init"] == "text" else setting["init"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", type=Path, help="sweep folders, then the output folder")
    args = parser.parse_args()
    *sweeps, out = args.sweeps
    if not sweeps:
        parser.error("give at least one sweep folder, then the output folder")
    rows = [{**row, "init": label(setting)} for folder in sweeps for row, setting in sweep_rows(folder)]
    write_merged(out, rows, AXES)


if __name__ == "__main__":
    main()
