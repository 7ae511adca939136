"""`prefixtune sweep`: a grid of training runs, reduced to tables and plots (the paper's ablations)."""

from prefixtune.sweep.grid import Point, expand, parse_axes
from prefixtune.sweep.run import check_folder, open_sweep, run_points
from prefixtune.sweep.tables import aggregate, write_tables

__all__ = [
    "Point",
    "aggregate",
    "check_folder",
    "expand",
    "open_sweep",
    "parse_axes",
    "run_points",
    "write_tables",
]
