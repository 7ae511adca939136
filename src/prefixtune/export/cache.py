"""A prefix as a KV cache: P past entries per layer, that real tokens at positions P.. attend to.

A cache holds past tokens, and an engine numbers the next tokens after them: the real tokens sit at
P..P+n-1. That is prefixtune's `shifted` convention, so a `shifted` prefix goes in as it is. Under
the default `keep` the real tokens sit at 0..n-1 and the prefix keys carry no rotation; with RoPE a
score depends only on the query's rotation relative to the key's, so a key stored as R(P)·k meets a
query at P+m exactly as the raw k meets a query at m: (R(P+m)q)·(R(P)k) = (R(m)q)·k. Absolute
position embeddings (GPT-2) have no such identity: `keep` cannot be reproduced there, and is refused.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache

from prefixtune.engine.compat import cache_kwargs
from prefixtune.engine.model import PrefixModel
from prefixtune.errors import PrefixTuneError

Pairs = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer (key, value), each (H_kv, P, D), in the model's own (Hugging Face) head layout."""

_PROBE_TOKENS = 6


def cache_pairs(model: PrefixModel, name: str | None = None, verify: bool = True) -> Pairs:
    """Prefix `name` (the default one if None) as the KV-cache entries that reproduce it.

    Args:
        verify: run the base with these entries as its cache on a short probe and refuse the export
            unless its logits equal prefixtune's (to 1e-3 of their scale; the tests hold 1e-5).
    Returns: per layer (key, value), each (H_kv, P, D) fp32, keys rotated by R(P) under `keep`.
    Raises: PrefixTuneError where a cache cannot reproduce the prefix (see `check_exportable`).
    """
    name = name or model.default_prefix
    if name not in model.prefixes:
        raise PrefixTuneError(f"no prefix named {name!r}; this model holds {sorted(model.prefixes)}")
    check_exportable(model, name)
    prefix = model.prefixes[name]
    with torch.no_grad():
        pairs = [(k.detach().float(), v.detach().float()) for k, v in prefix.slot_tensors()]
    if prefix.config.positions == "keep":
        rotary = rotary_module(model.base)
        pairs = [(rotate_keys(rotary, k, prefix.length), v) for k, v in pairs]
    if verify:
        check_reproduces(model, name, pairs)
    return pairs


def check_exportable(model: PrefixModel, name: str) -> None:
    """Refuse, naming the reason, what a cache of past tokens cannot hold exactly."""
    prefix, config = model.prefixes[name], model.base.config
    if getattr(config, "is_encoder_decoder", False) or model.injector.bidirectional:
        raise PrefixTuneError(
            f"{type(model.base).__name__} is not a causal decoder-only model: its prefix sits in the encoder "
            "or cross-attention, which no engine's decoder cache holds; only decoder-only prefixes export"
        )
    if model.attachments:  # e.g. a classifier's trained head (prefixtune.train.heads)
        raise PrefixTuneError(
            f"this prefix comes with trained weights of the model itself ({', '.join(model.attachments)}: "
            "a classifier head), which a KV cache cannot carry"
        )
    if prefix.config.kind == "infix":
        raise PrefixTuneError(
            'kind="infix" is seen from the source\'s last token on, not by every token: a cache of past '
            'tokens is seen by all of them; only kind="prefix" or "embedding" export'
        )
    if len(prefix.slots) != len(model.layout.slots):
        raise PrefixTuneError(
            f"the prefix covers layers {list(prefix.slots)} only; a cache has the same P entries in every "
            "layer and cannot leave a layer without them: only prefixes on all layers export"
        )
    if _has_sliding_window(config):
        raise PrefixTuneError(
            "the model has sliding-window attention: prefixtune keeps the prefix visible to every query, "
            "while a cache's past entries leave the window, so long inputs would differ"
        )
    if prefix.config.positions == "keep" and rotary_module(model.base) is None:
        raise PrefixTuneError(
            f"{type(model.base).__name__} embeds absolute positions (no RoPE): with the prefix in the cache "
            'the real tokens sit at P.., not at 0.. as under positions="keep", and no key rotation makes up '
            'for it. Export a prefix trained with positions="shifted" (as PEFT does) instead'
        )


def rotate_keys(rotary: nn.Module, keys: torch.Tensor, angle: int) -> torch.Tensor:
    """R(angle)·keys with the model's own rotary embedding (its frequencies and scaling).

    Args: keys (H_kv, P, D) in Hugging Face's rotate-half layout; the first `cos.shape[-1]` dims rotate
    (all of them, or a partial-rotary model's share).
    """
    positions = torch.full((1, 1), angle, dtype=torch.long, device=keys.device)
    cos, sin = rotary(keys[None], positions)  # (1, 1, R) each
    cos, sin = cos[0].to(keys.dtype), sin[0].to(keys.dtype)  # (1, R): one angle for every key
    width = cos.shape[-1]
    turn, rest = keys[..., :width], keys[..., width:]  # (H_kv, P, R), (H_kv, P, D - R)
    first, second = turn.chunk(2, dim=-1)
    half_turned = torch.cat([-second, first], dim=-1)  # rotate_half
    return torch.cat([turn * cos + half_turned * sin, rest], dim=-1)


def as_dynamic_cache(model: nn.Module, pairs: Pairs, rows: int = 1) -> DynamicCache:
    """A fresh `DynamicCache` holding `pairs` for `rows` rows (generate extends the cache it gets)."""
    dtype = next(model.parameters()).dtype
    data = [
        (k[None].expand(rows, -1, -1, -1).to(dtype), v[None].expand(rows, -1, -1, -1).to(dtype))
        for k, v in pairs
    ]
    return DynamicCache(ddp_cache_data=data, config=model.config)


def check_reproduces(model: PrefixModel, name: str, pairs: Pairs) -> None:
    """Refuse unless the base with `pairs` as its cache gives prefixtune's logits on a probe input."""
    vocab = model.base.get_input_embeddings().num_embeddings
    ids = torch.arange(_PROBE_TOKENS, device=model.device)[None] * 7 % vocab  # (1, T)
    length = pairs[0][0].shape[1]
    with torch.no_grad():
        ours = model(ids, prefix=name).logits  # (1, T, V)
        model.injector.current = None  # the bare base: the prefix comes from the cache alone
        mask = torch.ones(1, length + ids.shape[1], dtype=torch.long, device=model.device)
        cache = as_dynamic_cache(model.base, pairs)
        theirs = model.base(input_ids=ids, attention_mask=mask, **cache_kwargs(cache)).logits
    scale = ours.abs().max().item()
    if not torch.allclose(ours, theirs, rtol=0, atol=1e-3 * max(scale, 1.0)):
        gap = (ours - theirs).abs().max().item()
        raise PrefixTuneError(
            f"the prefix as a KV cache does not reproduce prefixtune on {type(model.base).__name__} "
            f"(logits differ by {gap:.3g}): this model's positions or attention are not what a cache of past "
            "tokens assumes, so the export was not written"
        )


def rotary_module(base: nn.Module) -> nn.Module | None:
    """The model's one rotary embedding (`...RotaryEmbedding`), or None for absolute positions."""
    found = [m for m in base.modules() if type(m).__name__.endswith("RotaryEmbedding")]
    return found[0] if len(found) == 1 else None


def _has_sliding_window(config) -> bool:
    text = config.get_text_config(decoder=True)
    if any("sliding" in str(kind) for kind in getattr(text, "layer_types", None) or ()):
        return True
    return getattr(text, "sliding_window", None) is not None and getattr(text, "use_sliding_window", True)
