"""Position ids for the `shifted` convention, and the context-window check, as one pre-forward hook.

With the default `keep` convention the prefix has no position: real tokens sit at 0..n-1, exactly as
without a prefix, so a masked-out prefix gives the bare model's logits. `shifted` places real tokens
at P..P+n-1, as if the prefix were P past tokens: what PEFT (prefix through `past_key_values`) and
Li & Liang's code do, needed to reproduce their prefixes.
"""

from __future__ import annotations

from typing import Any

import torch

from prefixtune.engine.compat import cache_in
from prefixtune.engine.errors import PrefixTuneError
from prefixtune.engine.inject import Injector, PrefixBatch


class PositionHook:
    """A `register_forward_pre_hook(..., with_kwargs=True)` hook on the base model.

    Args:
        injector: the base model's injector (the current batch's prefixes).
        config: the base model's config (encoder-decoder or not, context window).
    """

    def __init__(self, injector: Injector, config: Any) -> None:
        self.injector = injector
        self.config = config

    def __call__(self, module, args: tuple, kwargs: dict[str, Any]):
        batch = self.injector.current
        # where this forward's queries sit in the stream: what an infix (`PrefixBatch.seen_from`) needs
        self.injector.query_start = _past_length(kwargs)
        # No prefix here takes a position: encoder-decoder prefixes (`shifted` is refused in
        # model._check_positions) take no place in BART's position table, and an encoder's prefix is
        # seen by every query whatever the padding, while its own position ids (RoBERTa's start after
        # the padding index) must not be renumbered.
        if batch is None or self.config.is_encoder_decoder or self.injector.bidirectional:
            return None
        tokens = kwargs.get("input_ids", args[0] if args else None)
        if tokens is None:
            tokens = kwargs.get("inputs_embeds")
        if tokens is None:
            return None
        self._check_window(batch.length + _past_length(kwargs) + tokens.shape[1])
        offsets = batch.for_rows(tokens.shape[0]).position_offsets  # (B,) or (1,) shared, or None
        mask = kwargs.get("attention_mask")
        padded = kwargs.get("position_ids") is None and mask is not None and mask.dim() == 2
        if offsets is None and not padded:
            return None
        # Without position ids, Hugging Face models number a left-padded row's tokens from the first
        # pad. RoPE is relative, so the bare model does not care, but a prefix key is a free vector
        # and its score against a query depends on the query's absolute position: count from the
        # first real token so that a padded row gets exactly its solo result.
        positions = _real_positions(kwargs, tokens)
        if offsets is not None:
            positions = positions + offsets[:, None].to(tokens.device)
        kwargs["position_ids"] = positions
        return args, kwargs

    def check_generation_length(self, batch: PrefixBatch | None, input_ids, kwargs: dict[str, Any]) -> None:
        """Fail before generating, not midway, if prefix + prompt + new tokens overflow the window."""
        if batch is None or input_ids is None or self.config.is_encoder_decoder:
            return
        new = kwargs.get("max_new_tokens")
        if new is None:
            new = getattr(kwargs.get("generation_config"), "max_new_tokens", None) or 0
        self._check_window(batch.length + input_ids.shape[1] + new)

    def _check_window(self, total: int) -> None:
        window = getattr(self.config, "max_position_embeddings", None)
        if window is not None and total > window:
            raise PrefixTuneError(
                f"prefix plus input is {total} positions but the model's context window is {window}; "
                "shorten the input (or max_new_tokens) or use a shorter prefix"
            )


def _past_length(kwargs: dict[str, Any]) -> int:
    cache = cache_in(kwargs)
    return int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0


def _real_positions(kwargs: dict[str, Any], tokens: torch.Tensor) -> torch.Tensor:
    """The positions the model would use without a prefix: (B, Q), left padding respected."""
    given = kwargs.get("position_ids")
    rows, q_len = tokens.shape[0], tokens.shape[1]
    if given is not None:
        return given.expand(rows, -1)
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        return (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -q_len:]  # (B, Q)
    past = _past_length(kwargs)
    return torch.arange(past, past + q_len, device=tokens.device)[None].expand(rows, -1)
