"""`prefixtune train | evaluate | generate | fold | info`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prefixtune.cli import classify
from prefixtune.cli.options import (
    EVALUATE_COLUMNS,
    add_check_weights_option,
    add_dataclass_options,
    dataclass_from_args,
    load_prefix_checked,
)
from prefixtune.cli.prompting import add_prompt_options, prompt_context
from prefixtune.errors import PrefixTuneError
from prefixtune.train.config import TrainConfig

TEXT_ONLY_OPTIONS = ("categories", "exclude_categories", "instruction", "shots", "shots_from")
"""`evaluate` options that select or prompt generated text, which a classifier's evaluation refuses."""
GENERATION_OPTIONS = ("max_new_tokens", "num_beams", "do_sample", "temperature", "top_p", "batch_size")


# -- train ------------------------------------------------------------------------------------------
def setup_train(parser: argparse.ArgumentParser) -> None:
    add_dataclass_options(parser, TrainConfig)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output from its last checkpoint, with its own settings",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    classify.add_task_options(parser)


def run_train(args: argparse.Namespace) -> int:
    from prefixtune.train import train
    from prefixtune.train.run_folder import RUN_FILE

    if args.task == "classify":
        return classify.run_train_classifier(args)

    base: dict = {}
    if args.resume:
        run_file = Path(getattr(args, "output", TrainConfig.output)) / RUN_FILE
        if run_file.is_file():
            base = json.loads(run_file.read_text(encoding="utf-8"))
    config = dataclass_from_args(TrainConfig, args, base)
    result = train(config, resume=args.resume, progress=not args.quiet)
    if result.interrupted:
        print(
            f"interrupted at step {result.steps}; "
            f"continue with: prefixtune train --resume --output {result.output}"
        )
        return 130
    best = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.best.items())
    print(
        f"trained {result.steps} steps in {_took(result.seconds)}"
        f"{' (stopped early)' if result.stopped_early else ''}{'; best ' + best if best else ''}"
    )
    kept = {"prefix": "prefix", "finetune": "fine-tuned model", "lora": "LoRA adapter"}[config.method]
    print(f"{kept} saved to {result.prefix_path}; metrics in {result.output / 'metrics.jsonl'}")
    return 0


def _took(seconds: float) -> str:
    """A run's training time as a person reads it: 42.0 s, 3 min 05 s, 2 h 07 min."""
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {rest:02d} s" if minutes else f"{seconds:.1f} s"


# -- evaluate and generate ---------------------------------------------------------------------------
def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prefix",
        help="what `prefixtune train` kept: a prefix folder, or with --method finetune the model folder "
        "(OUTPUT/model, no --base needed), with --method lora the adapter folder (OUTPUT/adapter)",
    )
    parser.add_argument(
        "--base",
        help="base model: folder, .gguf file or alias (default: smollm2-135m; minilm-l6 for a classifier)",
    )
    parser.add_argument("--no-prefix", action="store_true", help="run the bare base model, for comparison")
    add_check_weights_option(parser)


def _require_a_model(args: argparse.Namespace, verb: str) -> None:
    if not args.prefix and not args.no_prefix:
        raise PrefixTuneError(f"pass --prefix PATH, or --no-prefix to {verb} the bare base model")


def _add_generation_options(parser: argparse.ArgumentParser, beams: int) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=80, help="tokens to generate per example")
    parser.add_argument("--num-beams", type=int, default=beams, help="beam search width (1: greedy)")
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy/beam decoding")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    parser.add_argument("--batch-size", type=int, default=8, help="sources decoded together")


