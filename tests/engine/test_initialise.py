"""Initialisation: zero, random (at the model's own key/value scale) and from real words."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model

from prefixtune import PrefixConfig, PrefixTuneError, add_prefix
from prefixtune.engine.initialise import record_keys_values

TEXT = "w5 w17 w42"


def _text_keys_values(model, tokenizer, text: str = TEXT) -> torch.Tensor:
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    return record_keys_values(model.base, model.injector, model.layout, ids)


@pytest.mark.parametrize("reparam", ["flat", "mlp"])
def test_text_init_starts_at_the_words_keys_and_values(family, tokenizer, reparam):
    model = add_prefix(
        make_model(family),
        PrefixConfig(reparam=reparam, init="text", init_text=TEXT, seed=0),
        tokenizer=tokenizer,
    )
    prefix = model.prefixes["default"]
    assert prefix.length == 3  # follows the text's token count
    target = _text_keys_values(model, tokenizer)
    # flat copies them; mlp solves its output layer by least squares (exact for P <= hidden + 1)
    torch.testing.assert_close(prefix.materialise().detach(), target, rtol=1e-4, atol=1e-4)


def test_text_init_matches_what_each_layer_computes_for_the_words(tokenizer):
    model = add_prefix(
        make_model("llama"), PrefixConfig(reparam="flat", init="text", init_text=TEXT), tokenizer=tokenizer
    )
    ids = torch.tensor([tokenizer(TEXT, add_special_tokens=False)["input_ids"]])
    bare_keys = []
    layer = model.base.model.layers[1].self_attn
    hook = layer.k_proj.register_forward_hook(lambda m, i, o: bare_keys.append(o))
    model.injector.current = None
    model.base(input_ids=ids, use_cache=False)
    hook.remove()
    key_layer1, _ = model.prefixes["default"].slot_tensors()[1]  # (H_kv, P, D), after RoPE
    # position 0 has no rotation, so its key equals the raw projection
    torch.testing.assert_close(
        key_layer1[:, 0].detach(), bare_keys[0][0, 0].view(2, 16), rtol=1e-5, atol=1e-5
    )


def test_text_init_with_a_given_length_repeats_or_truncates_the_words(tokenizer):
    model = add_prefix(
        make_model("llama"),
        PrefixConfig(length=5, reparam="flat", init="text", init_text=TEXT),
        tokenizer=tokenizer,
    )
    assert model.prefixes["default"].length == 5
    repeated = _text_keys_values(model, tokenizer, "w5 w17 w42 w5 w17")
    torch.testing.assert_close(model.prefixes["default"].materialise().detach(), repeated)


def test_zero_init_gives_a_zero_prefix(family):
    for reparam in ("flat", "mlp"):
        model = add_prefix(
            make_model(family), PrefixConfig(length=3, reparam=reparam, init="zero", mlp_hidden=8)
        )
        assert model.prefixes["default"].materialise().abs().max() == 0


def test_random_flat_init_follows_the_models_scale_and_the_seed():
    a = add_prefix(make_model("llama"), PrefixConfig(length=6, reparam="flat", seed=5))
    b = add_prefix(make_model("llama"), PrefixConfig(length=6, reparam="flat", seed=5))
    c = add_prefix(make_model("llama"), PrefixConfig(length=6, reparam="flat", seed=6))
    pa = a.prefixes["default"].materialise()
    assert torch.equal(pa, b.prefixes["default"].materialise())
    assert not torch.equal(pa, c.prefixes["default"].materialise())
    sample = record_keys_values(a.base, a.injector, a.layout, torch.arange(1, 9)[None])
    ratio = pa.std() / sample.std()
    assert 0.5 < ratio < 2.0


def test_text_init_errors(tokenizer):
    with pytest.raises(PrefixTuneError, match="needs init_text"):
        PrefixConfig(init="text")
    with pytest.raises(PrefixTuneError, match="needs the tokenizer"):
        add_prefix(make_model("llama"), PrefixConfig(init="text", init_text=TEXT))
    with pytest.raises(PrefixTuneError, match="reparam='lora'"):
        PrefixConfig(reparam="lora")
