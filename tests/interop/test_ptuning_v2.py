"""P-Tuning v2 checkpoints, built by hand in the reference code's layout: the prefix read from them
gives the outputs of PEFT's model holding the same tensor, with or without the prefix MLP."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_model
from encoders import make_encoder
from safetensors.torch import load_file, save_file
from test_peft import PEFT_USES_PAST_KEY_VALUES, _assert_same_outputs, _peft_adapter

from prefixtune import PrefixTuneError
from prefixtune.engine.inject import IMPLEMENTATION
from prefixtune.interop.peft import ADAPTER_WEIGHTS, TENSOR_KEY
from prefixtune.interop.ptuning_v2 import import_ptuning_v2

pytestmark = PEFT_USES_PAST_KEY_VALUES


def _whole_model_state(family: str, prefix: dict[str, torch.Tensor], owner: str = "") -> dict:
    """A full-model checkpoint as P-Tuning v2 saves one: the base's weights plus its prefix encoder."""
    state = {k: v.clone() for k, v in make_model(family).state_dict().items()}
    state.update({f"{owner}prefix_encoder.{k}": v for k, v in prefix.items()})
    state[f"{owner}prefix_tokens"] = torch.arange(next(iter(prefix.values())).shape[0])
    return state


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_flat_ptuning_v2_prefix_gives_peft_outputs(tmp_path, family):
    peft_model = _peft_adapter(family, tmp_path / "adapter")
    embeddings = load_file(tmp_path / "adapter" / ADAPTER_WEIGHTS)[TENSOR_KEY]  # (P, L * 2 * H_kv * D)
    torch.save(_whole_model_state(family, {"embedding.weight": embeddings}), tmp_path / "pytorch_model.bin")
    ours = import_ptuning_v2(make_model(family), tmp_path / "pytorch_model.bin")
    assert ours.prefixes["default"].config.positions == "shifted"
    _assert_same_outputs(peft_model, ours)


def test_a_projected_prefix_runs_its_mlp_and_a_sharded_folder_is_read(tmp_path):
    generator = torch.Generator().manual_seed(4)
    peft_model = _peft_adapter("llama", tmp_path / "adapter")
    width = load_file(tmp_path / "adapter" / ADAPTER_WEIGHTS)[TENSOR_KEY].shape[1]
    mlp = {
        "embedding.weight": torch.randn(3, 8, generator=generator),
        "trans.0.weight": torch.randn(12, 8, generator=generator) * 0.3,
        "trans.0.bias": torch.randn(12, generator=generator) * 0.1,
        "trans.2.weight": torch.randn(width, 12, generator=generator) * 0.3,
        "trans.2.bias": torch.randn(width, generator=generator) * 0.1,
    }
    expected = torch.tanh(mlp["embedding.weight"] @ mlp["trans.0.weight"].T + mlp["trans.0.bias"])
    expected = expected @ mlp["trans.2.weight"].T + mlp["trans.2.bias"]  # (P, L * 2 * H_kv * D)
    with torch.no_grad():  # PEFT's model, holding the MLP's output as its prefix
        peft_model.prompt_encoder["default"].embedding.weight.copy_(expected)
    state = _whole_model_state("llama", mlp, owner="transformer.")  # ChatGLM's naming
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    prefix_keys = [k for k in state if "prefix_" in k]
    save_file({k: state.pop(k) for k in prefix_keys}, folder / "model-00002-of-00002.safetensors")
    save_file(state, folder / "model-00001-of-00002.safetensors")
    weight_map = {k: "model-00002-of-00002.safetensors" for k in prefix_keys}
    weight_map.update({k: "model-00001-of-00002.safetensors" for k in state})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    ours = import_ptuning_v2(make_model("llama"), folder)
    _assert_same_outputs(peft_model, ours)


def test_bad_checkpoints_and_encoders_are_refused_and_the_model_is_left_as_it_was(tmp_path):
    torch.save({"transformer.h.0.attn.weight": torch.zeros(2)}, tmp_path / "no-prefix.bin")
    with pytest.raises(PrefixTuneError, match="no P-Tuning v2 prefix"):
        import_ptuning_v2(make_model("llama"), tmp_path / "no-prefix.bin")
    base = make_model("llama")
    torch.save({"prefix_encoder.embedding.weight": torch.zeros(3, 10)}, tmp_path / "narrow.bin")
    with pytest.raises(PrefixTuneError, match="10 wide"):
        import_ptuning_v2(base, tmp_path / "narrow.bin")
    assert base.config._attn_implementation != IMPLEMENTATION  # unwrapped again
    encoder = make_encoder("bert")
    layers, hidden = encoder.config.num_hidden_layers, encoder.config.hidden_size
    torch.save(
        {"prefix_encoder.embedding.weight": torch.zeros(3, layers * 2 * hidden)}, tmp_path / "bert.bin"
    )
    with pytest.raises(PrefixTuneError, match="decoder-only models only"):
        import_ptuning_v2(encoder, tmp_path / "bert.bin")
    with pytest.raises(PrefixTuneError, match="does not exist"):
        import_ptuning_v2(make_model("llama"), tmp_path / "missing")


def test_peft_model_reference_is_not_the_bare_model(tmp_path):
    """The parity above is not vacuous: PEFT's prefix changes the logits."""
    peft_model = _peft_adapter("llama", tmp_path / "adapter")
    ids = torch.arange(3, 9)[None]
    with torch.no_grad(), peft_model.disable_adapter():
        bare = peft_model(input_ids=ids).logits
    with torch.no_grad():
        prefixed = peft_model(input_ids=ids).logits
    assert (bare - prefixed).abs().max() > 1e-3
