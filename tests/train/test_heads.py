"""Classifier heads trained with the prefix (P-Tuning v2): what trains, what is saved, what loads."""

from __future__ import annotations

import pytest
import torch
from conftest import random_ids
from encoders import make_encoder, right_pad

from prefixtune import PrefixConfig, PrefixTuneError, add_prefix, load_prefix
from prefixtune.engine.storage import fold_folder
from prefixtune.train.heads import (
    HEAD_FILE,
    head_of,
    head_parameters,
    saved_labels,
    set_pooling,
    train_head,
)

CONFIG = PrefixConfig(length=4, reparam="flat", seed=0)


def _classifier(family: str = "bert", head: str = "sequence", labels: int = 3, seed: int = 0):
    model = add_prefix(make_encoder(family, head=head, labels=labels, seed=seed), CONFIG)
    train_head(model, seed=5)
    return model


@pytest.mark.parametrize("family", ["bert", "distilbert", "electra", "roberta"])
def test_only_prefix_and_head_train_and_get_gradients(family):
    model = _classifier(family)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = set(head_of(model).names)
    assert trainable == {
        n for n, _ in model.named_parameters() if n.startswith("prefixes.") or n.split(".")[1] in head
    }
    assert not any(n.startswith(f"base.{model.base.base_model_prefix}.") for n in trainable)
    model(random_ids(2, 6), labels=torch.tensor([0, 2])).loss.backward()
    for name, param in model.named_parameters():
        assert (param.grad is not None) == param.requires_grad, name
    assert all(p.grad.abs().sum() > 0 for p in model.prefix_parameters())  # the head's among them


def test_head_initialisation_is_seeded():
    a, b = _classifier(seed=0), _classifier(seed=1)  # other base init, same head seed
    for pa, pb in zip(head_parameters(a), head_parameters(b), strict=True):
        assert torch.equal(pa, pb)


def _train(model, ids, mask, labels, steps: int = 40) -> list[float]:
    params = model.prefix_parameters()  # the prefix and the head
    optimizer = torch.optim.AdamW(params, lr=3e-2)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def test_sequence_classifier_learns_and_leaves_the_backbone_untouched():
    model = _classifier("bert", labels=2)
    backbone = {k: v.clone() for k, v in model.base.bert.state_dict().items()}
    seqs = [random_ids(1, n, seed=n)[0] for n in range(3, 11)]
    ids, mask = right_pad(seqs, 0)
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    losses = _train(model, ids, mask, labels)
    assert losses[-1] < losses[0] / 2
    predicted = model(ids, attention_mask=mask).logits.argmax(-1)
    assert predicted.tolist() == labels.tolist()
    for key, value in model.base.bert.state_dict().items():
        assert torch.equal(value, backbone[key]), key


def test_token_classifier_learns_per_token_tags():
    model = _classifier("roberta", head="token", labels=2)
    seqs = [random_ids(1, n, seed=n)[0] for n in (5, 7, 6)]
    ids, mask = right_pad(seqs, 1)
    tags = (ids % 2).masked_fill(mask == 0, -100)  # tag = parity of the token id; padding ignored
    losses = _train(model, ids, mask, tags, steps=60)
    assert losses[-1] < losses[0] / 2
    predicted = model(ids, attention_mask=mask).logits.argmax(-1)
    assert torch.equal(predicted[mask.bool()], tags[mask.bool()])


def test_the_head_is_saved_with_the_prefix_and_restored(tmp_path):
    model = _classifier("electra", labels=3)
    model.base.config.id2label = {0: "neg", 1: "neutral", 2: "pos"}
    ids = random_ids(3, 6)
    expected = model(ids).logits
    model.save(tmp_path / "p")
    assert (tmp_path / "p" / HEAD_FILE).is_file()
    assert saved_labels(tmp_path / "p") == {0: "neg", 1: "neutral", 2: "pos"}
    fresh = make_encoder("electra", head="sequence", labels=3)  # same backbone, untrained random head
    assert (fresh(ids).logits - expected).abs().max() > 1e-3
    loaded = load_prefix(fresh, tmp_path / "p")
    torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=1e-6)
    assert not any(p.requires_grad for p in loaded.parameters())
    fold_folder(tmp_path / "p", tmp_path / "folded")
    again = load_prefix(make_encoder("electra", head="sequence", labels=3), tmp_path / "folded")
    torch.testing.assert_close(again(ids).logits, expected, rtol=0, atol=1e-6)


