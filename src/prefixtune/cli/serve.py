"""`prefixtune serve`: one frozen base model, many prefixes, an OpenAI-compatible HTTP server."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from prefixtune.cli.options import (
    CLI_WEIGHTS_FIX,
    add_check_weights_option,
    add_dataclass_options,
    attribute_docs,
    dataclass_from_args,
)
from prefixtune.errors import PrefixTuneError, WeightsMismatch

API_KEY_VARIABLE = "PREFIXTUNE_API_KEY"
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def setup_serve(parser: argparse.ArgumentParser) -> None:
    from prefixtune.serve.config import ServeConfig

    parser.add_argument("--base", default="smollm2-135m", help="base model: folder, .gguf file or alias")
    parser.add_argument(
        "--prefix",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="serve the prefix folder PATH as the model NAME (repeat for more prefixes)",
    )
    parser.add_argument(
        "--base-name", help="the model name of the base model without a prefix; unset: --base's name"
    )
    parser.add_argument(
        "--prefix-root",
        dest="prefix_roots",
        action="append",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help=attribute_docs(ServeConfig)["prefix_roots"] + " (repeat for more folders; default: none)",
    )
    add_check_weights_option(parser)
    add_dataclass_options(parser, ServeConfig, skip=("prefix_roots",))


def parse_prefixes(items: list[str], base_name: str) -> dict[str, Path]:
    """`["e2e=runs/e2e/prefix", ...]` -> {"e2e": Path(...)}, with every folder checked before loading."""
    from prefixtune.engine.storage import read_meta
    from prefixtune.serve.config import name_problem
    from prefixtune.serve.prefixes import check_servable

    prefixes: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise PrefixTuneError(f"--prefix {item!r}: write it as NAME=PATH, e.g. --prefix e2e=runs/e2e")
        if name_problem(name):
            raise PrefixTuneError(f"--prefix {item!r}: {name_problem(name)}")
        if name in prefixes or name == base_name:
            raise PrefixTuneError(f"--prefix: the name {name!r} is used twice; give each prefix its own name")
        read_meta(Path(path))  # a bad folder fails now, not after the base model has loaded
        check_servable(Path(path))
        prefixes[name] = Path(path)
    return prefixes


def run_serve(args: argparse.Namespace) -> int:
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise PrefixTuneError(f"serving needs {' and '.join(missing)}: pip install 'prefixtune[serve]'")
    import uvicorn

    from prefixtune.engine.wrap import wrap
    from prefixtune.loading import load_base
    from prefixtune.serve import ServeConfig, create_app
    from prefixtune.serve.prefixes import load_for_serving, resolve_roots

    key = os.environ.get(API_KEY_VARIABLE) or None
    config = dataclass_from_args(ServeConfig, args, base={"api_key": key})
    base_name = args.base_name or Path(args.base).name
    prefixes = parse_prefixes(args.prefix, base_name)
    resolve_roots(config.prefix_roots)  # a missing folder fails now, not after the base model has loaded
    base, tokenizer = load_base(args.base)
    model = wrap(base)
    for name, path in prefixes.items():
        try:
            load_for_serving(model, path, name, check_weights=args.check_weights)
        except WeightsMismatch as err:
            raise err.with_fix(CLI_WEIGHTS_FIX) from None
    if config.host not in _LOOPBACK and config.api_key is None:
        loading = f" and load prefixes from {', '.join(config.prefix_roots)}" if config.prefix_roots else ""
        print(
            f"warning: listening on {config.host} without an API key: anyone who can reach it can use "
            f"it{loading}; set {API_KEY_VARIABLE}",
            file=sys.stderr,
        )
    served = ", ".join([base_name, *prefixes]) or base_name
    print(f"serving {served} on http://{config.host}:{config.port}/v1", flush=True)
    uvicorn.run(create_app(model, tokenizer, config, base_name), host=config.host, port=config.port)
    return 0


COMMANDS = {
    "serve": (
        setup_serve,
        run_serve,
        "serve prefixes on one frozen model through an OpenAI-compatible HTTP API (/v1/completions)",
    ),
}
