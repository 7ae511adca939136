"""Embedding prompts (`kind="embedding"`, prompt tuning): a PrefixModel with a prompt gives what the
bare model gives on [prompt embeddings; x], trains the prompt vectors, and batches, folds, saves and
generates like any prefix."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, random_ids
from encoders import make_encoder
from seq2seq_models import make_seq2seq

from prefixtune import PrefixConfig, PrefixTuneError, add_prefix, load_prefix
from prefixtune.engine.storage import TRAINABLE_FILE

FAMILIES = ["gpt2", "llama"]  # learned absolute positions; RoPE with grouped-query attention
P = 3


def _model(family: str, **config):
    defaults = {"length": P, "kind": "embedding", "reparam": "flat", "seed": 0}
    return add_prefix(make_model(family), PrefixConfig(**{**defaults, **config}))


def _reference(family: str, prompt: torch.Tensor, ids: torch.Tensor) -> torch.nn.Module:
    """The bare model's output on inputs_embeds = [prompt; embed(ids)], for the positions of ids."""
    bare = make_model(family)
    embeds = torch.cat([prompt[None].expand(ids.shape[0], -1, -1), bare.get_input_embeddings()(ids)], dim=1)
    return bare(inputs_embeds=embeds).logits[:, prompt.shape[0] :]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("reparam", ["flat", "mlp"])
def test_logits_equal_the_bare_model_on_the_prompt_then_the_input(family, reparam):
    model = _model(family, reparam=reparam, mlp_hidden=8)
    assert model.prefixes["default"].config.positions == "shifted"
    prompt = model.prefixes["default"].reparam().detach()  # (P, d)
    ids = random_ids(2, 6)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, _reference(family, prompt, ids), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_the_prompt_as_through_the_bare_model(family):
    model = _model(family)
    ids = random_ids(2, 6)
    model(ids, labels=ids).loss.backward()
    ours = model.prefixes["default"].reparam.prefix.grad
    prompt = model.prefixes["default"].reparam.prefix.detach().clone().requires_grad_(True)
    logits = _reference(family, prompt, ids)
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
    )
    loss.backward()
    assert ours.abs().sum() > 0
    torch.testing.assert_close(ours, prompt.grad, rtol=1e-4, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = random_ids(2, 6)
    grads = []
    for checkpointing in (False, True):
        model = _model("llama", reparam="mlp", mlp_hidden=8)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(ids, labels=ids).loss.backward()
        grads.append([p.grad.clone() for p in model.prefix_parameters()])
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(plain, checkpointed, rtol=1e-5, atol=1e-6)


def test_text_init_equals_the_words_themselves(tokenizer):
    model = add_prefix(
        make_model("llama"),
        PrefixConfig(kind="embedding", init="text", init_text="w5 w6 w7"),
        tokenizer=tokenizer,
    )
    words = torch.tensor([tokenizer("w5 w6 w7", add_special_tokens=False)["input_ids"]])
    ids = random_ids(2, 6)
    with torch.no_grad():
        expected = make_model("llama")(torch.cat([words.expand(2, -1), ids], dim=1)).logits[:, 3:]
        torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=1e-5)


def test_random_init_starts_from_vocabulary_embeddings():
    model = _model("gpt2", length=4, seed=3)
    prompt = model.prefixes["default"].reparam.prefix.detach()  # (4, d)
    table = model.base.get_input_embeddings().weight
    nearest = (prompt[:, None] - table[None]).abs().amax(dim=-1).min(dim=1).values  # (4,)
    assert torch.all(nearest == 0)
    zero = _model("gpt2", init="zero")
    assert not zero.prefixes["default"].reparam.prefix.any()


def test_a_mixed_batch_with_other_prefixes_gives_each_row_its_solo_result():
    model = _model("llama")
    model.add("prefix", PrefixConfig(length=5, reparam="mlp", mlp_hidden=8, seed=1))
    model.add("first", PrefixConfig(length=2, reparam="flat", seed=2, layers=[0]))
    model.add("long", PrefixConfig(length=6, kind="embedding", reparam="mlp", mlp_hidden=8, seed=3))
    names = ["default", "prefix", None, "first", "long"]
    ids = random_ids(len(names), 6)
    mask = torch.ones_like(ids)
    mask[1, :2] = mask[4, :3] = 0  # left padding: each row counts its positions from its first token
    mixed = model(ids, attention_mask=mask, prefix=names).logits
    for row, name in enumerate(names):
        start = int((mask[row] == 0).sum())
        solo = model(ids[row : row + 1, start:], prefix=[name]).logits
        torch.testing.assert_close(mixed[row : row + 1, start:], solo, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_equals_the_bare_model_from_the_prompt_embeddings(family):
    model = _model(family, length=4)
    prompt = model.prefixes["default"].reparam().detach()
    ids = random_ids(2, 5)
    ours = model.generate(ids, max_new_tokens=6, do_sample=False)[:, ids.shape[1] :]
    bare = make_model(family)
    embeds = torch.cat([prompt[None].expand(2, -1, -1), bare.get_input_embeddings()(ids)], dim=1)
    with torch.no_grad():
        theirs = bare.generate(inputs_embeds=embeds, max_new_tokens=6, do_sample=False)
    assert ours.tolist() == theirs[:, -6:].tolist()


def test_fold_save_and_load_keep_the_outputs(tmp_path):
    model = _model("gpt2", reparam="mlp", mlp_hidden=8)
    ids = random_ids(2, 6)
    expected = model(ids).logits
    model.save(tmp_path / "trainable", include_trainable=True)
    model.save(tmp_path / "p")
    loaded = load_prefix(make_model("gpt2"), tmp_path / "p")
    prefix = loaded.prefixes["default"]
    assert prefix.config.kind == "embedding" and not prefix.prompt  # the stored keys/values
    torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=1e-6)
    resumed = load_prefix(make_model("gpt2"), tmp_path / "trainable", trainable=True)
    assert resumed.prefixes["default"].prompt  # the prompt itself, to train on
    torch.testing.assert_close(resumed(ids).logits, expected, rtol=0, atol=1e-6)
    model.fold()
    folded = model.prefixes["default"]
    assert not folded.prompt and folded.config.reparam == "flat"
    assert sum(p.numel() for p in folded.parameters()) == P * model.layout.width
    torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=1e-6)
    model.save(tmp_path / "folded", include_trainable=True)  # a folded prompt has no other state
    assert not (tmp_path / "folded" / TRAINABLE_FILE).exists()


def test_encoders_and_encoder_decoders_are_refused():
    config = PrefixConfig(length=2, kind="embedding", reparam="flat")
    with pytest.raises(PrefixTuneError, match="causal decoder-only"):
        add_prefix(make_encoder("bert"), config)
    with pytest.raises(PrefixTuneError, match="causal decoder-only"):
        add_prefix(make_seq2seq("t5"), config)
    with pytest.raises(PrefixTuneError, match='positions="shifted"'):
        PrefixConfig(kind="embedding", positions="keep")
    with pytest.raises(PrefixTuneError, match=r"'suffix' is not one of \['prefix', 'embedding', 'infix'"):
        PrefixConfig(kind="suffix")
