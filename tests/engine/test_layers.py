"""Prefixes on a subset of attention layers (`PrefixConfig.layers`): the other layers run bare, the
prefix holds parameters for its layers only, and such prefixes batch, save, fold and start from
text like full ones."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_model, random_ids
from seq2seq_models import make_seq2seq

from prefixtune import PrefixConfig, PrefixTuneError, add_prefix, load_prefix
from prefixtune.engine.initialise import record_keys_values
from prefixtune.engine.inject import PrefixBatch
from prefixtune.engine.storage import CONFIG_FILE, TENSORS_FILE


def _model(family: str = "llama", **config):
    defaults = {"length": 3, "reparam": "flat", "seed": 0}
    return add_prefix(make_model(family), PrefixConfig(**{**defaults, **config}))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_prefix_on_layer_0_equals_a_full_prefix_masked_in_the_other_layers(family):
    full = _model(family)
    pairs = full.prefixes["default"].slot_tensors()
    full.add("first", PrefixConfig(length=3, reparam="flat", init="zero", layers=[0]))
    with torch.no_grad():
        full.prefixes["first"].reparam.prefix.copy_(full.layout.select((0,)).join(pairs[:1]))
    ids = random_ids(2, 6)
    ours = full(ids, prefix="first").logits
    # the reference: every layer gets the full prefix's columns, hidden in layer 1 by its own mask
    hidden = torch.zeros(1, 3, dtype=torch.bool)
    full.injector.current = PrefixBatch(
        [k[None] for k, _ in pairs], [v[None] for _, v in pairs], slot_visible={1: hidden}
    )
    with torch.no_grad():
        reference = full.base(input_ids=ids).logits
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    assert (ours - full(ids, prefix="default").logits).abs().max() > 1e-2  # layer 1 does matter


def test_layers_before_the_prefix_run_exactly_as_the_bare_model():
    model = _model("llama", layers=[-1])
    assert model.prefixes["default"].slots == (1,)
    ids = random_ids(2, 6)
    with torch.no_grad():
        bare = make_model("llama")(ids, output_hidden_states=True).hidden_states
    ours = model(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(ours[1], bare[1], rtol=0, atol=0)  # after layer 0: untouched
    assert (ours[2] - bare[2]).abs().max() > 1e-2  # layer 1 sees the prefix


def test_only_the_chosen_layers_hold_parameters():
    full, flat = _model("gpt2", layers=None), _model("gpt2", layers=[1])
    count = sum(p.numel() for p in flat.prefix_parameters())
    assert count == 3 * full.layout.slots[1].width == sum(p.numel() for p in full.prefix_parameters()) // 2
    mlp = _model("gpt2", reparam="mlp", mlp_hidden=8, layers=[1])
    assert mlp.prefixes["default"].reparam.mlp[2].out_features == full.layout.slots[1].width
    ids = random_ids(2, 5)
    mlp(ids, labels=ids).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mlp.prefix_parameters())


def test_a_mixed_batch_gives_each_row_its_solo_result(family):
    model = _model(family, layers=[0])
    model.add("full", PrefixConfig(length=5, reparam="mlp", mlp_hidden=8, seed=1))
    model.add("last", PrefixConfig(length=2, reparam="flat", seed=2, layers=[-1], positions="shifted"))
    names = ["default", "full", None, "last", "default"]
    ids = random_ids(len(names), 6)
    mixed = model(ids, prefix=names).logits
    for row, name in enumerate(names):
        solo = model(ids[row : row + 1], prefix=[name]).logits
        torch.testing.assert_close(mixed[row : row + 1], solo, rtol=0, atol=1e-5)
    # beam search expands the per-slot visibility with the rows
    out = model.generate(ids[:3], prefix=names[:3], max_new_tokens=3, num_beams=2, do_sample=False)
    for row, name in enumerate(names[:3]):
        solo = model.generate(
            ids[row : row + 1], prefix=[name], max_new_tokens=3, num_beams=2, do_sample=False
        )
        assert out[row].tolist() == solo[0].tolist()


def test_save_and_load_keep_the_layers_and_the_outputs(tmp_path):
    model = _model("llama", reparam="mlp", mlp_hidden=8, layers=[-1])
    ids = random_ids(2, 6)
    expected = model(ids).logits
    model.save(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / CONFIG_FILE).read_text())
    assert meta["config"]["layers"] == [1] and len(meta["slots"]) == 2
    from safetensors.torch import load_file

    assert sorted(load_file(tmp_path / "p" / TENSORS_FILE)) == ["slots.1.key", "slots.1.value"]
    loaded = load_prefix(make_model("llama"), tmp_path / "p")
    assert loaded.prefixes["default"].config.layers == (1,)
    torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=1e-6)
    model.save(tmp_path / "t", include_trainable=True)
    resumed = load_prefix(make_model("llama"), tmp_path / "t", trainable=True)
    torch.testing.assert_close(resumed(ids).logits, expected, rtol=0, atol=1e-6)


def test_fold_keeps_the_outputs_of_a_layer_subset():
    model = _model("gpt2", reparam="mlp", mlp_hidden=8, layers=[0])
    ids = random_ids(2, 6)
    before = model(ids).logits
    model.fold()
    assert sum(p.numel() for p in model.prefixes["default"].parameters()) == 3 * model.layout.slots[0].width
    torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=1e-6)


def test_text_init_on_a_subset_starts_at_those_layers_keys_and_values(tokenizer):
    model = add_prefix(
        make_model("llama"),
        PrefixConfig(reparam="flat", init="text", init_text="w5 w6 w7", layers=[1]),
        tokenizer=tokenizer,
    )
    ids = torch.tensor([tokenizer("w5 w6 w7", add_special_tokens=False)["input_ids"]])
    every_layer = record_keys_values(model.base, model.injector, model.layout, ids)  # (3, W)
    expected = model.layout.split(every_layer)[1]
    (key, value) = model.prefixes["default"].slot_tensors()[0]
    torch.testing.assert_close(key, expected[0], rtol=0, atol=0)
    torch.testing.assert_close(value, expected[1], rtol=0, atol=0)


def test_an_encoder_decoder_prefix_on_some_layers_batches_and_saves(tmp_path):
    model = add_prefix(make_seq2seq("bart"), PrefixConfig(length=3, mlp_hidden=8, seed=0, layers=[0, -1]))
    slots = model.prefixes["default"].slots
    assert [model.layout.slots[i].kind for i in slots] == ["self", "cross"]  # first and last slot
    model.add("full", PrefixConfig(length=2, reparam="flat", init="zero"))
    ids, decoder = random_ids(2, 5), random_ids(2, 4, seed=3)
    mixed = model(input_ids=ids, decoder_input_ids=decoder, prefix=["default", "full"]).logits
    solo = model(input_ids=ids[:1], decoder_input_ids=decoder[:1], prefix="default").logits
    torch.testing.assert_close(mixed[:1], solo, rtol=0, atol=1e-5)
    model.save(tmp_path / "p")
    loaded = load_prefix(make_seq2seq("bart"), tmp_path / "p")
    torch.testing.assert_close(
        loaded(input_ids=ids[:1], decoder_input_ids=decoder[:1]).logits, solo, rtol=0, atol=1e-6
    )


def test_bad_layers_are_refused_with_the_valid_range():
    with pytest.raises(PrefixTuneError, match=r"out of range.*2 attention layers.*0\.\.1"):
        _model("llama", layers=[2])
    with pytest.raises(PrefixTuneError, match="same layer twice"):
        _model("llama", layers=[1, -1])
    with pytest.raises(PrefixTuneError, match="names a layer twice"):
        PrefixConfig(layers=[0, 0])
    with pytest.raises(PrefixTuneError, match="empty"):
        PrefixConfig(layers=[])
    with pytest.raises(PrefixTuneError, match="layer indices"):
        PrefixConfig(layers=["0"])
    assert PrefixConfig(layers=[1, 0]).layers == (1, 0)  # JSON's list becomes a tuple
    assert _model("gemma3", layers=[-1, 0]).prefixes["default"].config.layers == (0, 2)


@pytest.mark.parametrize("family", ["bert", "deberta"])
def test_encoders_take_prefixes_on_some_layers_in_mixed_padded_batches(family):
    # DeBERTa goes through its own hooks (`engine.disentangled`), BERT through the attention function
    from encoders import make_encoder, right_pad
    from test_disentangled import _deberta

    def fresh():
        return _deberta("v3") if family == "deberta" else make_encoder("bert")

    model = add_prefix(fresh(), PrefixConfig(length=3, reparam="flat", seed=0, layers=[-1]))
    model.add("full", PrefixConfig(length=2, reparam="flat", seed=1))
    seqs = [random_ids(1, n, seed=n)[0] for n in (6, 4, 5)]
    ids, mask = right_pad(seqs, 0)
    rows = ["default", "full", None]
    batched = model(ids, attention_mask=mask, prefix=rows).last_hidden_state
    for i, seq in enumerate(seqs):
        alone = model(seq[None], prefix=[rows[i]]).last_hidden_state
        torch.testing.assert_close(batched[i, : len(seq)], alone[0], rtol=0, atol=1e-5)
    ours = model(seqs[0][None], output_hidden_states=True).hidden_states
    with torch.no_grad():
        bare = fresh()(seqs[0][None], output_hidden_states=True).hidden_states
    torch.testing.assert_close(ours[1], bare[1], rtol=0, atol=0)  # layer 0 runs bare
    assert (ours[2] - bare[2]).abs().max() > 1e-2
