"""The core on the real bundled SmolLM2-135M (LLaMA architecture, 9 query / 3 KV heads). Slow."""

from __future__ import annotations

import pytest
import torch

from prefixtune import PrefixConfig, add_prefix, load_base, load_prefix

pytestmark = pytest.mark.slow

TEXT = [
    "name[The Vaults], eatType[pub], priceRange[more than £30], area[city centre]\n",
    "name[Alimentum], food[Chinese], near[Café Rouge]\n",
]


@pytest.fixture(scope="module")
def smollm2():
    return load_base("smollm2-135m")


@pytest.fixture
def model(smollm2):
    base, tokenizer = smollm2
    prefixed = add_prefix(
        base,
        PrefixConfig(init="text", init_text="table-to-text:", mlp_hidden=64, seed=0),
        tokenizer=tokenizer,
    )
    yield prefixed, tokenizer
    prefixed.unload()


def _batch(tokenizer):
    return tokenizer(TEXT, return_tensors="pt", padding=True)


def test_slots_are_read_off_smollm2(model):
    prefixed, tokenizer = model
    slots = prefixed.layout.slots
    assert len(slots) == 30
    assert {(s.heads, s.kv_heads, s.head_dim) for s in slots} == {(9, 3, 64)}
    words = tokenizer("table-to-text:", add_special_tokens=False)["input_ids"]
    assert prefixed.prefixes["default"].length == len(words)


def test_masked_prefix_and_mixed_rows_are_exact(model, smollm2):
    prefixed, tokenizer = model
    batch = _batch(tokenizer)  # row 1 is left-padded
    prefixed.add("other", PrefixConfig(length=3, reparam="flat", seed=1))
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        masked = prefixed(**batch, prefix=[None, None]).logits
        mixed = prefixed(**batch, prefix=["other", None]).logits
        alone = [
            prefixed(**tokenizer([text], return_tensors="pt"), prefix=[name]).logits[0]
            for text, name in zip(TEXT, ["other", None], strict=True)
        ]
        prefixed.unload()
        reference = smollm2[0](**batch).logits
        add_prefix(smollm2[0], PrefixConfig(length=1))  # the fixture's teardown unloads a fresh wrapper
    torch.testing.assert_close(masked[real], reference[real], rtol=0, atol=1e-5)
    # 30 layers of fp32 rounding over differently padded shapes: 1e-4 on logits of magnitude ~20
    for row in (0, 1):
        torch.testing.assert_close(mixed[row][real[row]], alone[row], rtol=0, atol=1e-4)


def test_a_few_steps_lower_the_loss_and_the_prefix_round_trips(model, tmp_path):
    prefixed, tokenizer = model
    batch = _batch(tokenizer)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(prefixed.prefix_parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = prefixed(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    prompt = tokenizer([TEXT[1]], return_tensors="pt")
    cached = prefixed.generate(**prompt, max_new_tokens=8, do_sample=False)
    uncached = prefixed.generate(**prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert cached.tolist() == uncached.tolist()
    with torch.no_grad():
        expected = prefixed(**batch).logits
    prefixed.save(tmp_path / "p")
    base = prefixed.unload()
    reloaded = load_prefix(base, tmp_path / "p")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, expected, rtol=0, atol=1e-4)
    reloaded.unload()
    add_prefix(base, PrefixConfig(length=1))  # the fixture's teardown unloads a fresh wrapper
