"""Infixes (`kind="infix"`, `[x; INFIX; y]`): keys/values seen only by the queries from `infix_at` on.

The reference is independent of the infix code: the bare model runs the source into a KV cache,
then an ordinary prefix with the same keys/values runs the rest on that cache. That is exactly an
infix: the source's keys/values never saw it, every later query does.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, random_ids
from seq2seq_models import make_seq2seq
from transformers import DynamicCache

from prefixtune import PrefixConfig, PrefixTuneError, add_prefix, load_prefix
from prefixtune.engine.compat import cache_kwargs, cache_out
from prefixtune.interop.peft import export_peft
from prefixtune.train.encode import IGNORE
from prefixtune.train.loss import infix_columns, target_loss

FAMILIES = ["gpt2", "llama"]


def _model(family: str, **config):
    defaults = {"length": 3, "kind": "infix", "reparam": "flat", "seed": 0}
    return add_prefix(make_model(family), PrefixConfig(**{**defaults, **config}))


@torch.no_grad()
def _reference(family: str, model, ids: torch.Tensor, at: int) -> torch.Tensor:
    """Logits of ids[:, at:]: a plain prefix (the infix's keys/values) over a bare cache of ids[:, :at]."""
    plain = add_prefix(make_model(family), PrefixConfig(length=3, reparam="flat", init="zero"))
    plain.prefixes["default"].reparam.prefix.copy_(model.prefixes["default"].materialise())
    plain.injector.current = None
    cache = cache_out(plain.base(ids[:, :at], use_cache=True, **cache_kwargs(DynamicCache())))
    return plain(ids[:, at:], use_cache=True, **cache_kwargs(cache)).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_the_source_is_untouched_and_the_rest_sees_the_infix(family):
    model = _model(family, reparam="mlp", mlp_hidden=8)
    ids = random_ids(2, 8)
    at = torch.tensor([3, 5])
    logits = model(ids, infix_at=at).logits
    with torch.no_grad():
        bare = make_model(family)(ids).logits
    for row, start in enumerate(at.tolist()):
        torch.testing.assert_close(logits[row, :start], bare[row, :start], rtol=0, atol=0)
        assert (logits[row, start:] - bare[row, start:]).abs().max() > 1e-2
        expected = _reference(family, model, ids[row : row + 1], start)
        torch.testing.assert_close(logits[row : row + 1, start:], expected, rtol=0, atol=1e-5)


def test_an_infix_from_the_first_column_is_a_prefix():
    model = _model("llama")
    model.add("prefix", PrefixConfig(length=3, reparam="flat", init="zero"))
    with torch.no_grad():
        model.prefixes["prefix"].reparam.prefix.copy_(model.prefixes["default"].reparam.prefix)
    ids = random_ids(2, 6)
    torch.testing.assert_close(
        model(ids, infix_at=torch.tensor(0)).logits, model(ids, prefix="prefix").logits, rtol=0, atol=0
    )


def test_a_mixed_left_padded_batch_gives_each_row_its_solo_result():
    model = _model("llama")
    model.add("prefix", PrefixConfig(length=5, reparam="mlp", mlp_hidden=8, seed=1))
    model.add("prompt", PrefixConfig(length=2, kind="embedding", reparam="flat", seed=2))
    model.add("late", PrefixConfig(length=4, kind="infix", reparam="flat", seed=3, layers=[1]))
    names = ["default", "prefix", None, "prompt", "late", "default"]
    pads = [0, 2, 1, 3, 2, 1]
    solo_at = [4, 0, 0, 0, 3, 2]
    ids = random_ids(len(names), 8)
    mask = torch.ones_like(ids)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0
    at = torch.tensor([a + p for a, p in zip(solo_at, pads, strict=True)])  # columns of the padded stream
    mixed = model(ids, attention_mask=mask, prefix=names, infix_at=at).logits
    for row, (name, pad) in enumerate(zip(names, pads, strict=True)):
        solo = model(ids[row : row + 1, pad:], prefix=[name], infix_at=torch.tensor([solo_at[row]])).logits
        torch.testing.assert_close(mixed[row : row + 1, pad:], solo, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "options", [{"do_sample": False}, {"num_beams": 3, "do_sample": False}], ids=["greedy", "beam"]
)
def test_generation_sees_the_infix_from_the_prompts_last_token(family, options):
    model = _model(family)
    model.add("other", PrefixConfig(length=2, reparam="flat", seed=1))
    ids = random_ids(2, 5)
    outputs = [
        model.generate(ids, prefix=["default", "other"], max_new_tokens=5, use_cache=use_cache, **options)
        for use_cache in (True, False)
    ]
    assert outputs[0].tolist() == outputs[1].tolist()
    if options["do_sample"] is False and "num_beams" not in options:  # greedy: each token is the argmax
        full = model(outputs[0], prefix=["default", "other"], infix_at=torch.tensor(4)).logits
        assert full[:, 4:-1].argmax(-1).tolist() == outputs[0][:, 5:].tolist()
        with torch.no_grad():
            bare = make_model(family)(outputs[0]).logits
        torch.testing.assert_close(full[0, :4], bare[0, :4], rtol=0, atol=1e-5)  # the infix row's prompt
        assert (full[0, 4] - bare[0, 4]).abs().max() > 1e-2  # the first new token is predicted with it


def test_static_cache_generation_matches_dynamic():
    model = _model("llama")
    ids = random_ids(2, 5)
    dynamic = model.generate(ids, max_new_tokens=5, do_sample=False)
    static = model.generate(ids, max_new_tokens=5, do_sample=False, cache_implementation="static")
    assert static.tolist() == dynamic.tolist()


def test_save_load_and_fold_keep_the_outputs(tmp_path):
    model = _model("gpt2", reparam="mlp", mlp_hidden=8)
    ids, at = random_ids(2, 7), torch.tensor([2, 4])
    expected = model(ids, infix_at=at).logits
    model.save(tmp_path / "p")
    loaded = load_prefix(make_model("gpt2"), tmp_path / "p")
    assert loaded.prefixes["default"].config.kind == "infix"
    torch.testing.assert_close(loaded(ids, infix_at=at).logits, expected, rtol=0, atol=1e-6)
    model.fold()
    torch.testing.assert_close(model(ids, infix_at=at).logits, expected, rtol=0, atol=1e-6)


def test_the_training_loss_shows_the_infix_to_the_targets_only():
    model = _model("llama")
    ids = random_ids(2, 8)
    labels = ids.clone()
    labels[0, :3] = IGNORE
    labels[1, :5] = IGNORE
    assert infix_columns(labels).tolist() == [2, 4]  # the source's last token predicts the first target
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    loss, count = target_loss(model, batch)
    logits = model(ids, infix_at=torch.tensor([2, 4])).logits
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    assert count == 5 + 3
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert model.prefixes["default"].reparam.prefix.grad.abs().sum() > 0


def test_the_errors_users_meet(tmp_path):
    model = _model("llama")
    with pytest.raises(PrefixTuneError, match="needs infix_at="):
        model(random_ids(1, 4))
    with pytest.raises(PrefixTuneError, match="decoder-only"):
        add_prefix(make_seq2seq("bart"), PrefixConfig(length=2, kind="infix"))
    with pytest.raises(PrefixTuneError, match='positions="keep"'):
        PrefixConfig(kind="infix", positions="shifted")
    with pytest.raises(PrefixTuneError, match="only prefixes and embedding prompts"):
        export_peft(model, tmp_path / "adapter", allow_position_change=True)
