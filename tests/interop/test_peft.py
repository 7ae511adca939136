"""PEFT prefix-tuning adapters in and out: outputs equal PEFT's own model, and the test can tell a
wrong convention or a wrong tensor layout apart from the right one."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from conftest import make_model, random_ids
from packaging.version import Version
from peft import PeftModel, PrefixTuningConfig, get_peft_model

from prefixtune import PrefixConfig, PrefixTuneError, add_prefix
from prefixtune.interop.peft import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    export_peft,
    export_peft_folder,
    from_pairs,
    import_peft,
    read_peft_prefix,
)

# PEFT 0.21 hands its prefix to the model's forward as `past_key_values`, deprecated from transformers
# 5.24 on: its warning is PEFT's, so these tests let it pass (prefixtune's own calls still fail on it).
PEFT_USES_PAST_KEY_VALUES = pytest.mark.filterwarnings("ignore:.*`past_key_values`:FutureWarning")
pytestmark = PEFT_USES_PAST_KEY_VALUES

FAMILIES = ["gpt2", "llama"]  # learned absolute positions; RoPE with grouped-query attention


def _peft_adapter(family: str, folder, projection: bool = False, length: int = 3):
    model = get_peft_model(
        make_model(family),
        PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=length, prefix_projection=projection),
    )
    model.save_pretrained(folder)
    return PeftModel.from_pretrained(make_model(family), folder).eval()  # as a user would load it


# PEFT's prefix tuning hands its prefix to the model as `past_key_values`. From transformers 5.24 on,
# `generate` takes the cache as `cache` and ignores the old name (with only a FutureWarning), so PEFT
# 0.21's `generate` decodes without its prefix (Llama: the bare model's tokens; GPT-2: neither the bare
# nor the prefixed ones) while its `forward`, which renames the keyword, still uses it. The tests hold
# PEFT to its forward everywhere, and to its generate only where transformers still honours it.
PEFT_GENERATE_IGNORES_PREFIX = Version(transformers.__version__).release >= (5, 24)


def _greedy_by_forward(
    model, ids: torch.Tensor, new_tokens: int
) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Greedy decoding through full forwards (no cache): the tokens and per-step logits (B, V)."""
    scores = []
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = model(input_ids=ids).logits[:, -1]  # (B, V)
            scores.append(logits)
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids.tolist(), scores


def _assert_same_outputs(peft_model, ours, atol: float = 1e-5) -> None:
    """Forward parity with PEFT, and generation parity with PEFT's own forward decoded greedily.

    Where PEFT's `generate` still works (transformers < 5.24) it must give the same; where it ignores
    its prefix, the test asserts that it does, so it fails the day PEFT fixes it (drop the branch then).
    """
    ids = random_ids(2, 6)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, peft_model(input_ids=ids).logits, rtol=0, atol=atol)
    settings = {
        "max_new_tokens": 6,
        "do_sample": False,
        "output_scores": True,
        "return_dict_in_generate": True,
    }
    expected, expected_scores = _greedy_by_forward(peft_model, ids, settings["max_new_tokens"])
    mine = ours.generate(ids, **settings)
    assert mine.sequences.tolist() == expected
    for a, b in zip(mine.scores, expected_scores, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=atol)
    theirs = peft_model.generate(input_ids=ids, **settings)
    if PEFT_GENERATE_IGNORES_PREFIX:
        assert theirs.sequences.tolist() != expected, (
            "PEFT's generate follows its prefix again: drop this branch"
        )
        return
    assert theirs.sequences.tolist() == expected
    for a, b in zip(theirs.scores, expected_scores, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=atol)


def _max_logit_gap(peft_model, ours) -> float:
    ids = random_ids(2, 6)
    with torch.no_grad():
        return (ours(ids).logits - peft_model(input_ids=ids).logits).abs().max().item()


