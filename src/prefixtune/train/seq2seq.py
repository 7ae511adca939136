"""Training and decoding for encoder-decoder models: the source goes to the encoder, the target is
the decoder's labels (summarisation-style data: a source column and a target column).

The decoder-only path (`encode`, `loss`, `evaluate`) builds `[x; y]` in one stream; here `x` and `y`
are two streams, so batches, the loss and generation differ, and `recipe.recipe_for` picks the right
set of functions for a model. The prefixes themselves need nothing special: `inject` already gives the
encoder, the decoder's self-attention and its cross-attention their own prefix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional

from prefixtune.data import Example
from prefixtune.train.encode import IGNORE


def is_seq2seq(model) -> bool:
    """Whether `model` (a PrefixModel or a Hugging Face model) is an encoder-decoder."""
    return bool(getattr(model.config, "is_encoder_decoder", False))


def guess_task(name_or_path: str) -> str:
    """`seq2seq` for a model folder whose config.json says it is an encoder-decoder, else `causal-lm`.

    Loading an encoder-decoder folder as a causal LM would not fail: transformers builds BART's
    decoder alone (`BartForCausalLM`) and drops the encoder's weights, so the task is read first.
    """
    config = Path(name_or_path).expanduser() / "config.json"
    if config.is_file():
        try:
            if json.loads(config.read_text(encoding="utf-8")).get("is_encoder_decoder"):
                return "seq2seq"
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass  # load_base reports the broken folder
    return "causal-lm"


@dataclass(frozen=True)
class Pair:
    """One tokenised training example: encoder input and decoder labels."""

    input_ids: list[int]
    """The source's token ids, as the tokenizer adds special tokens for an encoder input."""
    labels: list[int]
    """The target's token ids, ending with the end-of-sequence token."""


def encode_pairs(
    examples: list[Example], tokenizer, max_source_tokens: int, max_target_tokens: int
) -> list[Pair]:
    """Tokenise sources and targets separately; cut each to its limit (the target keeps its eos)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no end-of-sequence token")
    pairs = []
    for example in examples:
        source = list(tokenizer(example.source.strip())["input_ids"])[:max_source_tokens]
        target = list(tokenizer(example.target.strip())["input_ids"])
        target = target[:-1] if target and target[-1] == eos else target  # re-added after the cut
        pairs.append(Pair(source, target[: max_target_tokens - 1] + [eos]))
    return pairs


def collate_pairs(items: list[Pair], pad_id: int) -> dict[str, torch.Tensor]:
    """Encoder input ids and mask, right-padded, and labels padded with IGNORE; each (B, L_src or L_tgt).

    Right padding keeps a row's real source tokens at positions 0..n-1, as alone (BART's learned
    positions count pads too). The model shifts the labels right to make the decoder's inputs.
    """
    source_width = max(len(i.input_ids) for i in items)
    target_width = max(len(i.labels) for i in items)
    ids = torch.full((len(items), source_width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), source_width), dtype=torch.long)
    labels = torch.full((len(items), target_width), IGNORE, dtype=torch.long)
    for row, item in enumerate(items):
        ids[row, : len(item.input_ids)] = torch.tensor(item.input_ids)
        mask[row, : len(item.input_ids)] = 1
        labels[row, : len(item.labels)] = torch.tensor(item.labels)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pair_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the target tokens (teacher-forced), and how many there were."""
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
        use_cache=False,
    )
    labels = batch["labels"]
    loss = functional.cross_entropy(
        out.logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum"
    )  # logits (B, L_tgt, V): position t predicts label t
    return loss, int((labels != IGNORE).sum())


@torch.no_grad()
def generate_pairs(
    model, tokenizer, sources: list[str], options: dict[str, Any], batch_size: int, max_source_tokens: int
) -> list[str]:
    """Decode a target for each source with `generate` options built by `evaluate.generate_texts`."""
    was_training = model.training
    model.eval()
    pad = _pad_id(tokenizer)
    outputs = [""] * len(sources)
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))  # similar lengths: less padding
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        items = [
            Pair(list(tokenizer(sources[i].strip())["input_ids"])[:max_source_tokens], [pad]) for i in rows
        ]
        batch = collate_pairs(items, pad)
        generated = model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pad_token_id=pad,
            **options_for_rows(options, len(rows)),
        )
        texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
        for index, text in zip(rows, texts, strict=True):
            outputs[index] = text.strip()
    model.train(was_training)
    return outputs


def options_for_rows(options: dict[str, Any], rows: int) -> dict[str, Any]:
    """`options` for a batch of `rows`: a bare run (`prefix=[None]`) names no prefix on every row."""
    if options.get("prefix") == [None]:
        return {**options, "prefix": [None] * rows}
    return options


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
