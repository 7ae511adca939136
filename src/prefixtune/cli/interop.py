"""`prefixtune import-peft | export-peft`: convert between PEFT prefix-tuning adapters and prefix folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from prefixtune.errors import PrefixTuneError


def setup_import(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "adapter", help="PEFT adapter folder (adapter_config.json + adapter_model.safetensors)"
    )
    parser.add_argument("output", help="new folder for the prefix")
    parser.add_argument(
        "--base",
        help="the base model the adapter was trained on (folder, .gguf file or alias); its shapes are "
        "checked and its fingerprint is stored with the prefix. Default: the adapter's own "
        "base_model_name_or_path, when that is a local folder or an alias",
    )


def run_import(args: argparse.Namespace) -> int:
    from prefixtune.interop.peft import import_peft, read_peft_prefix
    from prefixtune.loading import load_base

    output = Path(args.output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise PrefixTuneError(f"{output} exists and is not an empty folder; choose a new output folder")
    peft = read_peft_prefix(args.adapter)  # a bad adapter fails before the model loads
    named = peft.config.get("base_model_name_or_path")
    base_name = args.base or adapter_base(args.adapter, named)
    base, _ = load_base(base_name)
    model = import_peft(base, args.adapter)
    model.save(output)
    print(
        f"imported a PEFT prefix of length {peft.length} over {peft.layers} layers "
        f"({peft.kv_heads} KV heads x {peft.head_dim}) into {output}, positions shifted as in PEFT"
    )
    if not args.base:
        print(f"checked against the base model {base_name!r}, named by the adapter")
    elif named:
        print(f"the adapter names its base model {named!r}; it was checked against --base {args.base}")
    return 0


def adapter_base(adapter: str, named: str | None) -> str:
    """The base model the adapter names (`base_model_name_or_path`), if prefixtune can load it here:
    a local folder or file, or an alias. Anything else (a Hub id) needs --base: nothing is downloaded."""
    from prefixtune.loading import ALIASES

    if not named:
        raise PrefixTuneError(
            f"{adapter} does not name its base model (no base_model_name_or_path in its config); "
            "pass --base with the model it was trained on"
        )
    if Path(named).expanduser().exists() or named in ALIASES:
        return named
    raise PrefixTuneError(
        f"{adapter} names its base model {named!r}, which is not a local folder or file, nor an alias "
        f"({', '.join(ALIASES)}); prefixtune downloads nothing: get that model and pass --base FOLDER"
    )


def setup_export(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write a prefix folder as a PEFT prefix-tuning adapter. PEFT's forward gives the prefix's outputs; "
        "its generate ignores the prefix on transformers 5.24 and later (PEFT 0.21.2, the newest tested)."
    )
    parser.add_argument("prefix", help="prefix folder (from `prefixtune train` or `import-peft`)")
    parser.add_argument("output", help="new folder for the PEFT adapter")
    parser.add_argument(
        "--allow-position-change",
        action="store_true",
        help='export a prefix trained with positions "keep" anyway (PEFT shifts real tokens by P, so '
        "its outputs will differ)",
    )
    parser.add_argument(
        "--base-model-name-or-path",
        help="what the adapter records as its base model; if not given, the name stored with the prefix",
    )


def run_export(args: argparse.Namespace) -> int:
    import transformers

    from prefixtune.engine.compat import CACHE_KWARG
    from prefixtune.interop.peft import export_peft_folder, read_peft_prefix

    out = export_peft_folder(
        args.prefix,
        args.output,
        allow_position_change=args.allow_position_change,
        base_model_name_or_path=args.base_model_name_or_path,
    )
    peft = read_peft_prefix(out)
    print(
        f"PEFT adapter written to {out} (length {peft.length}, {peft.layers} layers); "
        "load it with peft.PeftModel.from_pretrained(base_model, PATH)"
    )
    if CACHE_KWARG == "cache":
        print(
            f"note: on transformers {transformers.__version__} (5.24 or later) PEFT's generate ignores a "
            "prefix-tuning adapter (PEFT 0.21 passes it as past_key_values, which generate no longer reads) "
            "and gives the bare model's text; PEFT's forward still uses it"
        )
    return 0


COMMANDS = {
    "import-peft": (setup_import, run_import, "convert a PEFT prefix-tuning adapter into a prefix folder"),
    "export-peft": (setup_export, run_export, "convert a prefix folder into a PEFT prefix-tuning adapter"),
}
