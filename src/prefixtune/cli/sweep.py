"""`prefixtune sweep`: train over a grid of settings; write a results table and plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from prefixtune.cli.options import add_dataclass_options, dataclass_from_args
from prefixtune.train.config import TrainConfig

EPILOG = """examples:
  prefixtune sweep --train e2e/trainset.csv --dev e2e/devset.csv --output runs/length \\
      --steps 300 --grid length=1,5,10,20,40 --grid seed=0,1,2
  prefixtune sweep ... --grid max_train_examples=50,100,200,500 --grid init=random,text --grid seed=0,1,2

Every training option below is a fixed setting of all runs unless a --grid varies it. Results are
averaged over the `seed` axis (mean and standard deviation). Runs a finished sweep already holds are
kept; an interrupted sweep continues where it stopped when started again with the same command."""


def setup_sweep(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--grid",
        action="append",
        required=True,
        metavar="NAME=V1,V2,...",
        help="a training setting and its values (repeat for more axes; split on | if a value holds commas)",
    )
    parser.add_argument("--output", required=True, help="sweep folder: runs/, results.*, summary.*, *.png")
    parser.add_argument(
        "--metric", default="best_BLEU", help="metric the plots show (a column of results.csv)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_dataclass_options(parser, TrainConfig, skip=("output",))


def run_sweep(args: argparse.Namespace) -> int:
    from prefixtune.sweep import check_folder, expand, open_sweep, parse_axes

    axes = parse_axes(args.grid)
    fixed = dataclass_from_args(TrainConfig, args)
    points = expand(axes, fixed)
    folder = Path(args.output)
    fixed_settings = {k: v for k, v in fixed.to_dict().items() if k not in axes and k != "output"}
    check_folder(folder, axes, fixed_settings)  # before anything is created
    lock = open_sweep(folder, axes, fixed_settings)
    try:
        return _sweep(points, folder, axes, args)
    finally:
        lock.release()


def _sweep(points, folder: Path, axes: dict, args: argparse.Namespace) -> int:
    from prefixtune.sweep import run_points, write_tables
    from prefixtune.sweep.plots import write_plots

    print(f"sweep of {len(points)} runs into {folder}: " + ", ".join(f"{k} {v}" for k, v in axes.items()))
    try:
        rows = run_points(points, folder, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"interrupted; run the same command again to continue the sweep in {folder}")
        return 130
    tables = write_tables(folder, rows, list(axes))
    plots = write_plots(folder, rows, list(axes), args.metric)
    print(tables["summary.md"].read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in [*tables.values(), *plots]))
    return 0


COMMANDS = {"sweep": (setup_sweep, run_sweep, "train over a grid of settings; write tables and plots")}
