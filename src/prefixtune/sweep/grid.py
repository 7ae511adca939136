"""A grid of training settings: `--grid length=1,5,10 --grid seed=0,1,2` -> one TrainConfig per point.

Each axis names a `TrainConfig` setting as the command line does (`length`, `seed`: `TrainConfig.options`);
values are parsed with the setting's type. Values are split on `|` when the text holds one (so that a
value may contain commas: `init_text=a, b|c, d`), else on `,`. `none` stands for None where the
setting allows it.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import types
import typing
from typing import Any

from prefixtune.engine.config import parse_layers
from prefixtune.errors import PrefixTuneError
from prefixtune.train import flat
from prefixtune.train.config import TrainConfig

NOT_AXES = ("output",)  # each run gets its own folder inside the sweep's


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of the sweep: the grid values that make it, and its full training config."""

    values: dict[str, Any]
    config: TrainConfig

    @property
    def name(self) -> str:
        """A folder name that says the settings, e.g. `length=5,seed=1`."""
        text = ",".join(f"{k}={_short(v)}" for k, v in self.values.items())
        return re.sub(r"[^\w.,=+-]", "_", text)[:150] or "run"


def parse_axes(specs: list[str]) -> dict[str, list[Any]]:
    """`["length=1,5", "init=random,text"]` -> {"length": [1, 5], "init": ["random", "text"]}."""
    hints = flat.hints(TrainConfig)
    fields = sorted(name for name in TrainConfig.options() if name not in NOT_AXES)
    axes: dict[str, list[Any]] = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not text.strip():
            raise PrefixTuneError(f"--grid {spec!r}: write NAME=VALUE1,VALUE2,..., e.g. --grid length=5,10")
        if name not in fields:
            raise PrefixTuneError(
                f"--grid {spec!r}: {name!r} is not a training setting; choose from {fields}"
            )
        if name in axes:
            raise PrefixTuneError(f"--grid names {name!r} twice; give all its values in one --grid")
        parts = text.split("|") if "|" in text else text.split(",")
        values = [_parse(name, hints[name], part.strip()) for part in parts]
        if len(set(map(repr, values))) != len(values):
            raise PrefixTuneError(f"--grid {spec!r} repeats a value")
        axes[name] = values
    if not axes:
        raise PrefixTuneError("no --grid given: name at least one setting to vary, e.g. --grid length=5,10")
    return axes


def expand(axes: dict[str, list[Any]], fixed: TrainConfig) -> list[Point]:
    """Every combination of the axes' values (the last axis varies fastest), each a TrainConfig."""
    points = []
    for combo in itertools.product(*axes.values()):
        values = dict(zip(axes, combo, strict=True))
        points.append(Point(values, fixed.replace(**values)))  # TrainConfig validates each point
    return points


def _parse(name: str, hint: Any, text: str) -> Any:
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = typing.get_args(hint)
        optional = type(None) in args
        hint = next(a for a in args if a is not type(None))
    if optional and text.lower() == "none":
        return None
    if typing.get_origin(hint) is tuple:  # `layers`: --grid "layers=0|0,1|none" (split on |)
        return parse_layers(text)
    try:
        return hint(text)
    except ValueError:
        raise PrefixTuneError(f"--grid {name}: {text!r} is not a valid {hint.__name__}") from None


def _short(value: Any) -> str:
    if isinstance(value, tuple):  # layers=(0, 1) -> "0+1"
        return "+".join(map(str, value))
    if isinstance(value, str) and "/" in value:  # a file path: its name says enough
        value = value.rstrip("/").rsplit("/", 1)[-1]
    return str(value)
