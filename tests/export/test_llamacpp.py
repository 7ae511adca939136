"""Exported states in the real llama.cpp (llama-cpp-python 0.3.36), on the bundled SmolLM2-135M.

Exactness needs llama.cpp to compute in fp32 from the weights prefixtune loads: an F32 GGUF written
from the bundled Q4_1 (`cached_f32_copy`), an F32 KV cache and flash attention off.
Run with: pip install -e '.[llamacpp]' && pytest -m llamacpp tests/export
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("llama_cpp", reason="needs the llamacpp extra: pip install -e '.[llamacpp]'")

from prefixtune import PrefixConfig, PrefixTuneError, add_prefix, load_base  # noqa: E402
from prefixtune.export.cache import rotary_module, rotate_keys  # noqa: E402
from prefixtune.export.gguf import cached_f32_copy  # noqa: E402
from prefixtune.export.llamacpp import (  # noqa: E402
    LlamaCppOptions,
    gguf_key_layout,
    state_bytes,
    to_llamacpp,
    write_ggsq,
)
from prefixtune.export.llamacpp_runner import LlamaCppRunner  # noqa: E402
from prefixtune.loading import resolve_alias  # noqa: E402

pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]
PROMPTS = [
    "name[The Eagle], eatType[coffee shop], food[French], area[riverside]\n",
    "name[Aromi], eatType[pub], customer rating[low]\n",
    "The capital of France is",
]
NEW = 16
CONFIGS = {
    "text-keep": PrefixConfig(length=10, init="text", init_text="table-to-text:"),
    "text-shifted": PrefixConfig(length=10, init="text", init_text="table-to-text:", positions="shifted"),
    "random-keep": PrefixConfig(length=6, reparam="flat", init="random", seed=1),
    "random-shifted": PrefixConfig(length=6, reparam="flat", init="random", seed=1, positions="shifted"),
}


@pytest.fixture(scope="module")
def smollm():
    base, tokenizer = load_base("smollm2-135m")
    return base, tokenizer


@pytest.fixture(scope="module")
def f32_gguf():
    return cached_f32_copy(resolve_alias("smollm2-135m"))


@pytest.fixture(scope="module")
def runner(f32_gguf):
    engine = LlamaCppRunner(f32_gguf)
    yield engine
    engine.close()


def _prefixtune(model, tokenizer, prompt: str):
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(
        ids, max_new_tokens=NEW, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    return ids[0].tolist(), out.sequences[0, ids.shape[1] :].tolist(), out.logits[0][0].numpy()


def _llamacpp(runner, state, prompt_ids: list[int]):
    runner.clear()
    cells = runner.restore(state)
    new, first = runner.greedy([prompt_ids], [len(cells)], NEW)  # the prompt continues after the cells
    return new[0], first[0]


def _fp32_noise(model, ids: list[int]) -> float:
    """How far PyTorch's own fp32 first-step logits are from fp64: the floor any fp32 engine shares."""
    inputs = torch.tensor([ids])
    with torch.no_grad():
        single = model(inputs).logits[0, -1].double()
        model.double()
        try:
            double = model(inputs).logits[0, -1]
        finally:
            model.float()
    return float((single - double).abs().max())


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_llamacpp_generates_prefixtunes_tokens(kind, smollm, f32_gguf, runner, tmp_path, capsys):
    base, tokenizer = smollm
    model = add_prefix(base, CONFIGS[kind], tokenizer=tokenizer)
    try:
        state = to_llamacpp(model, f32_gguf, tmp_path / "p.ggsq")
        for prompt in PROMPTS:
            ids, ours, our_logits = _prefixtune(model, tokenizer, prompt)
            theirs, their_logits = _llamacpp(runner, state, ids)
            assert theirs == ours, prompt
            gap, noise = float(np.abs(their_logits - our_logits).max()), _fp32_noise(model, ids)
            with capsys.disabled():
                print(f"\n{kind}: logits within {gap:.2e} (PyTorch fp32 vs fp64: {noise:.2e})", end="")
            # 1e-3; random prefixes inflate the activations so that fp32 rounding alone (PyTorch's, against
            # fp64) reaches 1.3e-3 on one prompt: there the bar is twice that floor
            assert gap < max(1e-3, 2 * noise)
    finally:
        model.unload()


def _agreement(model, tokenizer, runner, state) -> tuple[int, float]:
    """Prompts whose greedy tokens match prefixtune's, and the largest first-step logit gap."""
    same, gap = 0, 0.0
    for prompt in PROMPTS:
        ids, ours, our_logits = _prefixtune(model, tokenizer, prompt)
        theirs, their_logits = _llamacpp(runner, state, ids)
        same += theirs == ours
        gap = max(gap, float(np.abs(their_logits - our_logits).max()))
    return same, gap


def _state_from(model, keys_of, tmp_path, name: str):
    """A state written with `keys_of(key)` in place of the export's key handling (negative controls)."""
    prefix = model.prefixes["default"]
    pairs = [(keys_of(k.detach().float()), v.detach().float()) for k, v in prefix.slot_tensors()]
    return write_ggsq(tmp_path / name, [0] * prefix.length, state_bytes(pairs, v_trans=True, kv_type="f32"))


