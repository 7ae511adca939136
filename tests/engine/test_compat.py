"""The cache keyword: the one prefixtune passes is the one the installed transformers honours."""

from __future__ import annotations

import inspect
import warnings

import torch
from conftest import make_model, random_ids
from transformers import DynamicCache

from prefixtune.engine.compat import CACHE_KWARG, cache_in, cache_kwargs, cache_out


def test_the_cache_keyword_is_a_parameter_of_the_models_forward():
    for family in ("llama", "gpt2"):
        assert CACHE_KWARG in inspect.signature(type(make_model(family)).forward).parameters


def test_a_cache_passed_and_read_back_through_compat_continues_the_sequence_without_warnings():
    model, ids = make_model("llama"), random_ids(1, 6)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecated keyword would warn
        whole = model(ids).logits[:, -1]
        cache = cache_out(model(ids[:, :4], use_cache=True, **cache_kwargs(DynamicCache())))
        assert cache.get_seq_length() == 4
        last = model(ids[:, 4:], use_cache=True, **cache_kwargs(cache)).logits[:, -1]
    torch.testing.assert_close(last, whole, rtol=0, atol=1e-5)


def test_a_cache_is_found_under_either_name():
    cache = DynamicCache()
    assert cache_in({"cache": cache}) is cache
    assert cache_in({"past_key_values": cache}) is cache
    assert cache_in({"past_key_values": None, "input_ids": 1}) is None
