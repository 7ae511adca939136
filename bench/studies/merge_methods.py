"""Join sweeps that trained different methods into one table and one set of plots, by `method`.

A study may compare runs of several sweeps: the low-data study sets the fine-tuning runs beside the
initialisation study's prefix runs of the same settings (same examples per seed, steps, schedule and
evaluation). Each row gets its `method` and every other column of `--axes` from its sweep (a grid
axis or a fixed setting), so a sweep that fixed `kind=prefix` or `seed=0` joins one that varied them;
`--only KEY=A,B` keeps the rows whose setting KEY is A or B.

    python bench/studies/merge_methods.py docs/studies/init-text docs/studies/lowdata-finetune \\
        docs/studies/lowdata --only "init_text=table-to-text:" --axes method,max_train_examples,seed
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prefixtune.sweep import write_tables
from prefixtune.sweep.plots import write_plots


def sweep_rows(folder: Path) -> list[tuple[dict, dict]]:
    """Each run of a finished sweep: (its row, its full setting: the sweep's fixed settings and axes)."""
    missing = [n for n in ("sweep.json", "results.json") if not (folder / n).is_file()]
    if missing:
        raise SystemExit(f"{folder} is not a finished sweep (no {' or '.join(missing)}): run it first")
    fixed = json.loads((folder / "sweep.json").read_text(encoding="utf-8"))["fixed"]
    runs = json.loads((folder / "results.json").read_text(encoding="utf-8"))["runs"]
    return [(row, {**fixed, **row}) for row in runs]


def write_merged(out: Path, rows: list[dict], axes: list[str]) -> None:
    """The tables and plots of `rows`, as a sweep writes its own."""
    out.mkdir(parents=True, exist_ok=True)
    paths = list(write_tables(out, rows, axes).values())
    for metric in ("best_BLEU", "final_dev_loss"):  # BLEU on 40 sources is noisy; the dev loss less so
        paths += write_plots(out, rows, axes, metric)
    print("wrote", ", ".join(str(p) for p in paths))


def rows_of(folder: Path, only: dict[str, set[str]], axes: list[str]) -> list[dict]:
    return [
        {**row, **{axis: setting.get(axis) for axis in axes}, "method": setting.get("method", "prefix")}
        for row, setting in sweep_rows(folder)
        if all(str(setting.get(key)) in values for key, values in only.items())
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", type=Path, help="sweep folders, then the output folder")
    parser.add_argument(
        "--axes", required=True, help="the table's columns, e.g. method,max_train_examples,seed"
    )
    parser.add_argument(
        "--only", action="append", default=[], help="KEY=VALUE[,VALUE...]: keep only these rows"
    )
    args = parser.parse_args()
    *sweeps, out = args.sweeps
    if not sweeps:
        parser.error("give at least one sweep folder, then the output folder")
    only = {key: set(values.split(",")) for key, values in (spec.split("=", 1) for spec in args.only)}
    axes = args.axes.split(",")
    rows = [row for folder in sweeps for row in rows_of(folder, only, axes)]
    write_merged(out, rows, axes)


if __name__ == "__main__":
    main()
