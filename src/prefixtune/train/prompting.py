"""Discrete prompting: the frozen model steered by written text alone, the paper's weakest baseline.

Li & Liang order the ways of steering a frozen model as discrete prompt < embedding-only (prompt
tuning) < prefix. The discrete prompt here is text before every source: an instruction, then worked
examples (few-shot), each written as training writes its pairs (`source` newline `target`), so that
the model continues the source's line with a target and stops at the newline as after training.
"""

from __future__ import annotations

import random

from prefixtune.data import Example, group_references
from prefixtune.errors import PrefixTuneError
from prefixtune.train.encode import prompt_text

SHOT_SEPARATOR = "\n\n"
"""A blank line between the instruction and each worked example."""


def written_prompt(instruction: str = "", shots: list[Example] | tuple[Example, ...] = ()) -> str:
    """The text before each source: `instruction`, then each shot as its source, a newline and its
    target, each part followed by a blank line. Empty when there is neither."""
    parts = [instruction.strip()] if instruction.strip() else []
    parts += [prompt_text(shot.source) + shot.target.strip() for shot in shots]
    return "".join(part + SHOT_SEPARATOR for part in parts)


def pick_shots(examples: list[Example], count: int, seed: int = 0) -> list[Example]:
    """`count` worked examples of distinct sources, drawn at random with `seed`, each with its first
    reference. Draw them from the training data, never from what is scored."""
    if count < 0:
        raise PrefixTuneError(f"--shots must be 0 or more, got {count}")
    groups = group_references(examples)
    if count > len(groups):
        raise PrefixTuneError(f"--shots {count}: the file has only {len(groups)} distinct sources")
    drawn = random.Random(seed).sample(groups, count)
    return [Example(source, references[0]) for source, references in drawn]
