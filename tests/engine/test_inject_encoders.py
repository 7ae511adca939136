"""Prefixes in bidirectional encoder self-attention: BERT, RoBERTa, DistilBERT, ELECTRA."""

from __future__ import annotations

import pytest
import torch
from conftest import random_ids
from encoders import ENCODERS, make_encoder, right_pad

from prefixtune import PrefixConfig, PrefixTuneError, add_prefix, load_prefix

ATOL = 1e-5


@pytest.fixture(params=ENCODERS)
def encoder(request) -> str:
    return request.param


def _prefixed(family: str, attn: str = "sdpa"):
    model = add_prefix(make_encoder(family, attn), PrefixConfig(length=4, reparam="flat", seed=3))
    model.add("short", PrefixConfig(length=2, reparam="mlp", mlp_hidden=16, seed=4))
    return model


def _padded_batch(family: str) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    seqs = [random_ids(1, n, seed=n)[0] for n in (7, 4, 6, 5)]
    ids, mask = right_pad(seqs, make_encoder(family).config.pad_token_id)
    return seqs, ids, mask


def test_encoder_slots_are_bidirectional_and_read_off_the_modules(encoder):
    model = _prefixed(encoder)
    assert model.injector.bidirectional
    assert [(s.kv_heads, s.head_dim) for s in model.layout.slots] == [(4, 16), (4, 16)]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("prefixes.") for n in trainable)


def test_masked_out_prefix_gives_the_bare_encoder(encoder):
    _, ids, mask = _padded_batch(encoder)
    bare = make_encoder(encoder)(ids, attention_mask=mask).last_hidden_state
    model = _prefixed(encoder)
    with_prefix = model(ids, attention_mask=mask).last_hidden_state
    assert (with_prefix - bare).abs().max() > 1e-2  # the prefix does change the output
    # rows without a prefix in a mixed batch: the prefix must not disturb their positions or mask
    mixed = model(ids, attention_mask=mask, prefix=[None, "default", None, "short"]).last_hidden_state
    real = mask.bool()
    for row in (0, 2):
        torch.testing.assert_close(mixed[row][real[row]], bare[row][real[row]], rtol=0, atol=ATOL)


def test_padded_rows_with_different_prefixes_equal_their_solo_runs(encoder):
    seqs, ids, mask = _padded_batch(encoder)
    model = _prefixed(encoder)
    rows = ["default", "short", None, "short"]
    batched = model(ids, attention_mask=mask, prefix=rows).last_hidden_state
    for i, seq in enumerate(seqs):
        alone = model(seq[None], prefix=[rows[i]]).last_hidden_state
        torch.testing.assert_close(batched[i, : len(seq)], alone[0], rtol=0, atol=ATOL)


def test_eager_and_sdpa_agree_on_encoders(encoder):
    _, ids, mask = _padded_batch(encoder)
    rows = ["default", "short", None, "default"]
    eager = _prefixed(encoder, "eager")(ids, attention_mask=mask, prefix=rows).last_hidden_state
    sdpa = _prefixed(encoder, "sdpa")(ids, attention_mask=mask, prefix=rows).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(eager[real], sdpa[real], rtol=0, atol=ATOL)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_encoder_attention_stays_bidirectional(attn):
    model = _prefixed("bert", attn)
    ids = random_ids(2, 8)
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] + 1 - 3) % 93 + 3
    before, after = model(ids).last_hidden_state, model(changed).last_hidden_state
    assert (before[:, :6] - after[:, :6]).abs().max() > 1e-4  # earlier tokens see later ones


def test_encoder_prefix_round_trips_through_a_folder(tmp_path, encoder):
    _, ids, mask = _padded_batch(encoder)
    model = _prefixed(encoder)
    expected = model(ids, attention_mask=mask, prefix="short").last_hidden_state
    model.fold().save(tmp_path / "p", name="short")
    loaded = load_prefix(make_encoder(encoder), tmp_path / "p")
    got = loaded(ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_shifted_positions_are_refused_on_an_encoder():
    with pytest.raises(PrefixTuneError, match="positions='keep'"):
        add_prefix(make_encoder("bert"), PrefixConfig(length=2, positions="shifted"))