def test_a_head_that_does_not_fit_names_the_problem(tmp_path):
    _classifier("bert", labels=3).save(tmp_path / "p")
    with pytest.raises(PrefixTuneError, match="num_labels"):
        load_prefix(make_encoder("bert", head="sequence", labels=2), tmp_path / "p")
    with pytest.raises(PrefixTuneError, match="task='sequence-classification'"):
        load_prefix(make_encoder("bert"), tmp_path / "p")
    with pytest.raises(PrefixTuneError, match="task='sequence-classification'"):
        train_head(add_prefix(make_encoder("bert"), CONFIG))


def _mean_classifier(family: str):
    model = add_prefix(make_encoder(family, head="sequence", labels=3), CONFIG)
    train_head(model, seed=5, pooling="mean")
    return model


@pytest.mark.parametrize("family", ["bert", "distilbert", "electra", "roberta"])
def test_mean_pooling_feeds_the_head_the_mean_of_the_real_tokens(family):
    model = _mean_classifier(family)
    ids, mask = right_pad([random_ids(1, 7, seed=1)[0], random_ids(1, 4, seed=2)[0]], pad=0)
    got = model(ids, attention_mask=mask).logits
    # the reference: the backbone's output (with the prefix), averaged by hand over real tokens,
    # put in the first token's place and sent through the family's own head
    set_pooling(model, "first")
    captured = {}

    def capture(_module, _args, output):
        captured["h"] = output[0]

    backbone = getattr(model.base, model.base.base_model_prefix)
    handle = backbone.register_forward_hook(capture)
    model(ids, attention_mask=mask)
    handle.remove()
    hidden = captured["h"]
    weights = mask[..., None].float()
    mean = (hidden * weights).sum(1) / weights.sum(1)
    replaced = torch.cat([mean[:, None], hidden[:, 1:]], dim=1)
    if family == "bert":  # BERT's pooler sits inside the backbone; the classifier reads its output
        expected = model.base.classifier(model.base.bert.pooler(replaced))
    elif family == "distilbert":
        expected = model.base.classifier(torch.relu(model.base.pre_classifier(replaced[:, 0])))
    else:  # RoBERTa and ELECTRA: a head on the first token of the sequence
        expected = model.base.classifier(replaced)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert (got - model(ids, attention_mask=mask).logits).abs().max() > 1e-4  # first token differs


def test_mean_pooling_ignores_padding_and_is_restored_on_load(tmp_path):
    model = _mean_classifier("bert")
    row = random_ids(1, 5, seed=3)
    alone = model(row).logits
    padded, mask = right_pad([row[0], random_ids(1, 9, seed=4)[0]], pad=0)
    torch.testing.assert_close(model(padded, attention_mask=mask).logits[:1], alone, rtol=1e-5, atol=1e-6)
    model.save(tmp_path / "p")
    loaded = load_prefix(make_encoder("bert", head="sequence", labels=3), tmp_path / "p")
    assert head_of(loaded).pooling == "mean"
    torch.testing.assert_close(loaded(row).logits, alone, rtol=0, atol=1e-6)
    base = loaded.unload()  # the pooling hook goes with the prefixes
    set_pooling(model, "first")
    model.unload()
    torch.testing.assert_close(base(row).logits, model.base(row).logits, rtol=0, atol=0)


def test_mean_pooling_is_refused_for_token_tags_and_unknown_poolings():
    model = add_prefix(make_encoder("bert", head="token", labels=3), CONFIG)
    with pytest.raises(PrefixTuneError, match="labels every token"):
        train_head(model, pooling="mean")
    assert head_of(model).pooling == "first" and head_of(model).handle is None  # the refusal changed nothing
    with pytest.raises(PrefixTuneError, match="pooling must be one of first, mean"):
        train_head(model, pooling="max")


