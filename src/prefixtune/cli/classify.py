"""Classifier prefixes on the command line (P-Tuning v2 on an encoder such as MiniLM).

- `prefixtune train --task classify --train train.tsv --dev dev.tsv`: learn a prefix and a head.
- `prefixtune evaluate --prefix runs/x/prefix --data dev.tsv`: accuracy (a prefix folder holding a
  head is a classifier; no option is needed to say so).
- `prefixtune classify --prefix runs/x/prefix "a sentence" ...`: the label of each sentence.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prefixtune.cli.options import (
    EVALUATE_COLUMNS,
    add_check_weights_option,
    add_dataclass_options,
    load_prefix_checked,
)
from prefixtune.errors import PrefixTuneError
from prefixtune.train.classify_config import ClassifyConfig
from prefixtune.train.config import TrainConfig

TASKS = ("generate", "classify")
DEFAULT_BASE = "minilm-l6"
TEXT_COLUMN, LABEL_COLUMN = "sentence", "label"


# -- train --task classify ----------------------------------------------------------------------------
def add_task_options(parser: argparse.ArgumentParser) -> None:
    """`--task` and the classifier's own options, next to `TrainConfig`'s (already added)."""
    parser.add_argument(
        "--task",
        choices=TASKS,
        default="generate",
        help="generate: a prefix for text generation (source -> target); classify: a classifier prefix "
        "and head on an encoder (P-Tuning v2), with its own defaults: base minilm-l6, flat prefix of 16, "
        "random init, lr 1e-2, batch 32, 1000 steps",
    )
    shared = {f.dest for f in parser._actions}  # the prefix's options among them (`PREFIX_OPTIONS`)
    add_dataclass_options(parser, ClassifyConfig, skip=tuple(shared))


def run_train_classifier(args: argparse.Namespace) -> int:
    from prefixtune.train.classify import train_classifier

    if args.resume:
        raise PrefixTuneError("--resume is not supported with --task classify; start the run again")
    options = ClassifyConfig.options()
    foreign = sorted(k for k in vars(args) if k in TrainConfig.options() and k not in options)
    if foreign:
        names = ", ".join("--" + k.replace("_", "-") for k in foreign)
        raise PrefixTuneError(f"{names} do(es) not apply to --task classify")
    config = ClassifyConfig.from_dict(vars(args))
    result = train_classifier(config, progress=not args.quiet)
    if result.interrupted:
        print(
            f"interrupted at step {result.steps}; the best prefix so far is in {result.prefix_path} "
            "(if any). A classifier run does not resume: start it again with another --output to finish"
        )
        return 130
    if result.best:
        print(f"trained {result.steps} steps; best dev accuracy {100 * result.best['accuracy']:.2f} "
              f"at step {result.best['step']}")  # fmt: skip
    else:
        print(f"trained {result.steps} steps (no --dev: the last step's prefix is kept)")
    print(f"prefix and head saved to {result.prefix_path}; metrics in {result.output / 'metrics.jsonl'}")
    return 0


# -- evaluate and classify ----------------------------------------------------------------------------
def is_classifier(prefix: str | None) -> bool:
    """A prefix folder holding a trained head is a classifier."""
    from prefixtune.train.heads import HEAD_FILE

    return bool(prefix) and (Path(prefix) / HEAD_FILE).is_file()


def load_classifier(args: argparse.Namespace):
    """The base encoder with the prefix (`--prefix`) and its head, the tokenizer, and the label names."""
    from prefixtune.engine.storage import read_meta
    from prefixtune.loading import load_base
    from prefixtune.train.heads import saved_labels

    prefix = Path(args.prefix)
    read_meta(prefix)  # a bad prefix folder fails before the model loads
    labels = saved_labels(prefix)
    if not labels:
        raise PrefixTuneError(f"{prefix} holds no classifier head; train one with --task classify")
    model, tokenizer = load_base(
        args.base or DEFAULT_BASE, task="sequence-classification", num_labels=len(labels)
    )
    model.config.id2label = labels
    return load_prefix_checked(model, prefix, args), tokenizer, [labels[i] for i in range(len(labels))]


def run_evaluate_classifier(args: argparse.Namespace) -> int:
    from prefixtune.data import read_dataset
    from prefixtune.train.classify import evaluate_classifier

    if args.no_prefix:
        raise PrefixTuneError(
            "--no-prefix does not apply to a classifier: its head is trained with the prefix"
        )
    if args.output and Path(args.output).exists():
        raise PrefixTuneError(f"--output {args.output} exists; choose a new file")
    text, label = args.source_column or TEXT_COLUMN, args.target_column or LABEL_COLUMN
    examples = read_dataset(
        args.data, fmt=args.format, source_column=text, target_column=label, column_options=EVALUATE_COLUMNS
    )
    model, tokenizer, names = load_classifier(args)
    scores = evaluate_classifier(model, tokenizer, examples, names, args.data, batch_size=args.batch_size)
    print(
        f"accuracy {100 * scores['accuracy']:.2f}  ({len(examples)} examples, loss {scores['dev_loss']:.4f})"
    )
    if args.output:
        Path(args.output).write_text(json.dumps({"scores": scores}, indent=2) + "\n", encoding="utf-8")
        print(f"scores written to {args.output}")
    return 0


def setup_classify(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prefix", required=True, help="classifier prefix folder (from train --task classify)"
    )
    parser.add_argument("--base", help=f"base encoder: folder or alias (default: {DEFAULT_BASE})")
    parser.add_argument("texts", nargs="*", help="texts to label")
    parser.add_argument("--input", help="a text file with one text per line (instead of TEXTS)")
    parser.add_argument("--batch-size", type=int, default=64, help="texts classified together")
    add_check_weights_option(parser)


def run_classify(args: argparse.Namespace) -> int:
    from prefixtune.data._io import read_text
    from prefixtune.train.classify import class_logits

    texts = list(args.texts)
    if args.input:
        texts += [line.strip() for line in read_text(Path(args.input)).splitlines() if line.strip()]
    if not texts:
        raise PrefixTuneError("nothing to classify: give texts or --input FILE")
    model, tokenizer, names = load_classifier(args)
    for text, row in zip(
        texts, class_logits(model, tokenizer, texts, batch_size=args.batch_size), strict=True
    ):
        print(f"{names[int(row.argmax())]}\t{text}")
    return 0


COMMANDS = {"classify": (setup_classify, run_classify, "label texts with a classifier prefix (P-Tuning v2)")}
