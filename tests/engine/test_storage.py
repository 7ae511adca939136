"""Saving and loading prefix folders, with the base-model fingerprint check."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_model, random_ids

from prefixtune import PrefixConfig, PrefixTuneError, add_prefix, load_prefix
from prefixtune.engine.storage import (
    CONFIG_FILE,
    TENSORS_FILE,
    TRAINABLE_FILE,
    Extra,
    extra_names,
    fold_folder,
    read_extra,
)


def _trained(family: str = "llama", **config):
    model = add_prefix(make_model(family), PrefixConfig(length=4, mlp_hidden=16, seed=0, **config))
    return model


def test_save_and_load_reproduce_the_outputs(tmp_path, family):
    model = _trained(family, positions="shifted")
    ids = random_ids(2, 6)
    expected = model(ids).logits
    model.save(tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == sorted([CONFIG_FILE, TENSORS_FILE])
    loaded = load_prefix(make_model(family), tmp_path / "p")
    assert loaded.prefixes["default"].config.positions == "shifted"
    torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=1e-6)


def test_the_saved_file_holds_only_the_folded_prefix(tmp_path):
    model = _trained()
    model.save(tmp_path / "p")
    size = (tmp_path / "p" / TENSORS_FILE).stat().st_size
    flat_bytes = 4 * model.layout.width * 4  # P * W fp32
    assert flat_bytes <= size < flat_bytes + 4096
    meta = json.loads((tmp_path / "p" / CONFIG_FILE).read_text())
    assert meta["base"]["architecture"] == "LlamaForCausalLM"
    assert meta["config"]["reparam"] == "mlp" and meta["length"] == 4
    assert [s["kv_heads"] for s in meta["slots"]] == [2, 2]


def test_trainable_state_lets_training_continue(tmp_path):
    model = _trained()
    model.save(tmp_path / "p", include_trainable=True)
    assert (tmp_path / "p" / TRAINABLE_FILE).exists()
    resumed = load_prefix(make_model("llama"), tmp_path / "p", trainable=True)
    prefix = resumed.prefixes["default"]
    assert prefix.config.reparam == "mlp"
    for (name, a), b in zip(
        model.prefixes["default"].state_dict().items(), prefix.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert resumed.prefix_parameters()


def test_a_bank_holds_several_loaded_prefixes(tmp_path):
    a, b = _trained(), _trained(reparam="flat", positions="shifted")
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    bank = load_prefix(make_model("llama"), tmp_path / "a")
    load_prefix(bank, tmp_path / "b")
    assert sorted(bank.prefixes) == ["b", "default"]
    ids = random_ids(2, 5)
    mixed = bank(ids, prefix=["default", "b"]).logits
    torch.testing.assert_close(mixed[1], b(ids[1:]).logits[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("other", "message"),
    [
        ("gemma3", "3 attention layers but this model has 2"),
        ("gpt2", "the prefix has 4 KV heads, the model 2"),
    ],
)
def test_loading_into_a_model_of_other_shape_names_the_mismatch(tmp_path, other, message):
    _trained(other).save(tmp_path / "p")
    with pytest.raises(PrefixTuneError, match=message):
        load_prefix(make_model("llama"), tmp_path / "p")


def test_loading_into_a_model_with_other_head_size_names_it(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    _trained().save(tmp_path / "p")
    other = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=96,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=32,
        )
    )
    with pytest.raises(PrefixTuneError, match="head size 16, the model 32"):
        load_prefix(other, tmp_path / "p")


def test_loading_onto_other_weights_is_refused_unless_asked(tmp_path):
    _trained().save(tmp_path / "p")
    with pytest.raises(
        PrefixTuneError, match="weights differ.*or pass check_weights=False to apply it anyway"
    ):
        load_prefix(make_model("llama", seed=1), tmp_path / "p")
    load_prefix(make_model("llama", seed=1), tmp_path / "p", check_weights=False)
    half = make_model("llama").to(torch.bfloat16)  # same weights in bf16 still match
    load_prefix(half, tmp_path / "p")


def test_a_failed_load_leaves_the_users_model_as_it_was(tmp_path):
    _trained("gemma3").save(tmp_path / "p")
    base = make_model("llama")
    ids = random_ids(1, 5)
    before = base(ids).logits
    with pytest.raises(PrefixTuneError):
        load_prefix(base, tmp_path / "p")
    assert base.config._attn_implementation == "sdpa"
    torch.testing.assert_close(base(ids).logits, before, rtol=0, atol=0)


def test_corrupt_or_truncated_files_fail_cleanly(tmp_path):
    model = _trained()
    model.save(tmp_path / "p")
    tensors = tmp_path / "p" / TENSORS_FILE
    data = tensors.read_bytes()
    tensors.write_bytes(data[: len(data) // 2])
    with pytest.raises(PrefixTuneError, match="corrupt or truncated"):
        load_prefix(make_model("llama"), tmp_path / "p")
    (tmp_path / "p" / CONFIG_FILE).write_text("{not json")
    with pytest.raises(PrefixTuneError, match="is corrupt"):
        load_prefix(make_model("llama"), tmp_path / "p")
    with pytest.raises(PrefixTuneError, match="no prefix folder"):
        load_prefix(make_model("llama"), tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrefixTuneError, match="not a prefix folder"):
        load_prefix(make_model("llama"), tmp_path / "empty")


def test_save_refuses_a_folder_holding_other_files(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(PrefixTuneError, match="holds other files"):
        _trained().save(target)
    assert (target / "notes.txt").read_text() == "keep me"


def test_saving_again_replaces_the_earlier_prefix(tmp_path):
    first, second = _trained(), _trained(reparam="flat", init="zero")
    first.save(tmp_path / "p")
    second.save(tmp_path / "p")
    loaded = load_prefix(make_model("llama"), tmp_path / "p")
    assert loaded.prefixes["default"].materialise().abs().max() == 0
    assert [p.name for p in tmp_path.iterdir()] == ["p"]  # no staging folders left behind


class _Notes:
    """An attachment as code outside the engine would keep one: tensors saved with every prefix."""

    def __init__(self, tensors):
        self.tensors, self.released = tensors, 0

    def extra(self):
        return Extra(self.tensors, {"what": "notes"}) if self.tensors else None

    def release(self):
        self.released += 1


def test_attachments_travel_with_every_saved_prefix(tmp_path):
    model = _trained()
    notes = model.attachments["notes"] = _Notes({"w": torch.arange(6.0).view(2, 3)})
    model.attachments["empty"] = _Notes({})  # nothing to save: no file
    model.save(tmp_path / "p")
    assert {p.name for p in (tmp_path / "p").iterdir()} == {CONFIG_FILE, TENSORS_FILE, "notes.safetensors"}
    assert extra_names(tmp_path / "p") == ["notes"]
    saved = read_extra(tmp_path / "p", "notes")
    assert saved.metadata == {"what": "notes"}
    torch.testing.assert_close(saved.tensors["w"], notes.tensors["w"], rtol=0, atol=0)
    assert read_extra(tmp_path / "p", "other") is None
    fold_folder(tmp_path / "p", tmp_path / "folded")  # a folded copy keeps them
    assert extra_names(tmp_path / "folded") == ["notes"]
    base = model.unload()
    assert notes.released == 1 and not model.attachments
    assert not any(p.requires_grad for p in base.parameters())


def test_an_extra_cannot_overwrite_the_prefix_files(tmp_path):
    model = _trained()
    model.attachments["prefix"] = _Notes({"w": torch.zeros(1)})
    with pytest.raises(ValueError, match="cannot name an extra"):
        model.save(tmp_path / "p")
    assert not (tmp_path / "p").exists()


def _edit_config(folder, path: str, value) -> None:
    """Set one field of folder/prefix_config.json; `path` is dotted, with list indices: slots.0.kv_heads."""
    meta = json.loads((folder / CONFIG_FILE).read_text())
    *parents, last = path.split(".")
    here = meta
    for part in parents:
        here = here[int(part)] if part.isdigit() else here[part]
    here[int(last) if last.isdigit() else last] = value
    (folder / CONFIG_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [
        (
            "config.length",
            "four",
            'config.length holds "four" (text); it should hold null or a whole number from 1 up',
        ),
        (
            "slots.0.kv_heads",
            "2",
            'slots[0].kv_heads holds "2" (text); it should hold a whole number from 1 up',
        ),
        ("length", 0, "length holds 0; it should hold a whole number from 1 up"),
        ("length", True, "length holds true; it should hold a whole number from 1 up"),
        ("config.reparam", "deep", 'config.reparam holds "deep"; it should hold one of "flat", "mlp"'),
        ("config.layers", [0, "1"], 'config.layers holds [0, "1"]; it should hold null or a list of layer'),
        ("config.init_text", 5, "config.init_text holds 5; it should hold null or text"),
        ("positions", None, 'positions holds null; it should hold one of "keep", "shifted"'),
        ("slots", {}, "slots holds {} (an object); it should hold a non-empty list of attention layers"),
        ("slots.1", "x", 'slots[1] holds "x" (text); it should hold an object'),
        (
            "base.weights_sample",
            [1.0, "x"],
            'base.weights_sample holds [1.0, "x"]; it should hold a list of numbers',
        ),
        ("config", [], "config holds [] (a list); it should hold an object"),
    ],
)
def test_a_prefix_config_with_a_wrong_type_names_the_file_field_and_what_it_should_hold(
    tmp_path, field, value, shown
):
    _trained().save(tmp_path / "p")
    _edit_config(tmp_path / "p", field, value)
    base = make_model("llama")
    with pytest.raises(PrefixTuneError) as caught:
        load_prefix(base, tmp_path / "p")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'p' / CONFIG_FILE}: ") and shown in message, message
    assert "save the prefix again" in message


def test_a_prefix_config_missing_a_slot_field_says_so(tmp_path):
    _trained().save(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / CONFIG_FILE).read_text())
    del meta["slots"][0]["head_dim"]
    (tmp_path / "p" / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(PrefixTuneError, match=r"slots\[0\] lacks the field 'head_dim'"):
        load_prefix(make_model("llama"), tmp_path / "p")
