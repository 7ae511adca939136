"""`--instruction`, `--shots` and `--shots-from` of `evaluate` and `generate`: a written prompt before
every source (`train.prompting`), with a prefix or, with `--no-prefix`, on the frozen model alone."""

from __future__ import annotations

import argparse

from prefixtune.errors import PrefixTuneError


def add_prompt_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--instruction",
        default="",
        help="text written before every source, e.g. 'Describe the restaurant in one sentence.' "
        "(discrete prompting; with --no-prefix the frozen model is steered by it alone)",
    )
    parser.add_argument(
        "--shots", type=int, default=0, help="worked examples written before every source (few-shot)"
    )
    parser.add_argument(
        "--shots-from",
        help="data file the --shots examples are drawn from (at random, seed 0): training data",
    )


def prompt_context(args: argparse.Namespace) -> str:
    """The text before each source that the options ask for ("" for none)."""
    from prefixtune.data import read_dataset
    from prefixtune.train.prompting import pick_shots, written_prompt

    if args.shots and not args.shots_from:
        raise PrefixTuneError("--shots needs --shots-from FILE, the data its examples are drawn from")
    if args.shots_from and not args.shots:
        raise PrefixTuneError("--shots-from needs --shots N, how many examples to draw")
    shots = pick_shots(read_dataset(args.shots_from), args.shots) if args.shots else []
    return written_prompt(args.instruction, shots)
