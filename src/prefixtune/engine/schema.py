"""The schema of `prefix_config.json`: each field's type and range, checked when a prefix folder is read.

A hand-edited or damaged file would otherwise fail far from its cause (a `TypeError` deep in loading,
or "the prefix has 2 KV heads, the model 2" for a `"2"` in quotes). Here it fails once, naming the
file, the field, what it holds and what it should hold.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from prefixtune.engine.config import INITS, KINDS, POSITIONS, PrefixConfig
from prefixtune.engine.errors import PrefixTuneError

SLOT_KINDS = ("self", "decoder", "cross")


@dataclass(frozen=True)
class Rule:
    """What one field must hold."""

    accepts: Callable[[Any], bool]
    expected: str
    """Said to the user: "it should hold {expected}"."""
    kind: type | tuple[type, ...]
    """The JSON type it is written as; a value of another type is shown with its type ("2" (text))."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(low: int) -> Rule:
    return Rule(lambda v: _is_int(v) and v >= low, f"a whole number from {low} up", int)


def _choice(choices: tuple[str, ...]) -> Rule:
    return Rule(lambda v: v in choices, "one of " + ", ".join(json.dumps(c) for c in choices), str)


def _optional(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule.accepts(v), f"null or {rule.expected}", rule.kind)


_TEXT = Rule(lambda v: isinstance(v, str), "text", str)
_OBJECT = Rule(lambda v: isinstance(v, dict), "an object", dict)
_NUMBERS = Rule(
    lambda v: isinstance(v, list) and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v),
    "a list of numbers",
    list,
)
_LAYERS = Rule(
    lambda v: isinstance(v, list) and all(_is_int(i) for i in v),
    "a list of layer indices (whole numbers)",
    list,
)
_SLOTS = Rule(lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list of attention layers", list)


def _config_rules() -> dict[str, Rule]:
    from prefixtune.engine.reparam import REPARAMS  # late: reparam imports torch modules

    return {
        "length": _optional(_count(1)),
        "reparam": _choice(tuple(sorted(REPARAMS))),
        "mlp_hidden": _count(1),
        "init": _choice(INITS),
        "init_text": _optional(_TEXT),
        "positions": _optional(_choice(POSITIONS)),
        "kind": _choice(KINDS),
        "layers": _optional(_LAYERS),
        "seed": _optional(_count(0)),
    }


# (rule, required) per field; optional fields may be absent (files written before they existed)
TOP = MappingProxyType(
    {
        "format_version": (_count(0), False),
        "config": (_OBJECT, True),
        "length": (_count(1), True),
        "positions": (_choice(POSITIONS), True),
        "slots": (_SLOTS, True),
        "base": (_OBJECT, True),
    }
)
SLOT = MappingProxyType(
    {
        "name": (_TEXT, True),
        "kv_heads": (_count(1), True),
        "head_dim": (_count(1), True),
        "heads": (_count(1), True),
        "kind": (_choice(SLOT_KINDS), False),
    }
)
BASE = MappingProxyType(
    {
        "architecture": (_optional(_TEXT), False),
        "model_type": (_optional(_TEXT), False),
        "name_or_path": (_optional(_TEXT), False),
        "slots": (_optional(_count(1)), False),
        "weights_sample": (_NUMBERS, False),
    }
)


def check_meta(meta: dict[str, Any], file: Path) -> None:
    """Raise one PrefixTuneError for the first field of `meta` (read from `file`) that is wrong."""
    _check_fields(meta, TOP, "", file)
    _check_fields(meta["config"], {k: (r, False) for k, r in _config_rules().items()}, "config.", file)
    for i, slot in enumerate(meta["slots"]):
        where = f"slots[{i}]"
        _check_value(slot, _OBJECT, where, file)
        _check_fields(slot, SLOT, f"{where}.", file)
    _check_fields(meta["base"], BASE, "base.", file)
    try:  # each field is of the right type; now the combination (e.g. an infix takes no positions)
        PrefixConfig.from_dict(meta["config"])
    except PrefixTuneError as err:
        raise PrefixTuneError(f"{file}: config: {err}. {_FIX}") from None


def _check_fields(
    data: dict[str, Any], rules: Mapping[str, tuple[Rule, bool]], where: str, file: Path
) -> None:
    for name, (rule, required) in rules.items():
        if name not in data:
            if required:
                owner = f"{file}: {where.rstrip('.')}" if where else str(file)
                raise PrefixTuneError(f"{owner} lacks the field {name!r}. {_FIX}")
            continue
        _check_value(data[name], rule, where + name, file)


def _check_value(value: Any, rule: Rule, where: str, file: Path) -> None:
    if not rule.accepts(value):
        raise PrefixTuneError(
            f"{file}: {where} holds {_show(value, rule)}; it should hold {rule.expected}. {_FIX}"
        )


_FIX = "Correct that field, or save the prefix again with prefixtune."
_TYPE_NAMES = MappingProxyType({str: "text", list: "a list", dict: "an object"})


def _show(value: Any, rule: Rule) -> str:
    shown = json.dumps(value)
    if value is None or isinstance(value, rule.kind) or type(value) not in _TYPE_NAMES:
        return shown
    return f"{shown} ({_TYPE_NAMES[type(value)]})"
