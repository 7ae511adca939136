"""The target-only loss equals cross-entropy from full logits, in value and in gradients."""

from __future__ import annotations

import torch
from conftest import make_model, random_ids
from torch.nn import functional

from prefixtune import PrefixConfig, add_prefix
from prefixtune.train.encode import IGNORE
from prefixtune.train.loss import target_loss


def _batch() -> dict[str, torch.Tensor]:
    """Three right-padded rows whose targets start at different columns (prompts of 2, 5 and 9)."""
    ids = random_ids(3, 14, seed=4)
    mask = torch.ones_like(ids)
    mask[0, 10:] = 0
    mask[2, 12:] = 0
    labels = ids.clone()
    for row, (prompt, length) in enumerate([(2, 10), (5, 14), (9, 12)]):
        labels[row, :prompt] = IGNORE
        labels[row, length:] = IGNORE
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _reference_loss(model, batch) -> tuple[torch.Tensor, int]:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    loss = functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum"
    )
    return loss, int((targets != IGNORE).sum())


def test_target_loss_equals_the_full_logits_loss_and_its_gradients(family):
    model = add_prefix(make_model(family), PrefixConfig(length=3, seed=0))
    batch = _batch()
    loss, count = target_loss(model, batch)
    grads = torch.autograd.grad(loss, model.prefix_parameters())
    expected, expected_count = _reference_loss(model, batch)
    expected_grads = torch.autograd.grad(expected, model.prefix_parameters())
    assert count == expected_count == 8 + 9 + 3
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_the_output_layer_sees_only_target_positions():
    model = add_prefix(make_model("llama"), PrefixConfig(length=3, seed=0))
    seen = []
    head = model.base.get_output_embeddings()
    handle = head.register_forward_hook(lambda _m, args, _out: seen.append(tuple(args[0].shape)))
    try:
        target_loss(model, _batch())
    finally:
        handle.remove()
    assert seen == [(1, 20, 64)]  # the 20 target tokens, not 3 rows x 12 kept columns


def test_only_the_last_layers_feed_forward_is_trimmed_to_target_positions():
    model = add_prefix(make_model("llama"), PrefixConfig(length=3, seed=0))
    layers = model.base.model.layers
    seen = {}

    def record(index):
        def hook(_module, args, output):
            seen[index] = (tuple(args[0].shape), tuple(output.shape))

        return hook

    handles = [layer.mlp.register_forward_hook(record(i)) for i, layer in enumerate(layers)]
    try:
        target_loss(model, _batch())
    finally:
        for handle in handles:
            handle.remove()
    last = len(layers) - 1
    assert seen[last] == ((1, 20, 64), (1, 20, 64))  # only the 20 target positions are computed
    assert all(seen[i] == ((3, 14, 64), (3, 14, 64)) for i in range(last))
    # the layer itself gets back its full (3, 14, 64) output: the equality tests above show that


def test_target_loss_is_exact_with_a_prefix_on_the_first_layer_only():
    # the trimmed layer is the model's last, not the prefix's last: here they differ
    model = add_prefix(make_model("llama"), PrefixConfig(length=3, seed=0, layers=(0,)))
    _assert_equals_the_reference(model, _batch())


def test_target_loss_is_exact_under_gradient_checkpointing():
    # layers are recomputed in the backward pass, after target_loss's hooks are gone: no trimming then
    model = add_prefix(make_model("llama"), PrefixConfig(length=3, seed=0))
    model.train()
    model.gradient_checkpointing_enable()
    _assert_equals_the_reference(model, _batch())


def _assert_equals_the_reference(model, batch) -> None:
    loss, _ = target_loss(model, batch)
    grads = torch.autograd.grad(loss, model.prefix_parameters())
    expected, _ = _reference_loss(model, batch)
    expected_grads = torch.autograd.grad(expected, model.prefix_parameters())
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
