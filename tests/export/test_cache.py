"""What a cache of past tokens cannot hold is refused, with the reason; and R(P) rotation."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model
from seq2seq_models import make_seq2seq
from transformers import LlamaForSequenceClassification

from prefixtune import PrefixConfig, PrefixTuneError, add_prefix
from prefixtune.export.cache import cache_pairs, rotate_keys


def _llama_classifier():
    """A causal decoder with a task head, which add_prefix trains with the prefix by default."""
    config = make_model("llama").config
    config.pad_token_id = 0
    return LlamaForSequenceClassification(config).eval()


@pytest.mark.parametrize(
    ("make", "config", "reason"),
    [
        (lambda: make_seq2seq("bart"), PrefixConfig(length=3, seed=1), "not a causal decoder-only"),
        (lambda: make_model("llama"), PrefixConfig(length=3, kind="infix", seed=1), "infix"),
        (lambda: make_model("llama"), PrefixConfig(length=3, layers=(0,), seed=1), "covers layers"),
        (lambda: make_model("gemma3"), PrefixConfig(length=3, seed=1), "sliding-window"),
        (lambda: make_model("gpt2"), PrefixConfig(length=3, seed=1), "absolute positions"),
        (_llama_classifier, PrefixConfig(length=3, seed=1), "head: a classifier head"),
    ],
)
def test_refused_with_the_reason(make, config, reason):
    model = add_prefix(make(), config)
    with pytest.raises(PrefixTuneError, match=reason):
        cache_pairs(model)


def test_embedding_prompt_exports_as_it_is():
    model = add_prefix(make_model("llama"), PrefixConfig(length=3, kind="embedding", seed=1))
    cache_pairs(model)  # verified against prefixtune's logits inside


def test_rotation_is_the_models_own_rope_composed():
    model = make_model("llama")
    rotary = model.model.rotary_emb
    keys = torch.randn(2, 3, 16)
    twice = rotate_keys(rotary, rotate_keys(rotary, keys, 2), 3)
    torch.testing.assert_close(twice, rotate_keys(rotary, keys, 5), rtol=0, atol=1e-5)
    torch.testing.assert_close(rotate_keys(rotary, keys, 0), keys)
