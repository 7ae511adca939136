"""Encoder-decoder prefixes on disk: round trips, per-kind MLP state, folding and the fit checks."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, random_ids
from seq2seq_models import make_seq2seq, right_padded
from synthetic import word_tokenizer

from prefixtune import PrefixConfig, PrefixTuneError, add_prefix, load_prefix
from prefixtune.engine.initialise import record_keys_values
from prefixtune.engine.storage import fold_folder


def _batch() -> dict[str, torch.Tensor]:
    ids, mask = right_padded([random_ids(1, n, seed=n)[0] for n in (6, 3)])
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": random_ids(2, 4, seed=9)}


def _prefixed(family: str = "bart", **config):
    return add_prefix(
        make_seq2seq(family), PrefixConfig(**{"length": 3, "mlp_hidden": 16, "seed": 0, **config})
    )


@pytest.mark.parametrize("family", ["bart", "t5"])
def test_save_and_load_reproduce_the_outputs(tmp_path, family):
    model = _prefixed(family)
    batch = _batch()
    expected = model(**batch).logits
    model.save(tmp_path / "p")
    loaded = load_prefix(make_seq2seq(family), tmp_path / "p")
    assert [s.kind for s in loaded.layout.slots] == [s.kind for s in model.layout.slots]
    torch.testing.assert_close(loaded(**batch).logits, expected, rtol=0, atol=1e-6)


def test_per_kind_trainable_state_round_trips_and_folds_without_the_model(tmp_path):
    model = _prefixed("t5")
    model.save(tmp_path / "p", include_trainable=True)
    resumed = load_prefix(make_seq2seq("t5"), tmp_path / "p", trainable=True)
    prefix = resumed.prefixes["default"]
    assert list(prefix.reparam.parts) == ["self", "decoder", "cross"]
    for (name, a), b in zip(
        model.prefixes["default"].state_dict().items(), prefix.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    fold_folder(tmp_path / "p", tmp_path / "folded")  # what `prefixtune fold` runs
    folded = load_prefix(make_seq2seq("t5"), tmp_path / "folded")
    batch = _batch()
    torch.testing.assert_close(folded(**batch).logits, model(**batch).logits, rtol=0, atol=1e-6)


def test_loading_onto_other_weights_or_another_kind_of_model_is_refused(tmp_path):
    _prefixed("bart").save(tmp_path / "p")
    with pytest.raises(PrefixTuneError, match="weights differ"):
        load_prefix(make_seq2seq("bart", seed=1), tmp_path / "p")
    load_prefix(make_seq2seq("bart", seed=1), tmp_path / "p", check_weights=False)
    with pytest.raises(PrefixTuneError, match="6 attention layers but this model has 2"):
        load_prefix(make_model("gpt2"), tmp_path / "p")
    # same slot count and shapes, other kinds: 3 encoder layers and 1 decoder layer
    other = make_seq2seq("bart", encoder_layers=4, decoder_layers=1)
    with pytest.raises(PrefixTuneError, match="made for decoder attention, the model's is self"):
        load_prefix(other, tmp_path / "p", check_weights=False)


def test_text_initialisation_starts_every_kind_at_the_texts_keys_and_values():
    tokenizer = word_tokenizer()
    model = add_prefix(
        make_seq2seq("bart"),
        PrefixConfig(init="text", init_text="w5 w6 w7", mlp_hidden=16, seed=0),
        tokenizer=tokenizer,
    )
    assert model.prefixes["default"].length == 3
    ids = torch.tensor([tokenizer("w5 w6 w7", add_special_tokens=False)["input_ids"]])
    expected = record_keys_values(model.base, model.injector, model.layout, ids)
    actual = model.prefixes["default"].materialise().detach()
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-4)
    for kind in ("self", "decoder", "cross"):  # each kind's columns are real, distinct keys/values
        assert expected[:, model.layout.columns(kind)].abs().max() > 1e-3
