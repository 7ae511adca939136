"""Tiny random-init models built from configs (one per family the core must support), and a tokenizer.

Everything here is built offline, in fp32, in eval mode, so numeric comparisons are exact to ~1e-6.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

VOCAB = 96
# Larger than the usual 0.02 so that attention is far from uniform and position or mask errors show.
INIT = 0.15


def _gpt2(attn: str):
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=VOCAB,
            bos_token_id=2,
            eos_token_id=2,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=64,
            attn_implementation=attn,
            initializer_range=INIT,
        )
    )


def _llama(attn: str):
    # grouped-query attention: 4 query heads share 2 KV heads
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attn_implementation=attn,
        initializer_range=INIT,
    )
    return LlamaForCausalLM(config)


def _qwen2(attn: str):
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attn_implementation=attn,
        initializer_range=INIT,
    )
    return Qwen2ForCausalLM(config)


def _gemma3(attn: str, sliding: bool = True):
    # sliding-window layers, head_dim (24) != hidden / heads (16), a single KV head
    kinds = (
        ["sliding_attention", "sliding_attention", "full_attention"] if sliding else ["full_attention"] * 3
    )
    config = Gemma3TextConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=24,
        sliding_window=4,
        layer_types=kinds,
        max_position_embeddings=64,
        attn_implementation=attn,
        initializer_range=INIT,
    )
    return Gemma3ForCausalLM(config)


FAMILIES = {"gpt2": _gpt2, "llama": _llama, "qwen2": _qwen2, "gemma3": _gemma3}


def make_model(family: str, attn: str = "sdpa", seed: int = 0, **options):
    """A tiny random causal LM of `family`, deterministic for a seed."""
    torch.manual_seed(seed)
    model = FAMILIES[family](attn, **options).eval()
    model.generation_config.pad_token_id = 0
    return model


@pytest.fixture(params=sorted(FAMILIES))
def family(request) -> str:
    return request.param


@pytest.fixture
def tokenizer():
    """A whitespace word-level tokenizer over the tiny models' vocabulary ("w0".."w92")."""
    from synthetic import word_tokenizer

    return word_tokenizer()


def random_ids(rows: int, length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (rows, length), generator=generator)
