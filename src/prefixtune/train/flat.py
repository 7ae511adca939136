"""A run's settings, flat: its prefix is one `PrefixConfig` field, its options one per prefix field.

`TrainConfig` and `ClassifyConfig` hold their prefix as one field, `prefix: PrefixConfig`, rather than
restating its fields. On the command line, in `run.json` and on a sweep's `--grid` the prefix's
settings stay flat beside the run's own (`--length 5`, `{"length": 5}`, `--grid length=5,10`): a run
config names the `PrefixConfig` fields it takes as options in `PREFIX_OPTIONS`, its default `prefix`
gives their defaults, and the functions here convert. A dataclass without `PREFIX_OPTIONS`
(`ServeConfig`) is just its fields.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable
from typing import Any

from prefixtune.engine.config import PrefixConfig, default_positions

PREFIX = "prefix"
"""The field of a run config that holds its `PrefixConfig`."""


def options(cls: type) -> list[str]:
    """The flat settings of `cls`, in field order, the prefix's options where its `prefix` field stands."""
    names = [f.name for f in dataclasses.fields(cls)]
    prefix_options = _prefix_options(cls)
    if not prefix_options:
        return names
    at = names.index(PREFIX)
    return [*names[:at], *prefix_options, *names[at + 1 :]]


def hints(cls: type) -> dict[str, Any]:
    """The type of each flat setting (a prefix option's is its `PrefixConfig` field's)."""
    types = {**typing.get_type_hints(PrefixConfig), **typing.get_type_hints(cls)}
    return {name: types[name] for name in options(cls)}


def defaults(cls: type) -> dict[str, Any]:
    """The default of each flat setting (a prefix option's is the run's, from its default `prefix`)."""
    values = {f.name: f.default for f in dataclasses.fields(cls) if f.name != PREFIX}
    if _prefix_options(cls):
        values |= _prefix_settings(_default_prefix(cls), _prefix_options(cls))
    return {name: values[name] for name in options(cls)}


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """`cls` from flat settings (`options`; other keys are ignored), the prefix's among them."""
    names = options(cls)
    settings = {k: v for k, v in data.items() if k in names}
    if _prefix_options(cls):
        given = {k: settings.pop(k) for k in _prefix_options(cls) if k in settings}
        settings[PREFIX] = PrefixConfig(**{**_prefix_settings(_default_prefix(cls)), **given})
    return cls(**settings)


def to_dict(config: Any) -> dict[str, Any]:
    """The flat settings (`options`) of a run config, as `run.json` holds them."""
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    if _prefix_options(type(config)):
        values |= _prefix_settings(values.pop(PREFIX), _prefix_options(type(config)))
    return {name: values[name] for name in options(type(config))}


def replace(config: Any, **changes: Any) -> Any:
    """A copy of a run config with some flat settings changed (`length=5`, `output="runs/b"`)."""
    unknown = sorted(set(changes) - set(options(type(config))))
    if unknown:
        raise TypeError(f"{type(config).__name__} has no setting {', '.join(unknown)}")
    return from_dict(type(config), {**to_dict(config), **changes})


def run_prefix(config: Any) -> PrefixConfig:
    """The prefix a run trains: its `prefix`, seeded with the run's `seed`.

    `init_text` goes only with `init="text"`: a generation run keeps its default text as a setting
    whatever the init (so that `--grid init=random,text` has a text to start from), and a prefix
    started otherwise records none."""
    prefix = config.prefix
    init_text = prefix.init_text if prefix.init == "text" else None
    return prefix.replace(seed=config.seed, init_text=init_text)


def _prefix_options(cls: type) -> tuple[str, ...]:
    return getattr(cls, "PREFIX_OPTIONS", ())


def _default_prefix(cls: type) -> PrefixConfig:
    field = cls.__dataclass_fields__[PREFIX]
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def _prefix_settings(prefix: PrefixConfig, names: Iterable[str] | None = None) -> dict[str, Any]:
    """These fields (default: all) of a prefix as settings: `positions` None where it is its kind's
    default, as when it is not given, so that it follows the kind when another setting changes the
    kind (`--grid kind=prefix,embedding`)."""
    names = [f.name for f in dataclasses.fields(prefix)] if names is None else names
    settings = {name: getattr(prefix, name) for name in names}
    if "positions" in settings and prefix.positions == default_positions(prefix.kind):
        settings["positions"] = None
    return settings
