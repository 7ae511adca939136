"""PrefixModel: what trains, generation with and without the cache, and the errors users meet."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, random_ids

from prefixtune import PrefixConfig, PrefixTuneError, add_prefix


def _model(family: str = "llama", **config):
    defaults = {"length": 4, "reparam": "mlp", "mlp_hidden": 16, "seed": 0}
    return add_prefix(make_model(family), PrefixConfig(**{**defaults, **config}))


def test_only_the_prefix_is_trainable_and_gets_gradients(family):
    model = _model(family)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("prefixes.") for n in trainable)
    ids = random_ids(2, 8)
    model(ids, labels=ids).loss.backward()
    for name, param in model.named_parameters():
        assert (param.grad is not None) == name.startswith("prefixes."), name
    assert all(p.grad.abs().sum() > 0 for p in model.prefix_parameters())


def test_gradient_checkpointing_gives_the_same_gradients(family):
    ids = random_ids(2, 8)
    grads = []
    for checkpointing in (False, True):
        model = _model(family)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(ids, labels=ids).loss.backward()
        grads.append([p.grad.clone() for p in model.prefix_parameters()])
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(plain, checkpointed, rtol=1e-5, atol=1e-6)


def test_the_mlp_runs_once_per_forward_not_per_row():
    model = _model("llama")
    calls = []
    model.prefixes["default"].reparam.mlp.register_forward_hook(lambda *_: calls.append(1))
    model(random_ids(6, 5))
    assert len(calls) == 1
    model.generate(random_ids(3, 4), max_new_tokens=4, do_sample=False)
    assert len(calls) == 2  # once for the whole generate call, not per step


def test_fold_keeps_outputs_and_leaves_a_flat_prefix(family):
    model = _model(family)
    ids = random_ids(3, 7)
    before = model(ids).logits
    model.fold()
    assert model.prefixes["default"].config.reparam == "flat"
    assert sum(p.numel() for p in model.prefixes["default"].parameters()) == 4 * model.layout.width
    torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "options",
    [{"do_sample": False}, {"num_beams": 3, "do_sample": False}, {"do_sample": True, "top_k": 5}],
    ids=["greedy", "beam", "sample"],
)
def test_generation_with_the_cache_equals_generation_without_it(family, options):
    model = _model(family)
    model.add("other", PrefixConfig(length=2, reparam="flat", init="zero"))
    ids = random_ids(2, 5)
    outputs = []
    for use_cache in (True, False):
        torch.manual_seed(7)
        outputs.append(
            model.generate(ids, prefix=["default", "other"], max_new_tokens=6, use_cache=use_cache, **options)
        )
    assert outputs[0].tolist() == outputs[1].tolist()


def test_static_cache_generation_matches_dynamic(family):
    model = _model(family)
    ids = random_ids(2, 5)
    dynamic = model.generate(ids, max_new_tokens=5, do_sample=False)
    static = model.generate(ids, max_new_tokens=5, do_sample=False, cache_implementation="static")
    assert static.tolist() == dynamic.tolist()


def test_greedy_generation_is_the_argmax_of_forward():
    model = _model("llama")
    ids = random_ids(1, 6)
    out = model.generate(ids, max_new_tokens=1, do_sample=False)
    assert out[0, -1].item() == model(ids).logits[0, -1].argmax().item()


def test_prefix_plus_input_beyond_the_context_window_is_a_clear_error(family):
    model = _model(family, length=8)
    with pytest.raises(PrefixTuneError, match="context window is 64"):
        model(random_ids(1, 60))
    with pytest.raises(PrefixTuneError, match="context window"):
        model.generate(random_ids(1, 50), max_new_tokens=10)
    model(random_ids(1, 56))  # exactly fits


def test_prefix_argument_errors_name_the_problem():
    model = _model("llama")
    with pytest.raises(PrefixTuneError, match="no prefix named 'nope'"):
        model(random_ids(2, 4), prefix="nope")
    with pytest.raises(PrefixTuneError, match="names 1 rows but the batch has 2"):
        model(random_ids(2, 4), prefix=["default"])
    with pytest.raises(PrefixTuneError, match="already exists"):
        add_prefix(model, PrefixConfig(length=2))


def test_unsupported_attention_implementation_is_refused():
    base = make_model("llama")
    base.config._attn_implementation = "flash_attention_2"
    with pytest.raises(PrefixTuneError, match="attn_implementation='sdpa'"):
        add_prefix(base, PrefixConfig(length=2))


def test_adding_to_a_prefixed_base_twice_is_refused():
    model = _model("llama")
    with pytest.raises(PrefixTuneError, match="already carries prefixes"):
        add_prefix(model.base, PrefixConfig(length=2))


def test_training_a_prefix_lowers_the_loss_and_leaves_the_base_untouched():
    model = _model("llama", reparam="flat", init="zero")
    base_state = {k: v.clone() for k, v in model.base.state_dict().items()}
    ids = random_ids(4, 10)
    optimizer = torch.optim.AdamW(model.prefix_parameters(), lr=5e-2)
    losses = []
    for _ in range(30):
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3
    for key, value in model.base.state_dict().items():
        assert torch.equal(value, base_state[key]), key
