"""The injection: exact batching, masking, backends and causality on every model family."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, random_ids

from prefixtune import PrefixConfig, add_prefix
from prefixtune.engine.inject import Binding, extend_mask

ATOL = 1e-5


def _prefixed(family: str, attn: str = "sdpa", **config):
    model = add_prefix(make_model(family, attn), PrefixConfig(length=4, reparam="flat", seed=3, **config))
    model.add("short", PrefixConfig(length=2, reparam="mlp", mlp_hidden=16, seed=4))
    return model


def test_slots_are_read_off_the_attention_modules(family):
    model = _prefixed(family)
    base = model.base
    expected = {
        "gpt2": (2, 4, 16),
        "llama": (2, 2, 16),
        "qwen2": (2, 2, 16),
        "gemma3": (3, 1, 24),
    }[family]
    slots = model.layout.slots
    assert (len(slots), slots[0].kv_heads, slots[0].head_dim) == expected
    names = dict(base.named_modules())
    assert all(s.name in names for s in slots)


def test_the_probe_leaves_only_the_bindings_behind(family):
    """The probe's recorder sits on the model's modules only while it runs (no module-level state):
    afterwards the attention modules hold their bindings and no other module holds anything."""
    model = _prefixed(family)
    held = {name: vars(m).get("_prefixtune_binding") for name, m in model.base.named_modules()}
    bound = {name for name, binding in held.items() if binding is not None}
    assert bound == {slot.name for slot in model.layout.slots}
    assert all(isinstance(held[name], Binding) for name in bound)
    other = make_model(family)
    other.set_attn_implementation("prefixtune")  # no probe running: an unbound call is an error
    with pytest.raises(RuntimeError, match="not bound to a PrefixModel"):
        other(random_ids(1, 3))


def test_masked_out_prefix_gives_the_bare_models_logits(family):
    ids = random_ids(3, 9)
    bare = make_model(family)(ids).logits
    model = _prefixed(family)
    assert (model(ids).logits - bare).abs().max() > 1e-3  # the prefix does change the output
    torch.testing.assert_close(model(ids, prefix=[None, None, None]).logits, bare, rtol=0, atol=1e-6)


def test_unload_gives_back_the_bare_model(family):
    ids = random_ids(2, 6)
    bare = make_model(family)(ids).logits
    base = _prefixed(family).unload()
    torch.testing.assert_close(base(ids).logits, bare, rtol=0, atol=0)


def test_rows_with_different_prefixes_equal_their_solo_runs(family):
    ids = random_ids(4, 8)
    model = _prefixed(family)
    rows = ["default", "short", None, "short"]
    mixed = model(ids, prefix=rows).logits
    for i, name in enumerate(rows):
        alone = model(ids[i : i + 1], prefix=[name]).logits
        torch.testing.assert_close(mixed[i : i + 1], alone, rtol=0, atol=ATOL)


def _left_pad(rows: list[torch.Tensor], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    return ids, mask


@pytest.mark.parametrize("positions", ["keep", "shifted"])
def test_left_padded_batch_equals_rows_alone(family, positions):
    model = _prefixed(family, positions=positions)
    seqs = [random_ids(1, n, seed=n)[0] for n in (7, 4, 6)]
    ids, mask = _left_pad(seqs)
    rows = ["default", "short", None]
    batched = model(ids, attention_mask=mask, prefix=rows).logits
    for i, seq in enumerate(seqs):
        alone = model(seq[None], prefix=[rows[i]]).logits
        torch.testing.assert_close(batched[i, -len(seq) :], alone[0], rtol=0, atol=ATOL)


@pytest.mark.parametrize("positions", ["keep", "shifted"])
def test_left_padded_generation_equals_rows_alone(family, positions):
    model = _prefixed(family, positions=positions)
    seqs = [random_ids(1, n, seed=10 + n)[0] for n in (6, 3, 5)]
    ids, mask = _left_pad(seqs)
    rows = ["default", None, "short"]
    out = model.generate(ids, attention_mask=mask, prefix=rows, max_new_tokens=6, do_sample=False)
    for i, seq in enumerate(seqs):
        alone = model.generate(seq[None], prefix=[rows[i]], max_new_tokens=6, do_sample=False)
        assert out[i, -6:].tolist() == alone[0, -6:].tolist()


def test_eager_and_sdpa_agree(family):
    ids = random_ids(3, 9)
    _, mask = _left_pad([random_ids(1, n)[0] for n in (9, 5, 7)])
    rows = ["default", "short", None]
    eager = _prefixed(family, "eager")(ids, attention_mask=mask, prefix=rows).logits
    sdpa = _prefixed(family, "sdpa")(ids, attention_mask=mask, prefix=rows).logits
    real = mask.bool()
    torch.testing.assert_close(eager[real], sdpa[real], rtol=0, atol=ATOL)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_changing_a_later_token_leaves_earlier_logits_unchanged(family, attn):
    model = _prefixed(family, attn)
    ids = random_ids(2, 10)
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] + 1 - 3) % 93 + 3
    for rows in (None, ["short", None]):
        before, after = model(ids, prefix=rows).logits, model(changed, prefix=rows).logits
        torch.testing.assert_close(before[:, :6], after[:, :6], rtol=0, atol=0)
        assert (before[:, 6:] - after[:, 6:]).abs().max() > 1e-4


def test_extend_mask_builds_causal_mask_with_per_row_prefix_columns():
    query = torch.zeros(2, 1, 3, 4)  # (B, H, Q, D)
    key = torch.zeros(2, 1, 3, 4)
    visible = torch.tensor([[True, True], [True, False]])
    mask = extend_mask(None, visible, query, key, prefix_len=2, causal=True)
    assert mask.shape == (2, 1, 3, 5)
    expected_row1 = torch.tensor([[1, 0, 1, 0, 0], [1, 0, 1, 1, 0], [1, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask[1, 0], expected_row1)
    assert mask[0, 0, :, :2].all()


def test_extend_mask_keeps_additive_float_masks_additive():
    query = key = torch.zeros(1, 1, 2, 4)
    floats = torch.tensor([[[[0.0, -1e9], [0.0, 0.0]]]])
    mask = extend_mask(floats, torch.tensor([[False, True]]), query, key, prefix_len=2, causal=True)
    assert mask.dtype == torch.float32
    assert mask[0, 0, 0].tolist() == [torch.finfo(torch.float32).min, 0.0, 0.0, -1e9]