@pytest.mark.parametrize(("family", "head"), [("bert", "sequence"), ("roberta", "token")])
def test_add_prefix_trains_a_classifiers_head_by_default(tmp_path, family, head):
    """The safe path is the default: `prefix_parameters()` of a classifier holds its head, so an
    optimizer over it trains prefix and head, and the trained head is saved and restored."""
    model = add_prefix(make_encoder(family, head=head, labels=2), CONFIG)
    head_params = head_parameters(model)
    assert head_params and all(p.requires_grad for p in head_params)
    params = model.prefix_parameters()
    assert {id(p) for p in head_params} <= {id(p) for p in params}
    assert len({id(p) for p in params}) == len(params)  # each once
    before = [p.detach().clone() for p in head_params]
    ids, mask = right_pad([random_ids(1, n, seed=n)[0] for n in (4, 6, 5)], pad=0)
    labels = torch.tensor([0, 1, 1]) if head == "sequence" else (ids % 2).masked_fill(mask == 0, -100)
    optimizer = torch.optim.AdamW(params, lr=3e-2)
    for _ in range(3):
        model(ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all((p - b).abs().max() > 0 for p, b in zip(head_params, before, strict=True))
    model.eval()
    expected = model(ids, attention_mask=mask).logits
    model.save(tmp_path / "p")
    assert (tmp_path / "p" / HEAD_FILE).is_file()
    loaded = load_prefix(make_encoder(family, head=head, labels=2), tmp_path / "p")
    torch.testing.assert_close(loaded(ids, attention_mask=mask).logits, expected, rtol=0, atol=1e-6)


def test_train_head_false_keeps_the_head_frozen_and_unsaved(tmp_path):
    model = add_prefix(make_encoder("bert", head="sequence"), CONFIG, train_head=False)
    assert head_of(model) is None  # no head trains with the prefixes
    assert not any(p.requires_grad for p in model.base.classifier.parameters())
    head_ids = {id(p) for p in model.base.classifier.parameters()}
    assert not head_ids & {id(p) for p in model.prefix_parameters()}
    model.save(tmp_path / "p")
    assert not (tmp_path / "p" / HEAD_FILE).exists()


def test_a_model_without_a_task_head_trains_the_prefix_only():
    from conftest import make_model

    model = add_prefix(make_model("gpt2"), CONFIG)  # an LM head (tied to the embeddings) is no task head
    assert head_of(model) is None  # no head trains with the prefixes
    assert {id(p) for p in model.prefix_parameters()} == {id(p) for p in model.prefixes.parameters()}


def test_the_state_dict_carries_the_trained_head_so_a_trainer_checkpoint_restores_it():
    """Hugging Face's Trainer checkpoints `model.state_dict()` and restores it with `load_state_dict`:
    with the head trained by default, the head must travel with the prefixes (and nothing frozen)."""
    model = add_prefix(make_encoder("bert", head="sequence", labels=2), CONFIG)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    head_keys = {k for k in state if not k.startswith("prefixes.")}
    assert head_keys == {f"base.classifier.{n}" for n, _ in model.base.classifier.named_parameters()}
    ids, mask = right_pad([random_ids(1, n, seed=n)[0] for n in (4, 6)], pad=0)
    expected = model(ids, attention_mask=mask).logits
    with torch.no_grad():
        for p in model.prefix_parameters():
            p.add_(1.0)
    assert (model(ids, attention_mask=mask).logits - expected).abs().max() > 1e-3
    model.load_state_dict(state)
    torch.testing.assert_close(model(ids, attention_mask=mask).logits, expected, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match=r"missing \['base.classifier.bias'"):
        model.load_state_dict({k: v for k, v in state.items() if k != "base.classifier.bias"})
    frozen = add_prefix(make_encoder("bert", head="sequence", labels=2), CONFIG, train_head=False)
    assert all(k.startswith("prefixes.") for k in frozen.state_dict())
