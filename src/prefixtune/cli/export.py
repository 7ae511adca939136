"""`prefixtune export --to transformers | llama.cpp`: run a trained prefix without prefixtune."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prefixtune.cli.options import add_dataclass_options, dataclass_from_args
from prefixtune.errors import PrefixTuneError
from prefixtune.export.llamacpp import LlamaCppOptions

TARGETS = ("transformers", "llama.cpp")


def setup_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prefix", help="prefix folder (from `prefixtune train`)")
    parser.add_argument(
        "output",
        help="file to write: KV-cache tensors (.safetensors) for transformers; a sequence state (.ggsq) "
        "for llama.cpp, with its token ids in a .json beside it",
    )
    parser.add_argument("--to", choices=TARGETS, required=True, help="the engine that will run the prefix")
    parser.add_argument(
        "--base",
        help="the base model the prefix was trained on (folder, .gguf file or alias); default: --gguf "
        "for llama.cpp, else smollm2-135m",
    )
    parser.add_argument(
        "--gguf",
        help="llama.cpp: the GGUF model file the state is for; its weights must be the prefix's base model's",
    )
    group = parser.add_argument_group(
        "llama.cpp context settings (the state loads only into a context set up the same way)"
    )
    add_dataclass_options(group, LlamaCppOptions, skip=("flash_attn",))
    group.add_argument(
        "--flash-attn",
        action="store_true",
        help="the state is for llama.cpp run with flash attention on (-fa on): V stored untransposed "
        "(v_trans 0). Without it, for flash attention off (v_trans 1); a mismatch is refused on restore",
    )


def run_export(args: argparse.Namespace) -> int:
    from prefixtune import load_base, load_prefix
    from prefixtune.export import to_llamacpp, to_transformers

    if args.to == "llama.cpp" and not args.gguf:
        raise PrefixTuneError("--to llama.cpp needs --gguf MODEL.gguf: the model file llama.cpp will run")
    output = Path(args.output)
    base_name = args.base or (args.gguf if args.to == "llama.cpp" else "smollm2-135m")
    base, _ = load_base(base_name)
    model = load_prefix(base, args.prefix)  # refuses a base whose fingerprint is not the prefix's
    if args.to == "transformers":
        path = to_transformers(model, output)
        print(f"KV cache of the prefix written to {path}; see the README for the plain-transformers snippet")
        return 0
    options = dataclass_from_args(LlamaCppOptions, args)
    path = to_llamacpp(model, args.gguf, output, options=options)
    sidecar = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    print(
        f"llama.cpp state written to {path} ({sidecar['length']} cells, KV {options.kv_type}, "
        f"flash attention {'on' if options.flash_attn else 'off'}); send the token ids in "
        f"{path.with_suffix('.json').name} before each prompt"
    )
    return 0


COMMANDS = {
    "export": (setup_export, run_export, "export a prefix to plain transformers or to llama.cpp"),
}
