"""DeBERTa-v2/v3 (disentangled attention, outside the AttentionInterface): prefixes through hooks."""

from __future__ import annotations

import pytest
import torch
from conftest import INIT, VOCAB, random_ids
from encoders import right_pad
from transformers import DebertaV2Config, DebertaV2ForSequenceClassification, DebertaV2Model

from prefixtune import PrefixConfig, PrefixTuneError, add_prefix, load_prefix
from prefixtune.train.heads import train_head

ATOL = 1e-5
STYLES = {
    # DeBERTa-v2: absolute positions added at the input too, separate position projections
    "v2": {"position_biased_input": True},
    # DeBERTa-v3: log-bucketed positions, key/query projections shared with the position terms
    "v3": {
        "share_att_key": True,
        "position_buckets": 8,
        "position_biased_input": False,
        "norm_rel_ebd": "layer_norm",
    },
}


def _deberta(style: str, head: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    config = DebertaV2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=64,
        initializer_range=INIT,
        relative_attention=True,
        pos_att_type=["c2p", "p2c"],
        max_relative_positions=16,
        pad_token_id=0,
        num_labels=2,
        **STYLES[style],
    )
    return (DebertaV2ForSequenceClassification if head else DebertaV2Model)(config).eval()


@pytest.fixture(params=sorted(STYLES))
def style(request) -> str:
    return request.param


def _prefixed(style: str):
    model = add_prefix(_deberta(style), PrefixConfig(length=4, reparam="flat", seed=3))
    model.add("short", PrefixConfig(length=2, reparam="mlp", mlp_hidden=16, seed=4))
    return model


def _batch():
    seqs = [random_ids(1, n, seed=n)[0] for n in (7, 4, 6)]
    return (seqs, *right_pad(seqs, 0))


def test_slots_are_found_and_only_the_prefix_trains(style):
    model = _prefixed(style)
    assert [(s.kv_heads, s.head_dim) for s in model.layout.slots] == [(4, 16), (4, 16)]
    assert model.injector.bidirectional
    assert all(n.startswith("prefixes.") for n, p in model.named_parameters() if p.requires_grad)


def test_masked_out_prefix_and_unload_give_the_bare_model(style):
    _, ids, mask = _batch()
    bare = _deberta(style)(ids, attention_mask=mask).last_hidden_state
    model = _prefixed(style)
    real = mask.bool()
    assert (model(ids, attention_mask=mask).last_hidden_state - bare)[real].abs().max() > 1e-2
    mixed = model(ids, attention_mask=mask, prefix=[None, "default", None]).last_hidden_state
    for row in (0, 2):
        torch.testing.assert_close(mixed[row][real[row]], bare[row][real[row]], rtol=0, atol=ATOL)
    base = model.unload()
    torch.testing.assert_close(base(ids, attention_mask=mask).last_hidden_state, bare, rtol=0, atol=0)


def test_padded_rows_with_different_prefixes_equal_their_solo_runs(style):
    seqs, ids, mask = _batch()
    model = _prefixed(style)
    rows = ["default", None, "short"]
    batched = model(ids, attention_mask=mask, prefix=rows).last_hidden_state
    for i, seq in enumerate(seqs):
        alone = model(seq[None], prefix=[rows[i]]).last_hidden_state
        torch.testing.assert_close(batched[i, : len(seq)], alone[0], rtol=0, atol=ATOL)


def test_prefix_columns_get_content_scores_only(style):
    """One attention module against the formula: softmax([q P_k^T / s, q K^T / s + rel]) [P_v; V]."""
    model = _prefixed(style)
    encoder = model.base.encoder
    attention = encoder.layer[0].attention.self
    hidden = torch.randn(1, 5, 64, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(1, 1, 5, 5)
    extras = {"relative_pos": encoder.get_rel_pos(hidden), "rel_embeddings": encoder.get_rel_embedding()}
    model.injector.current = model.prefix_batch("default", 1)
    got = attention(hidden, mask, **extras)[0]  # (1, N, H*D)

    def heads(x):  # (1, N, H*D) -> (H, N, D)
        return x.view(5, 4, 16).transpose(0, 1)

    q, k, v = (
        heads(proj(hidden)) for proj in (attention.query_proj, attention.key_proj, attention.value_proj)
    )
    key, value = model.prefixes["default"].slot_tensors()[0]  # (H, P, D)
    model.injector.current = None
    own_bias = type(attention).disentangled_attention_bias  # the class's method, not the hooked one
    rel = own_bias(attention, q, k, extras["relative_pos"], extras["rel_embeddings"], 3)
    scale = (16 * 3) ** 0.5
    scores = torch.cat([q @ key.transpose(1, 2) / scale, q @ k.transpose(1, 2) / scale + rel], dim=-1)
    expected = (scores.softmax(-1) @ torch.cat([value, v], dim=1)).transpose(0, 1).reshape(1, 5, 64)
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)


def test_classifier_with_head_round_trips(tmp_path, style):
    model = add_prefix(_deberta(style, head=True), PrefixConfig(length=3, reparam="flat", seed=0))
    train_head(model, seed=1)
    ids = random_ids(2, 6)
    model(ids, labels=torch.tensor([0, 1])).loss.backward()
    assert all(p.grad is not None for p in model.prefix_parameters())
    expected = model(ids).logits
    model.save(tmp_path / "p")
    loaded = load_prefix(_deberta(style, head=True), tmp_path / "p")
    torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=1e-6)


def test_prefixing_a_prefixed_deberta_twice_is_refused():
    model = _prefixed("v2")
    with pytest.raises(PrefixTuneError, match="already carries prefixes"):
        add_prefix(model.base, PrefixConfig(length=2))
