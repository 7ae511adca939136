"""`prefixtune serve`: one frozen base model, many prefixes, an OpenAI-compatible HTTP server."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from prefixtune.cli.options import (
    add_check_weights_option,
    add_dataclass_options,
    dataclass_from_args,
    load_prefix_checked,
)
from prefixtune.errors import PrefixTuneError

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
    add_check_weights_option(parser)
    add_dataclass_options(parser, ServeConfig)


def parse_prefixes(items: list[str], base_name: str) -> dict[str, Path]:
    """`["e2e=runs/e2e/prefix", ...]` -> {"e2e": Path(...)}, with every folder checked before loading."""
    from prefixtune.storage import read_meta

    prefixes: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise PrefixTuneError(f"--prefix {item!r}: write it as NAME=PATH, e.g. --prefix e2e=runs/e2e")
        if name in prefixes or name == base_name:
            raise PrefixTuneError(f"--prefix: the name {name!r} is used twice; give each prefix its own name")
        read_meta(Path(path))  # a bad folder fails now, not after the base model has loaded
        prefixes[name] = Path(path)
    return prefixes


def run_serve(args: argparse.Namespace) -> int:
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise PrefixTuneError(f"serving needs {' and '.join(missing)}: pip install 'prefixtune[serve]'")
    import uvicorn

    from prefixtune.api import wrap
    from prefixtune.loading import load_base
    from prefixtune.serve import ServeConfig, create_app

    key = os.environ.get(API_KEY_VARIABLE) or None
    config = dataclass_from_args(ServeConfig, args, base={"api_key": key})
    base_name = args.base_name or Path(args.base).name
    prefixes = parse_prefixes(args.prefix, base_name)
    base, tokenizer = load_base(args.base)
    model = wrap(base)
    for name, path in prefixes.items():
        load_prefix_checked(model, path, args, name=name)
    if config.host not in _LOOPBACK and config.api_key is None:
        print(
            f"warning: listening on {config.host} without an API key: anyone who can reach it can use "
            f"it and load files; set {API_KEY_VARIABLE}",
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
