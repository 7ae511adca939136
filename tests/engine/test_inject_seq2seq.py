"""Encoder-decoder models: encoder, decoder and cross-attention prefixes, with the core's guarantees.

Tiny random BART, T5, mBART, mT5, Marian and Pegasus models (see `seq2seq_models`): slots and their
kinds, exact batching, eager = SDPA, the cache, gradients, folding, T5's position bias.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import random_ids
from seq2seq_models import EOS, PAD, SEQ2SEQ, make_seq2seq, right_padded

from prefixtune import PrefixConfig, PrefixTuneError, add_prefix
from prefixtune.engine.compat import cache_out
from prefixtune.engine.inject import _BINDING_ATTR

ATOL = 1e-5
KINDS = ["self", "self", "decoder", "cross", "decoder", "cross"]  # 2 encoder layers, 2 decoder layers


CORE = ["bart", "t5"]  # the two attention codes; the other families reuse one of them


@pytest.fixture(params=sorted(SEQ2SEQ))
def family(request) -> str:
    """Every family: for the forward-pass parity tests."""
    return request.param


@pytest.fixture(params=CORE)
def core(request) -> str:
    """BART and T5: for the slower tests (generation, gradients, folding)."""
    return request.param


def _prefixed(family: str, attn: str = "sdpa", **config):
    settings = {"length": 4, "reparam": "mlp", "mlp_hidden": 16, "seed": 3, **config}
    model = add_prefix(make_seq2seq(family, attn), PrefixConfig(**settings))
    model.add("short", PrefixConfig(length=2, reparam="flat", seed=4))
    return model


def _batch(rows: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded encoder inputs of different lengths and decoder inputs of one length."""
    ids, mask = right_padded([random_ids(1, n, seed=seed + n)[0] for n in (7, 4, 6, 5)[:rows]])
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": random_ids(rows, 5, seed=seed + 9)}


def test_slots_and_their_kinds_are_read_off_the_attention_calls(family):
    model = _prefixed(family)
    slots = model.layout.slots
    assert [s.kind for s in slots] == KINDS
    head_dim = 8 if "t5" in family else 16  # T5's d_kv = 8 while d_model / heads = 16
    assert {(s.kv_heads, s.head_dim) for s in slots} == {(4, head_dim)}
    names = dict(model.base.named_modules())
    assert all(s.name in names for s in slots)


def test_each_kind_has_its_own_mlp(core):
    model = _prefixed(core)
    prefix = model.prefixes["default"]
    assert list(prefix.reparam.parts) == ["self", "decoder", "cross"]
    before = prefix.materialise().detach().clone()
    with torch.no_grad():
        prefix.reparam.parts["cross"].embedding.add_(1.0)
    changed = (prefix.materialise().detach() - before).abs().amax(dim=0) > 0  # (W,)
    assert torch.equal(changed, torch.isin(torch.arange(model.layout.width), model.layout.columns("cross")))


def test_masked_out_prefix_gives_the_bare_models_logits(family):
    batch = _batch()
    bare = make_seq2seq(family)(**batch).logits
    model = _prefixed(family)
    assert (model(**batch).logits - bare).abs().max() > 1e-3
    torch.testing.assert_close(model(**batch, prefix=[None] * 3).logits, bare, rtol=0, atol=ATOL)


def test_the_encoder_prefix_changes_the_encoders_output(family):
    """Unlike PEFT, whose seq2seq prefix reaches the decoder only, the encoder itself sees a prefix."""
    batch = _batch()
    bare = make_seq2seq(family)(**batch).encoder_last_hidden_state
    model = _prefixed(family)
    real = batch["attention_mask"].bool()
    assert (model(**batch).encoder_last_hidden_state[real] - bare[real]).abs().max() > 1e-2
    unprefixed = model(**batch, prefix=[None] * 3).encoder_last_hidden_state
    torch.testing.assert_close(unprefixed[real], bare[real], rtol=0, atol=ATOL)


def test_rows_with_different_prefixes_equal_their_solo_runs(family):
    batch = _batch(4)
    model = _prefixed(family)
    rows = ["default", "short", None, "short"]
    mixed = model(**batch, prefix=rows).logits
    for i, name in enumerate(rows):
        n = int(batch["attention_mask"][i].sum())
        alone = model(
            input_ids=batch["input_ids"][i : i + 1, :n],
            decoder_input_ids=batch["decoder_input_ids"][i : i + 1],
            prefix=[name],
        ).logits
        torch.testing.assert_close(mixed[i : i + 1], alone, rtol=0, atol=ATOL)


def test_eager_and_sdpa_agree(family):
    batch = _batch()
    rows = ["default", "short", None]
    eager = _prefixed(family, "eager")(**batch, prefix=rows).logits
    sdpa = _prefixed(family, "sdpa")(**batch, prefix=rows).logits
    torch.testing.assert_close(eager, sdpa, rtol=0, atol=ATOL)


def test_a_later_decoder_token_leaves_earlier_logits_unchanged(core):
    model = _prefixed(core)
    batch = _batch()
    changed = {**batch, "decoder_input_ids": batch["decoder_input_ids"].clone()}
    changed["decoder_input_ids"][:, 3] = changed["decoder_input_ids"][:, 3] % 90 + 4
    before, after = model(**batch).logits, model(**changed).logits
    torch.testing.assert_close(before[:, :3], after[:, :3], rtol=0, atol=0)
    assert (before[:, 3:] - after[:, 3:]).abs().max() > 1e-4


