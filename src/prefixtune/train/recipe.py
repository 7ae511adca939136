"""What plugs into the one training loop (`train.loop.run`): a `Recipe` for the batches and the loss,
a `Task` for the rest of what a kind of run brings (its data, its evaluation, what it keeps).

Three recipes: decoder-only `[x; y]` in one stream (`encode`, `loss`), encoder-decoder with the
source to the encoder (`seq2seq`), and the classifier (`classify`). `recipe_for` picks between the
first two for a generation run; the classifier builds its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from prefixtune.train.encode import IGNORE
from prefixtune.train.methods import METHODS, Method
from prefixtune.train.seq2seq import collate_pairs, encode_pairs, is_seq2seq, pair_loss


@dataclass(frozen=True)
class Recipe:
    """How a training run turns examples into batches and batches into a loss, for one kind of model."""

    collate: Callable[[list[Any], int], dict[str, torch.Tensor]]
    """(encoded examples, pad id) -> a batch with `attention_mask` and `labels`."""
    loss: Callable[[Any, dict[str, torch.Tensor]], tuple[torch.Tensor, int]]
    """(model, batch) -> (loss summed over the batch's targets, their count)."""
    targets: Callable[[dict[str, torch.Tensor]], int]
    """A batch's target count, known before the forward (the loop divides the summed loss by the
    global batch's: the mean over targets, however the batch is accumulated or split)."""
    encode: Callable[..., list[Any]] | None = None
    """(examples, tokenizer, max_source_tokens, max_target_tokens) -> encoded examples (generation,
    and `evaluate.dev_loss`); None: the run builds its items itself (the classifier)."""


def recipe_for(model) -> Recipe:
    """The seq2seq recipe for an encoder-decoder, else the decoder-only `[x; y]` one."""
    if is_seq2seq(model):
        return Recipe(collate_pairs, pair_loss, lambda b: int((b["labels"] != IGNORE).sum()), encode_pairs)
    from prefixtune.train.encode import collate, encode_examples
    from prefixtune.train.loss import target_loss

    return Recipe(collate, target_loss, lambda b: int((b["labels"][:, 1:] != IGNORE).sum()), encode_examples)


@dataclass(frozen=True)
class Task:
    """What a kind of run (generation, classification) brings to the loop besides its settings."""

    recipe: Recipe
    items: list[Any]
    """The training examples, encoded by the recipe."""
    plan: Callable[[torch.Generator], list[list[int]]]
    """One epoch's batches of indices into `items`, drawn with the generator (seeded per epoch)."""
    evaluate: Callable[[], dict[str, float]] | None
    """Scores on the dev set, in the order they are logged; None: the run has no dev set."""
    best: str
    """The score whose highest value picks the prefix kept in OUTPUT/prefix (and counts for patience)."""
    describe: Callable[[int, dict[str, float]], str]
    """(step, scores) -> the line an evaluation prints."""
    checkpoint_every: int | None = None
    """Write a checkpoint every N steps (and at each evaluation, at the end and on Ctrl-C), so that the
    run resumes exactly; the prefix is then saved with its trainable state. None: a short run that is
    started again rather than resumed (the classifier), which writes no checkpoint."""
    counts_tokens: bool = True
    """Train records (and the progress bar) carry the tokens of each step and tokens per second."""
    method: Method = METHODS["prefix"]
    """What trains and what the run keeps: the prefix (and a classifier's head) of a PrefixModel, or a
    baseline (`methods`: every weight, LoRA)."""