def test_negative_controls_fall_away(smollm, f32_gguf, runner, tmp_path, capsys):
    base, tokenizer = smollm
    model = add_prefix(base, CONFIGS["text-keep"], tokenizer=tokenizer)
    try:
        rotary = rotary_module(base)
        good = to_llamacpp(model, f32_gguf, tmp_path / "good.ggsq")
        controls = {
            "exported": good,
            "no K permutation": _state_from(model, lambda k: rotate_keys(rotary, k, 10), tmp_path, "a.ggsq"),
            "no keep rotation": _state_from(model, lambda k: gguf_key_layout(k, True), tmp_path, "b.ggsq"),
        }
        results = {name: _agreement(model, tokenizer, runner, state) for name, state in controls.items()}
        # the P cells as llama.cpp decodes P filler tokens itself: the bare model's own past
        runner.clear()
        runner.decode([[0] * 10], [0])
        runner.save(tmp_path / "c.ggsq", [0] * 10)
        results["dummy cells as decoded"] = _agreement(model, tokenizer, runner, tmp_path / "c.ggsq")
        with capsys.disabled():
            for name, (same, gap) in results.items():
                print(
                    f"\n{name}: {same}/{len(PROMPTS)} prompts identical, first-step logits within {gap:.2e}"
                )
        assert results["exported"] == (len(PROMPTS), results["exported"][1]) and results["exported"][1] < 1e-3
        for name in ("no K permutation", "no keep rotation", "dummy cells as decoded"):
            assert results[name][1] > 0.1, name
            assert results[name][0] < len(PROMPTS), name
    finally:
        model.unload()


def test_f16_cache_and_flash_attention_load_and_agree(smollm, f32_gguf, tmp_path, capsys):
    """Measured, not exact: f16 rounding and flash attention's order of sums part from fp32."""
    base, tokenizer = smollm
    model = add_prefix(base, CONFIGS["text-keep"], tokenizer=tokenizer)
    try:
        for flash, kv in ((False, "f16"), (True, "f32"), (True, "f16")):
            state = to_llamacpp(
                model, f32_gguf, tmp_path / f"{flash}{kv}.ggsq", options=LlamaCppOptions(flash, kv)
            )
            engine = LlamaCppRunner(f32_gguf, flash_attn=flash, kv_type=kv)
            try:
                same, gap = _agreement(model, tokenizer, engine, state)
                with capsys.disabled():
                    print(
                        f"\nflash attention {flash}, KV {kv}: {same}/{len(PROMPTS)} identical, "
                        f"logits within {gap:.2e}"
                    )
                assert gap < 0.1
                mismatched = to_llamacpp(
                    model, f32_gguf, tmp_path / "x.ggsq", options=LlamaCppOptions(not flash, kv)
                )
                with pytest.raises(PrefixTuneError, match="refused"):
                    engine.restore(mismatched)  # llama.cpp refuses the other V layout
            finally:
                engine.close()
    finally:
        model.unload()


def test_quantised_cache_and_other_weights_are_refused(smollm, f32_gguf, tmp_path):
    base, tokenizer = smollm
    model = add_prefix(base, CONFIGS["random-keep"], tokenizer=tokenizer)
    try:
        with pytest.raises(PrefixTuneError, match="q8_0"):
            to_llamacpp(model, f32_gguf, tmp_path / "q.ggsq", options=LlamaCppOptions(kv_type="q8_0"))
        embedding = base.get_input_embeddings().weight
        saved = embedding.detach().clone()
        with torch.no_grad():
            embedding.copy_(torch.randn_like(embedding) * saved.std())  # a model with other weights
        try:
            with pytest.raises(PrefixTuneError, match="other weights"):
                to_llamacpp(model, f32_gguf, tmp_path / "o.ggsq")
        finally:
            with torch.no_grad():
                embedding.copy_(saved)
        assert not (tmp_path / "o.ggsq").exists()
    finally:
        model.unload()


def test_a_context_with_a_stream_per_sequence(smollm, f32_gguf, tmp_path):
    """Without a unified cache llama.cpp keeps one KV stream per sequence: the state must say how many."""
    base, tokenizer = smollm
    model = add_prefix(base, CONFIGS["text-keep"], tokenizer=tokenizer)
    engine = LlamaCppRunner(f32_gguf, sequences=2, unified=False)
    try:
        one = to_llamacpp(model, f32_gguf, tmp_path / "one.ggsq")
        with pytest.raises(PrefixTuneError, match="refused"):
            engine.restore(one, seq_id=1)
        two = to_llamacpp(model, f32_gguf, tmp_path / "two.ggsq", options=LlamaCppOptions(streams=2))
        ids, ours, _ = _prefixtune(model, tokenizer, PROMPTS[0])
        engine.clear()
        cells = engine.restore(two, seq_id=1)
        engine.restore(two, seq_id=0)
        new, _ = engine.greedy([ids, ids], [len(cells), len(cells)], NEW)
        assert new == [ours, ours]
    finally:
        engine.close()
        model.unload()
