"""Where a prefix starts: random, zero, or the keys/values of real words (Li & Liang, section 7.2).

Starting from real words matters most with little data: the paper's low-data E2E runs gain several
BLEU over random starts, which are unstable.
"""

from __future__ import annotations

import torch
from torch import nn

from prefixtune.engine.config import DEFAULT_LENGTH, PrefixConfig
from prefixtune.engine.errors import PrefixTuneError
from prefixtune.engine.inject import Injector
from prefixtune.engine.layout import SlotLayout
from prefixtune.engine.prefix import Prefix


def text_token_ids(config: PrefixConfig, tokenizer) -> list[int]:
    """The ids of `init_text`, without special tokens (the paper initialises from the words alone)."""
    if tokenizer is None:
        raise PrefixTuneError(
            'init="text" needs the tokenizer: add_prefix(model, config, tokenizer=tokenizer)'
        )
    ids = tokenizer(config.init_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise PrefixTuneError(f"init_text {config.init_text!r} tokenizes to nothing")
    return list(ids)


def resolve_length(config: PrefixConfig, tokenizer) -> int:
    """The prefix length: as configured, else the text's token count, else the default."""
    if config.length is not None:
        return config.length
    if config.init == "text":
        return len(text_token_ids(config, tokenizer))
    return DEFAULT_LENGTH


@torch.no_grad()
def record_keys_values(
    base: nn.Module,
    injector: Injector,
    layout: SlotLayout,
    input_ids: torch.Tensor,
    slots: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Run the frozen model on `input_ids` (1, n) with no prefix; return its keys/values as (n, W).

    Args:
        layout: the layout of `slots` (model slot indices, default all of them).
    """
    saved, injector.current, injector.recording = injector.current, None, {}
    try:
        inputs = {"input_ids": input_ids.to(_device(base))}
        if getattr(base.config, "is_encoder_decoder", False):
            # the text through the decoder too: decoder self-attention slots take its decoder keys,
            # cross-attention slots the projection of its encoder output, all n long
            inputs["decoder_input_ids"] = inputs["input_ids"]
        base(**inputs, use_cache=False)
        recorded = injector.recording
    finally:
        injector.current, injector.recording = saved, None
    slots = range(len(layout.slots)) if slots is None else slots
    pairs = [(recorded[i][0][0].float(), recorded[i][1][0].float()) for i in slots]
    return layout.join(pairs)  # (n, W)


def initial_target(
    config: PrefixConfig, prefix: Prefix, base: nn.Module, injector: Injector, tokenizer
) -> torch.Tensor | None:
    """The matrix `prefix`'s reparametrisation should start as: (P, W) keys/values, or (P, d) input
    embeddings for an embedding prompt; None keeps the reparametrisation's own init."""
    from prefixtune.engine.prompt import initial_prompt

    length, layout = prefix.length, prefix.layout
    generator = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
    if prefix.prompt:
        ids = text_token_ids(config, tokenizer) if config.init == "text" else None
        return initial_prompt(config.init, length, base, ids, generator)
    if config.init == "text":
        ids = text_token_ids(config, tokenizer)
        # A prefix longer than the text repeats its tokens; a shorter one keeps the first tokens.
        ids = (ids * (length // len(ids) + 1))[:length]
        return record_keys_values(base, injector, layout, torch.tensor([ids]), prefix.slots)
    if config.init == "random" and config.reparam == "flat":
        # Li & Liang draw N(0, 1); real keys/values have model-specific scales, so draw each slot's
        # keys and values at the spread of the model's own (measured on a few ordinary tokens).
        vocab = base.get_input_embeddings().num_embeddings
        ids = torch.arange(1, 9).clamp(max=vocab - 1)[None]
        sample = record_keys_values(base, injector, layout, ids, prefix.slots)
        scale = _column_scales(sample, layout)  # (W,)
        return torch.randn(length, layout.width, generator=generator) * scale
    return None


def _column_scales(sample: torch.Tensor, layout: SlotLayout) -> torch.Tensor:
    """Per column, the std of its slot's keys (or values) in `sample` (n, W)."""
    scales = []
    for key, value in layout.split(sample):
        for part in (key, value):
            scales.append(part.std().clamp(min=1e-3).expand(part.shape[0] * part.shape[2]))
    return torch.cat(scales)


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
