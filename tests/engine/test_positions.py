"""Position conventions: `keep` (real tokens at 0..n-1) and `shifted` (at P..P+n-1, like PEFT)."""

from __future__ import annotations

import torch
from conftest import make_model, random_ids
from transformers import DynamicCache

from prefixtune import PrefixConfig, add_prefix
from prefixtune.engine.compat import cache_kwargs


def _as_past_key_values(model, rows: int) -> DynamicCache:
    """The prefix as P cached past tokens: how PEFT and Li & Liang's code feed it."""
    cache = DynamicCache(config=model.base.config)
    for index, (key, value) in enumerate(model.prefixes["default"].slot_tensors()):
        cache.update(key.expand(rows, -1, -1, -1).detach(), value.expand(rows, -1, -1, -1).detach(), index)
    return cache


def test_shifted_convention_equals_the_prefix_as_past_key_values(family):
    # Gemma 3 with global attention only: in sliding-window layers prefixtune keeps the prefix
    # visible, while past tokens would leave the window (see the next test).
    options = {"sliding": False} if family == "gemma3" else {}
    model = add_prefix(
        make_model(family, **options), PrefixConfig(length=5, reparam="flat", positions="shifted", seed=1)
    )
    ids = random_ids(2, 7)
    ours = model(ids).logits
    bare = model.base
    past = _as_past_key_values(model, rows=2)
    mask = torch.ones(2, 5 + 7, dtype=torch.long)
    model.injector.current = None  # run the base with no injected prefix
    reference = bare(input_ids=ids, attention_mask=mask, **cache_kwargs(past)).logits
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


def test_keep_convention_differs_from_shifted_on_position_aware_models(family):
    ids = random_ids(1, 7)
    keep = add_prefix(make_model(family), PrefixConfig(length=5, reparam="flat", seed=1))
    shifted = add_prefix(
        make_model(family), PrefixConfig(length=5, reparam="flat", positions="shifted", seed=1)
    )
    assert (keep(ids).logits - shifted(ids).logits).abs().max() > 1e-3


def test_shifted_generation_with_cache_equals_without(family):
    model = add_prefix(
        make_model(family), PrefixConfig(length=3, reparam="flat", positions="shifted", seed=2)
    )
    ids = random_ids(2, 4)
    with_cache = model.generate(ids, max_new_tokens=5, do_sample=False)
    without = model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=False)
    assert with_cache.tolist() == without.tolist()


def test_sliding_window_layers_keep_the_prefix_visible_to_every_query():
    """A query far past the window still attends to the prefix: changing the prefix changes it."""
    model = add_prefix(make_model("gemma3"), PrefixConfig(length=2, reparam="flat", seed=1))
    model.add("other", PrefixConfig(length=2, reparam="flat", seed=2))
    ids = random_ids(1, 12)  # window is 4: the last query's window holds only real tokens
    first = model.base.model.layers[0].self_attn  # a sliding layer
    assert first.sliding_window == 4
    outputs = []
    for name in ("default", "other"):
        hidden: list[torch.Tensor] = []
        handle = first.register_forward_hook(lambda m, i, o, store=hidden: store.append(o[0]))
        model(ids, prefix=name)
        handle.remove()
        outputs.append(hidden[0][0, -1])
    assert (outputs[0] - outputs[1]).abs().max() > 1e-3
