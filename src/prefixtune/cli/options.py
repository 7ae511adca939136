"""Command-line options generated from a frozen dataclass: its attribute docstrings become `--help`."""

from __future__ import annotations

import argparse
import ast
import inspect
import textwrap
import types
import typing
from typing import Any

from prefixtune.engine.config import parse_layers
from prefixtune.errors import PrefixTuneError, WeightsMismatch
from prefixtune.train import flat

CLI_WEIGHTS_FIX = "pass that base model with --base, or pass --no-check-weights to apply the prefix anyway"

EVALUATE_COLUMNS = ("--source-column", "--target-column")
"""How `evaluate` names the data's two columns; error messages about a missing column name these."""


def attribute_docs(cls: type) -> dict[str, str]:
    """The docstring written under each attribute of a dataclass (read from its source)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, following in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                docs[node.target.id] = " ".join(str(following.value.value).split())
    return docs


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One `--field-name` option per field (a run config's prefix: one per `PREFIX_OPTIONS`, with
    `PREFIX_HELP`; `train.flat`); the default shows in the help."""
    docs = {**attribute_docs(cls), **getattr(cls, "PREFIX_HELP", {})}
    hints, defaults = flat.hints(cls), flat.defaults(cls)
    for name in flat.options(cls):
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        # argparse %-formats help strings: a literal % in a docstring ("16 % faster") must be doubled
        doc = docs.get(name, "")
        help_text = (doc + _default_note(doc, defaults[name])).replace("%", "%%")
        parser.add_argument(
            flag, dest=name, type=_base_type(hints[name]), default=argparse.SUPPRESS, help=help_text
        )


def _default_note(doc: str, default: Any) -> str:
    """ " (default: X)", unless the docstring already says what happens by default or X says nothing."""
    if default in (None, "") or "default" in doc.lower():
        return ""
    return f" (default: {default})"


def dataclass_from_args(cls: type, args: argparse.Namespace, base: dict[str, Any] | None = None):
    """Build `cls` from `base` values overridden by the options the user gave (flat settings)."""
    names = set(flat.options(cls))
    given = {k: v for k, v in vars(args).items() if k in names}
    return flat.from_dict(cls, {**(base or {}), **given})


def _base_type(hint: Any) -> Any:
    """`int | None` -> int; the option then parses that type (None stays the default).

    `tuple[int, ...]` (`layers`) parses comma-separated integers: `--layers 0,1,2`.
    """
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return _layers_option
    return hint


def _layers_option(text: str) -> tuple[int, ...]:
    """`--layers 0,1,2`; a bad value is argparse's usage error (exit 2), with our message."""
    try:
        return parse_layers(text)
    except PrefixTuneError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_check_weights_option(parser: argparse.ArgumentParser) -> None:
    """`--no-check-weights`: what `load_prefix(..., check_weights=False)` is in Python."""
    parser.add_argument(
        "--no-check-weights",
        dest="check_weights",
        action="store_false",
        help="load the prefix even if the base model's weights differ from those it was trained on "
        "(its shapes are still checked)",
    )


def load_prefix_checked(model, path, args: argparse.Namespace, **options):
    """`load_prefix` as the command line calls it: `--no-check-weights` skips the weights check, and a
    mismatch names that flag as the fix (not the Python argument)."""
    from prefixtune import load_prefix

    try:
        return load_prefix(model, path, check_weights=getattr(args, "check_weights", True), **options)
    except WeightsMismatch as err:
        raise err.with_fix(CLI_WEIGHTS_FIX) from None
