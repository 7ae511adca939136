"""The prefix variants on the real bundled SmolLM2-135M (30 layers, 9 query / 3 KV heads). Slow."""

from __future__ import annotations

import pytest
import torch

from prefixtune import PrefixConfig, add_prefix, load_base

pytestmark = pytest.mark.slow

SOURCE = "name[The Vaults], eatType[pub], area[city centre]\n"


@pytest.fixture(scope="module")
def smollm2():
    return load_base("smollm2-135m")


def test_a_text_prompt_is_the_words_themselves_and_trains(smollm2):
    base, tokenizer = smollm2
    config = PrefixConfig(kind="embedding", reparam="flat", init="text", init_text="table-to-text:")
    model = add_prefix(base, config, tokenizer=tokenizer)
    try:
        words = tokenizer("table-to-text:", add_special_tokens=False)["input_ids"]
        ids = tokenizer([SOURCE], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            ours = model(ids).logits
            model.injector.current = None
            bare = base(torch.cat([torch.tensor([words]), ids], dim=1)).logits[:, len(words) :]
        torch.testing.assert_close(ours, bare, rtol=0, atol=1e-4)
        model.train()
        loss = model(ids, labels=ids).loss
        loss.backward()
        grad = model.prefixes["default"].reparam.prefix.grad
        assert grad.shape == (len(words), 576) and grad.abs().sum() > 0
    finally:
        model.unload()


def test_a_last_layers_prefix_and_an_infix_leave_the_source_alone(smollm2):
    base, tokenizer = smollm2
    model = add_prefix(base, PrefixConfig(length=5, reparam="flat", seed=0, layers=[-2, -1]))
    try:
        model.add("infix", PrefixConfig(length=5, kind="infix", reparam="flat", seed=1))
        assert sum(p.numel() for p in model.prefix_parameters("default")) == 5 * 2 * 2 * 3 * 64
        ids = tokenizer([SOURCE], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            layered = model(ids, output_hidden_states=True).hidden_states
            infix = model(ids, prefix="infix", infix_at=torch.tensor([ids.shape[1] - 1])).logits
            model.injector.current = None
            bare = base(ids, output_hidden_states=True)
        torch.testing.assert_close(layered[28], bare.hidden_states[28], rtol=0, atol=0)  # layers 0..27
        assert (layered[30] - bare.hidden_states[30]).abs().max() > 1e-3
        torch.testing.assert_close(infix[:, :-1], bare.logits[:, :-1], rtol=0, atol=1e-4)
        assert (infix[:, -1] - bare.logits[:, -1]).abs().max() > 1e-3
    finally:
        model.unload()