@pytest.mark.parametrize(("family", "projection"), [("gpt2", False), ("llama", False), ("llama", True)])
def test_an_imported_peft_prefix_gives_peft_outputs(tmp_path, family, projection):
    peft_model = _peft_adapter(family, tmp_path / "adapter", projection)
    ours = import_peft(make_model(family), tmp_path / "adapter")
    assert ours.prefixes["default"].config.positions == "shifted"
    assert ours.prefix_parameters() == []  # frozen unless asked
    _assert_same_outputs(peft_model, ours)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_exported_prefix_loads_in_peft_with_our_outputs(tmp_path, family):
    ours = add_prefix(make_model(family), PrefixConfig(length=4, positions="shifted", mlp_hidden=16, seed=3))
    export_peft(ours, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    peft_model = PeftModel.from_pretrained(make_model(family), tmp_path / "adapter").eval()
    _assert_same_outputs(peft_model, ours)


def test_an_embedding_prompt_exports_as_a_peft_prefix_with_our_outputs(tmp_path):
    # its keys/values were computed at positions 0..P-1: where PEFT's past tokens sit
    ours = add_prefix(make_model("llama"), PrefixConfig(length=3, kind="embedding", reparam="flat", seed=2))
    export_peft(ours, tmp_path / "adapter")
    peft_model = PeftModel.from_pretrained(make_model("llama"), tmp_path / "adapter").eval()
    _assert_same_outputs(peft_model, ours)


def test_a_prefix_on_some_layers_is_not_exported(tmp_path):
    ours = add_prefix(make_model("llama"), PrefixConfig(length=3, positions="shifted", layers=[0]))
    with pytest.raises(PrefixTuneError, match=r"layers \[0\] only.*without --layers"):
        export_peft(ours, tmp_path / "adapter")
    ours.save(tmp_path / "prefix")
    with pytest.raises(PrefixTuneError, match="without --layers"):
        export_peft_folder(tmp_path / "prefix", tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


def test_the_keep_convention_would_fail_the_parity_test(tmp_path):
    peft_model = _peft_adapter("llama", tmp_path / "adapter")
    ours = import_peft(make_model("llama"), tmp_path / "adapter")
    prefix = ours.prefixes["default"]
    prefix.config = prefix.config.replace(positions="keep")
    assert _max_logit_gap(peft_model, ours) > 1e-3


def _wrong_layouts(embeddings: torch.Tensor, layers: int, heads: int, dim: int):
    """Plausible conversion mistakes: each gives per layer (key, value) of (H_kv, P, D)."""
    length = embeddings.shape[0]
    right = embeddings.view(length, layers, 2, heads, dim).permute(1, 2, 3, 0, 4)  # (L, 2, H, P, D)
    by_dim_then_head = embeddings.view(length, layers, 2, dim, heads).permute(1, 2, 4, 0, 3)
    kv_outermost = embeddings.view(length, 2, layers, heads, dim).permute(2, 1, 3, 0, 4)
    return {
        "keys and values swapped": [(layer[1], layer[0]) for layer in right],
        "layers reversed": [(layer[0], layer[1]) for layer in right.flip(0)],
        "head size before heads": [(layer[0], layer[1]) for layer in by_dim_then_head],
        "key/value outermost": [(layer[0], layer[1]) for layer in kv_outermost],
    }


def test_a_wrong_tensor_layout_would_fail_the_parity_test(tmp_path):
    peft_model = _peft_adapter("llama", tmp_path / "adapter")
    peft = read_peft_prefix(tmp_path / "adapter")
    ours = import_peft(make_model("llama"), tmp_path / "adapter")
    assert _max_logit_gap(peft_model, ours) < 1e-5
    flat = ours.prefixes["default"].reparam.prefix
    for mistake, pairs in _wrong_layouts(peft.embeddings, peft.layers, peft.kv_heads, peft.head_dim).items():
        with torch.no_grad():
            flat.copy_(ours.layout.join(pairs))
        assert _max_logit_gap(peft_model, ours) > 1e-3, mistake


def test_export_then_import_gives_back_the_same_keys_and_values(tmp_path):
    ours = add_prefix(make_model("llama"), PrefixConfig(length=3, positions="shifted", seed=1))
    export_peft(ours, tmp_path / "adapter")
    again = import_peft(make_model("llama"), tmp_path / "adapter", trainable=True)
    assert [p.shape for p in again.prefix_parameters()] == [(3, 2 * 2 * 2 * 16)]  # P x L*2*H_kv*D
    for (k1, v1), (k2, v2) in zip(
        ours.prefixes["default"].slot_tensors(), again.prefixes["default"].slot_tensors(), strict=True
    ):
        torch.testing.assert_close(k2, k1, rtol=0, atol=0)
        torch.testing.assert_close(v2, v1, rtol=0, atol=0)
    stored = read_peft_prefix(tmp_path / "adapter")
    assert stored.kv_heads == 2 and stored.head_dim == 16 and stored.layers == 2  # GQA: KV heads, not 4
    assert torch.equal(from_pairs(ours.prefixes["default"].slot_tensors()).detach(), stored.embeddings)


def test_a_keep_prefix_is_exported_only_when_asked(tmp_path):
    ours = add_prefix(make_model("llama"), PrefixConfig(length=3, seed=1))
    with pytest.raises(PrefixTuneError, match="--positions shifted"):
        export_peft(ours, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
    export_peft(ours, tmp_path / "adapter", allow_position_change=True)
    assert read_peft_prefix(tmp_path / "adapter").length == 3


def test_an_adapter_for_another_model_is_refused_and_the_model_left_alone(tmp_path):
    _peft_adapter("gpt2", tmp_path / "adapter")
    base = make_model("llama")
    with pytest.raises(PrefixTuneError, match="4 KV heads of size 16 per layer.*2 of size 16"):
        import_peft(base, tmp_path / "adapter")
    assert base.config._attn_implementation == "sdpa"


def test_other_adapters_and_broken_files_are_named(tmp_path):
    folder = tmp_path / "adapter"
    _peft_adapter("llama", folder)
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    (folder / ADAPTER_CONFIG).write_text(json.dumps({**config, "peft_type": "LORA"}))
    with pytest.raises(PrefixTuneError, match="holds a LORA adapter"):
        read_peft_prefix(folder)
    (folder / ADAPTER_CONFIG).write_text(json.dumps({**config, "task_type": "SEQ_2_SEQ_LM"}))
    with pytest.raises(PrefixTuneError, match="only decoder-only"):
        read_peft_prefix(folder)
    (folder / ADAPTER_CONFIG).write_text(json.dumps({**config, "num_virtual_tokens": 5}))
    with pytest.raises(PrefixTuneError, match=r"shape \(3, 128\), but the config says \(5, 128\)"):
        read_peft_prefix(folder)
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config))
    (folder / ADAPTER_WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(PrefixTuneError, match="corrupt or truncated"):
        read_peft_prefix(folder)
    with pytest.raises(PrefixTuneError, match="not a PEFT adapter folder"):
        read_peft_prefix(tmp_path)


def test_export_refuses_a_non_empty_folder(tmp_path):
    ours = add_prefix(make_model("llama"), PrefixConfig(length=3, positions="shifted", seed=1))
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "notes.txt").write_text("keep")
    with pytest.raises(PrefixTuneError, match="not an empty folder"):
        export_peft(ours, tmp_path / "adapter")
    assert [p.name for p in (tmp_path / "adapter").iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_smollm2_parity_with_peft_both_ways(tmp_path):
    from prefixtune.loading import load_base

    base, tokenizer = load_base("smollm2-135m")
    peft_model = get_peft_model(base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))
    with torch.no_grad():  # a prefix of the size trained prefixes have, not PEFT's N(0, 1) start
        peft_model.prompt_encoder["default"].embedding.weight.mul_(0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    peft_model.eval()
    ids = tokenizer(["name[The Vaults], eatType[pub]\n", "name[Aromi], area[city centre]\n"], padding=False)
    ids = torch.tensor([row[:8] for row in ids["input_ids"]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    expected_tokens, _ = _greedy_by_forward(peft_model, ids, 8)
    peft_tokens = peft_model.generate(input_ids=ids, max_new_tokens=8, do_sample=False).tolist()
    assert (peft_tokens != expected_tokens) == PEFT_GENERATE_IGNORES_PREFIX
    base = peft_model.get_base_model()  # prompt learning leaves the base model's modules untouched
    ours = import_peft(base, tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, expected, rtol=0, atol=1e-5)
    assert ours.generate(ids, max_new_tokens=8, do_sample=False).tolist() == expected_tokens
    export_peft(ours, tmp_path / "exported")
    base = ours.unload()
    again = PeftModel.from_pretrained(base, tmp_path / "exported").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, expected, rtol=0, atol=1e-5)