def _load_model(args: argparse.Namespace):
    """The base model with the prefix loaded (or, with --no-prefix, with none); or what a baseline run
    kept (a fine-tuned model, a LoRA adapter on its base)."""
    from prefixtune.engine.storage import read_meta
    from prefixtune.engine.wrap import wrap
    from prefixtune.loading import load_base
    from prefixtune.train.methods import load_saved, saved_method
    from prefixtune.train.seq2seq import guess_task

    method = saved_method(Path(args.prefix)) if args.prefix and not args.no_prefix else "prefix"
    if method != "prefix":
        model, tokenizer = load_saved(Path(args.prefix), method, args.base)
        return model, tokenizer, {}
    if args.prefix:
        read_meta(Path(args.prefix))  # a bad prefix path fails before the model loads
    name = args.base or "smollm2-135m"
    base, tokenizer = load_base(name, task=guess_task(name))  # an encoder-decoder folder: seq2seq
    if args.no_prefix or not args.prefix:
        return wrap(base), tokenizer, {"bare": True}
    return load_prefix_checked(base, args.prefix, args), tokenizer, {}


def setup_evaluate(parser: argparse.ArgumentParser) -> None:
    _add_model_options(parser)
    parser.add_argument(
        "--data", required=True, help="evaluation data (E2E CSV, WebNLG/DART JSON, CSV/JSONL)"
    )
    parser.add_argument("--format", help="data format; default: guessed from the file")
    parser.add_argument(
        "--source-column",
        help="source column of your own CSV/JSONL (default: source; sentence for a classifier)",
    )
    parser.add_argument(
        "--target-column",
        help="target column of your own CSV/JSONL (default: target; label for a classifier)",
    )
    parser.add_argument(
        "--metrics",
        default="BLEU,NIST,METEOR,ROUGE_L,CIDEr",
        help="comma-separated metrics: the E2E five, and TER (lower is better) as WebNLG reports it; "
        "METEOR needs Java",
    )
    parser.add_argument(
        "--categories",
        help="score only these categories of WebNLG data, comma-separated (e.g. City,Monument)",
    )
    parser.add_argument(
        "--exclude-categories",
        help="score all but these WebNLG categories: with the categories a run held out, its trained ones",
    )
    parser.add_argument(
        "--max-sources", type=int, default=0, help="score only the first N distinct sources (0: all of them)"
    )
    parser.add_argument("--output", help="write scores and generations to this JSON file")
    _add_generation_options(parser, beams=5)
    add_prompt_options(parser)


def run_evaluate(args: argparse.Namespace) -> int:
    from prefixtune.data import read_dataset, select_categories
    from prefixtune.train import evaluate_prefix

    if classify.is_classifier(args.prefix):  # the folder holds a head: report accuracy
        given = [f"--{name.replace('_', '-')}" for name in TEXT_ONLY_OPTIONS if getattr(args, name)]
        if given:
            raise PrefixTuneError(f"{', '.join(given)}: for generated text; a classifier is scored on labels")
        return classify.run_evaluate_classifier(args)
    _require_a_model(args, "evaluate")
    if args.output and Path(args.output).exists():
        raise PrefixTuneError(f"--output {args.output} exists; choose a new file")
    source, target = args.source_column or "source", args.target_column or "target"
    examples = read_dataset(
        args.data,
        fmt=args.format,
        source_column=source,
        target_column=target,
        column_options=EVALUATE_COLUMNS,
    )
    examples = select_categories(examples, args.data, keep=args.categories, drop=args.exclude_categories)
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    context = prompt_context(args)
    model, tokenizer, mode = _load_model(args)
    generation = {k: getattr(args, k) for k in GENERATION_OPTIONS} | {"context": context}
    scores, rows = evaluate_prefix(
        model, tokenizer, examples, metrics=metrics, max_sources=args.max_sources, **generation, **mode
    )
    for name, value in scores.items():
        print(f"{name:8s} {value:8.3f}")
    if args.output:
        records = [{"source": s, "output": h, "references": r} for s, h, r in rows]
        Path(args.output).write_text(
            json.dumps({"scores": scores, "outputs": records}, indent=2) + "\n", encoding="utf-8"
        )
        print(f"scores and {len(records)} outputs written to {args.output}")
    return 0


def setup_generate(parser: argparse.ArgumentParser) -> None:
    _add_model_options(parser)
    parser.add_argument("sources", nargs="*", help="source texts, e.g. an E2E meaning representation")
    parser.add_argument("--input", help="a text file with one source per line (instead of SOURCES)")
    _add_generation_options(parser, beams=5)
    add_prompt_options(parser)