GREEDY, BEAM, SAMPLE = (
    {"do_sample": False},
    {"num_beams": 3, "do_sample": False},
    {"do_sample": True, "top_k": 5},
)


@pytest.mark.parametrize(
    ("family", "options"),
    [(f, GREEDY) for f in sorted(SEQ2SEQ)] + [(f, o) for f in CORE for o in (BEAM, SAMPLE)],
    ids=[f"{f}-greedy" for f in sorted(SEQ2SEQ)] + [f"{f}-{o}" for f in CORE for o in ("beam", "sample")],
)
def test_generation_with_the_cache_equals_generation_without_it(family, options):
    model = _prefixed(family)
    batch = _batch(2)
    del batch["decoder_input_ids"]
    # pad, unk and eos suppressed so that every step is a real choice among words
    options = {**options, "max_new_tokens": 6, "suppress_tokens": [PAD, 1, EOS]}
    outputs = []
    for use_cache in (True, False):
        torch.manual_seed(7)
        outputs.append(model.generate(**batch, prefix=["default", "short"], use_cache=use_cache, **options))
    assert outputs[0].tolist() == outputs[1].tolist()
    bare = model.generate(**batch, prefix=[None, None], use_cache=True, **options)
    alone = model.generate(**{k: v[1:, :4] for k, v in batch.items()}, prefix=["short"], **options)
    if not options["do_sample"]:
        assert outputs[0][1].tolist() == alone[0].tolist()
    assert outputs[0].shape == bare.shape


def test_the_cache_holds_only_real_keys_and_the_cross_prefix_is_added_each_step(core):
    model = _prefixed(core)
    batch = _batch(2)
    del batch["decoder_input_ids"]
    out = model.generate(
        **batch,
        max_new_tokens=5,
        do_sample=False,
        suppress_tokens=[PAD, 1, EOS],
        return_dict_in_generate=True,
    )
    cache = cache_out(out)
    assert cache.cross_attention_cache.get_seq_length() == batch["input_ids"].shape[1]  # source, no prefix
    assert cache.self_attention_cache.get_seq_length() == out.sequences.shape[1] - 1
    # the last step, teacher-forced without a cache, gives the token the cached step chose
    logits = model(**batch, decoder_input_ids=out.sequences[:, :-1]).logits[:, -1]
    logits[:, [PAD, 1, EOS]] = float("-inf")
    assert logits.argmax(-1).tolist() == out.sequences[:, -1].tolist()


def test_only_the_prefixes_are_trainable_and_get_gradients(core):
    model = _prefixed(core)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("prefixes.") for n in trainable)
    batch = _batch()
    labels = batch.pop("decoder_input_ids")
    model(**batch, labels=labels, prefix=["default", "short", "default"]).loss.backward()
    for name, param in model.named_parameters():
        assert (param.grad is not None) == name.startswith("prefixes."), name
    assert all(p.grad.abs().sum() > 0 for p in model.prefix_parameters())
    for kind in ("self", "decoder", "cross"):  # every kind's own MLP learns
        part = model.prefixes["default"].reparam.parts[kind]
        assert part.embedding.grad.abs().sum() > 0, kind


def test_fold_keeps_outputs_and_leaves_a_flat_prefix(core):
    model = _prefixed(core)
    batch = _batch()
    before = model(**batch, prefix=["default", "short", None]).logits
    model.fold()
    assert model.prefixes["default"].config.reparam == "flat"
    assert sum(p.numel() for p in model.prefixes["default"].parameters()) == 4 * model.layout.width
    after = model(**batch, prefix=["default", "short", None]).logits
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


def test_t5_prefix_columns_get_zero_position_bias():
    """The prefix has no position: T5's relative bias is 0 on its columns and unchanged on the rest."""
    model = _prefixed("t5", "eager")
    seen = {}
    for index, module in enumerate(model.injector.modules):
        binding = module.__dict__[_BINDING_ATTR]

        def record(mod, query, key, value, mask, _inner=binding.inner, _index=index, **kwargs):
            seen[_index] = kwargs.get("position_bias")
            return _inner(mod, query, key, value, mask, **kwargs)

        module.__dict__[_BINDING_ATTR] = dataclasses.replace(binding, inner=record)
    batch = _batch()
    model(**batch)
    with_prefix = dict(seen)
    model(**batch, prefix=[None] * 3)  # no row has a prefix: the bare model's own bias
    for index in range(len(model.layout.slots)):
        bias, bare = with_prefix[index], seen[index]
        assert bias.shape[-1] == bare.shape[-1] + 4
        assert torch.equal(bias[..., :4], torch.zeros_like(bias[..., :4]))
        torch.testing.assert_close(bias[..., 4:], bare, rtol=0, atol=0)
    assert with_prefix[0][..., 4:].abs().max() > 0  # the real columns do carry T5's bias


def test_shifted_positions_are_refused_for_encoder_decoder_models():
    with pytest.raises(PrefixTuneError, match='positions="shifted" is for decoder-only models'):
        add_prefix(make_seq2seq("bart"), PrefixConfig(length=2, positions="shifted"))


def test_gradient_checkpointing_gives_the_same_gradients(core):
    batch = _batch()
    labels = batch.pop("decoder_input_ids")
    grads = []
    for checkpointing in (False, True):
        model = _prefixed(core)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(**batch, labels=labels).loss.backward()
        grads.append([p.grad.clone() for p in model.prefix_parameters("default")])
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(plain, checkpointed, rtol=1e-5, atol=1e-6)
