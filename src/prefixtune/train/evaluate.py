"""Batched decoding and scoring: the numbers the papers report, on a prefix or the bare model."""

from __future__ import annotations

import math

import torch

from prefixtune.data import Example, group_references
from prefixtune.train.encode import SEPARATOR, left_padded_prompts
from prefixtune.train.recipe import recipe_for
from prefixtune.train.seq2seq import generate_pairs, is_seq2seq, options_for_rows


@torch.no_grad()
def generate_texts(
    model,
    tokenizer,
    sources: list[str],
    *,
    prefix=None,
    bare: bool = False,
    batch_size: int = 8,
    max_new_tokens: int = 80,
    num_beams: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_source_tokens: int = 128,
    context: str = "",
) -> list[str]:
    """Continue each source's prompt; returns the text up to the first newline or end of sequence.

    Leading blank lines are skipped (`first_line`).

    Args:
        model: a PrefixModel or a plain Hugging Face model.
        prefix: which prefix of a PrefixModel (default: its default prefix).
        bare: run a PrefixModel without any prefix (the frozen base model alone).
        context: text before every source, e.g. a written instruction and worked examples
            (`train.prompting.written_prompt`: discrete prompting, the paper's weakest baseline).
    """
    options: dict = {"max_new_tokens": max_new_tokens, "num_beams": num_beams, "do_sample": do_sample}
    if do_sample:
        options.update(temperature=temperature, top_p=top_p)
    if bare or prefix is not None:
        options["prefix"] = [None] if bare else prefix  # [None]: no prefix on any row (see options_for_rows)
    if is_seq2seq(model):  # the source goes to the encoder: see train/seq2seq.py
        sources = [context + source for source in sources]
        return generate_pairs(model, tokenizer, sources, options, batch_size, max_source_tokens)
    was_training = model.training
    model.eval()
    outputs: list[str] = []
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))  # similar lengths: less padding
    for start in range(0, len(order), batch_size):
        chunk = [sources[i] for i in order[start : start + batch_size]]
        inputs = left_padded_prompts(tokenizer, chunk, max_source_tokens, context)
        rows_options = options_for_rows(options, len(chunk))
        generated = model.generate(**inputs, **rows_options, pad_token_id=_pad_id(tokenizer))
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        outputs += [first_line(t) for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    model.train(was_training)
    result = [""] * len(sources)
    for position, index in enumerate(order):
        result[index] = outputs[position]
    return result


@torch.no_grad()
def dev_loss(model, tokenizer, examples: list[Example], batch_size: int = 8, max_tokens=(128, 96)) -> float:
    """Mean per-token loss on the targets of `examples` (teacher-forced)."""
    was_training = model.training
    model.eval()
    recipe = recipe_for(model)  # decoder-only or encoder-decoder batches
    encoded = recipe.encode(examples, tokenizer, *max_tokens)
    total, count = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        loss, n = recipe.loss(model, recipe.collate(encoded[start : start + batch_size], _pad_id(tokenizer)))
        total, count = total + loss.item(), count + n
    model.train(was_training)
    return total / max(count, 1) if count else math.nan


def evaluate_prefix(
    model, tokenizer, examples: list[Example], *, metrics=("BLEU",), max_sources: int = 0, **generation
) -> tuple[dict[str, float], list[tuple[str, str, list[str]]]]:
    """Generate for each distinct source and score against all its references.

    Returns the scores and (source, hypothesis, references) triples.
    """
    from prefixtune.metrics import e2e_scores

    groups = group_references(examples)
    if max_sources:
        groups = groups[:max_sources]
    sources = [s for s, _ in groups]
    hypotheses = generate_texts(model, tokenizer, sources, **generation)
    references = [refs for _, refs in groups]
    scores = e2e_scores(hypotheses, references, metrics=tuple(metrics))
    return scores, list(zip(sources, hypotheses, references, strict=True))


def first_line(text: str) -> str:
    """The first line the model wrote. Blank lines before it are skipped: a trained prefix starts its
    target at once, but a frozen model (a written prompt, `--no-prefix`) often opens with a newline,
    and cutting there would score an empty text rather than what it said."""
    return text.lstrip().split(SEPARATOR)[0].strip()


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