def run_generate(args: argparse.Namespace) -> int:
    from prefixtune.data._io import read_text
    from prefixtune.train import generate_texts

    sources = list(args.sources)
    if args.input:
        sources += [line.strip() for line in read_text(Path(args.input)).splitlines() if line.strip()]
    if not sources:
        raise PrefixTuneError("nothing to generate from: give source texts or --input FILE")
    _require_a_model(args, "generate with")
    context = prompt_context(args)
    model, tokenizer, mode = _load_model(args)
    generation = {k: getattr(args, k) for k in GENERATION_OPTIONS} | {"context": context}
    for output in generate_texts(model, tokenizer, sources, **generation, **mode):
        print(output)
    return 0


# -- fold and info -----------------------------------------------------------------------------------
def setup_fold(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prefix", help="prefix folder holding trainable state (e.g. runs/x/prefix)")
    parser.add_argument("output", help="new folder for the folded prefix (flat keys/values only)")


def run_fold(args: argparse.Namespace) -> int:
    from prefixtune.engine.storage import TRAINABLE_FILE, fold_folder

    source, target = Path(args.prefix), Path(args.output)
    if target.resolve() == source.resolve():
        raise PrefixTuneError("the output folder must differ from the prefix folder")
    had_state = (source / TRAINABLE_FILE).exists()
    fold_folder(source, target)
    note = "reparametrisation run once and dropped" if had_state else "it was already flat"
    print(f"folded prefix written to {target} ({note}; {_folder_size(target) / 1024:.0f} KB)")
    return 0


def setup_info(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prefix", help="prefix folder")
    parser.add_argument("--json", action="store_true", help="print the folder's metadata as JSON")


def run_info(args: argparse.Namespace) -> int:
    from prefixtune.engine.storage import TRAINABLE_FILE, read_meta

    folder = Path(args.prefix)
    meta = read_meta(folder)
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    config, base, slots = meta["config"], meta["base"], meta["slots"]
    layers = config.get("layers")
    covered = [slots[i] for i in layers] if layers is not None else slots
    values = sum(2 * s["kv_heads"] * s["head_dim"] for s in covered) * meta["length"]
    heads = sorted({(s["kv_heads"], s["head_dim"]) for s in slots})
    trainable = (folder / TRAINABLE_FILE).exists()
    lines = [
        ("prefix folder", str(folder)),
        ("base model", f"{base.get('architecture')} ({base.get('model_type')}), {base.get('name_or_path')}"),
        ("attention", f"{len(slots)} layers, " + ", ".join(f"{h} KV heads x {d}" for h, d in heads)),
        ("prefix", f"length {meta['length']}, trained as {config['reparam']}, positions {meta['positions']}"),
        ("kind", _kind_text(config.get("kind", "prefix"))),
        ("layers", "all" if layers is None else f"{', '.join(map(str, layers))} of {len(slots)}"),
        ("init", config["init"] + (f" from {config['init_text']!r}" if config.get("init_text") else "")),
        ("stored", f"{values:,} values ({values * 4 / 1024:.0f} KB in fp32)"),
        ("trainable state", "kept (prefixtune fold drops it)" if trainable else "none (folded)"),
        ("on disk", f"{_folder_size(folder) / 1024:.0f} KB"),
    ]
    for label, value in lines:
        print(f"{label:16s} {value}")
    return 0


def _kind_text(kind: str) -> str:
    if kind == "embedding":
        return "embedding (prompt tuning; stored as the keys/values the prompt gives every layer)"
    if kind == "infix":
        return "infix ([x; INFIX; y]: seen from the source's last token on)"
    return kind


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


COMMANDS = {
    "train": (setup_train, run_train, "train a prefix on a source -> target dataset"),
    "evaluate": (setup_evaluate, run_evaluate, "score a prefix (or the bare model) with the E2E metrics"),
    "generate": (setup_generate, run_generate, "generate text for sources with a prefix"),
    "fold": (setup_fold, run_fold, "drop a prefix's trainable state, keeping only the flat keys/values"),
    "info": (setup_info, run_info, "what a prefix folder holds, its size and its base model"),
}
