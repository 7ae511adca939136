"""Turning (source, target) pairs into token batches: `[x; y]` with the loss on `y` only.

The prompt is the source followed by a newline; the model learns to continue with the target and
an end-of-sequence token. Batches are length-bucketed so that little compute goes to padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefixtune.data import Example

IGNORE = -100
SEPARATOR = "\n"


@dataclass(frozen=True)
class Encoded:
    """One tokenised training example."""

    input_ids: list[int]
    """Prompt then target then end-of-sequence."""
    prompt_len: int
    """Tokens before the target: no loss is taken on them."""


def prompt_text(source: str) -> str:
    return source.strip() + SEPARATOR


def prompt_ids(tokenizer, source: str, max_source_tokens: int, context: str = "") -> list[int]:
    """The prompt's token ids; a too-long source is cut, keeping the separator.

    `context` is text written before the source (an instruction, worked examples: `train.prompting`);
    it does not count against `max_source_tokens`, which stays the source's own budget.
    """
    ids = tokenizer(context + prompt_text(source), add_special_tokens=True)["input_ids"]
    budget = max_source_tokens + (
        len(tokenizer(context, add_special_tokens=False)["input_ids"]) if context else 0
    )
    if len(ids) > budget:
        sep = tokenizer(SEPARATOR, add_special_tokens=False)["input_ids"]
        ids = ids[: budget - len(sep)] + sep
    return list(ids)


def encode_examples(
    examples: list[Example], tokenizer, max_source_tokens: int, max_target_tokens: int
) -> list[Encoded]:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-sequence token")
    out = []
    for example in examples:
        prompt = prompt_ids(tokenizer, example.source, max_source_tokens)
        target = tokenizer(" " + example.target.strip(), add_special_tokens=False)["input_ids"][
            :max_target_tokens
        ]
        out.append(Encoded(prompt + list(target) + [tokenizer.eos_token_id], len(prompt)))
    return out


def bucketed_batches(lengths: list[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """One epoch of batches: shuffle, sort by length within windows of 50 batches, shuffle the batches.

    Deterministic for a generator state, so a resumed run replays the same order.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


def collate(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and labels (IGNORE on prompt and padding)."""
    width = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item.input_ids)
        ids[row, :n] = torch.tensor(item.input_ids)
        mask[row, :n] = 1
        labels[row, item.prompt_len : n] = ids[row, item.prompt_len : n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def left_padded_prompts(
    tokenizer, sources: list[str], max_source_tokens: int, context: str = ""
) -> dict[str, torch.Tensor]:
    """Prompts for generation, left-padded so that every row's continuation starts at the same column."""
    rows = [prompt_ids(tokenizer, s, max_source_tokens, context) for s in sources]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return {"input_ids": ids, "attention_mask": mask}
