"""The prefix bank: one frozen model, many prefixes, per-row prefixes through every decoding method.

Forward and greedy generation per row are covered in test_inject; here: beam search, sampling,
encoder-decoder models, adding and removing prefixes at run time, and what the bank costs in memory.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, random_ids
from transformers import BartConfig, BartForConditionalGeneration, TemperatureLogitsWarper, TopPLogitsWarper

from prefixtune import PrefixConfig, add_prefix

ATOL = 1e-5
ROWS = ["default", "short", None]


def _bank(family: str):
    model = add_prefix(make_model(family), PrefixConfig(length=4, reparam="flat", seed=3))
    model.add("short", PrefixConfig(length=2, reparam="mlp", mlp_hidden=16, seed=4))
    return model


def _left_pad(seqs: list[torch.Tensor], right: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to one width, on the left (decoders) or the right (encoders, whose positions start at 0)."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, seq in enumerate(seqs):
        where = slice(0, len(seq)) if right else slice(width - len(seq), width)
        ids[i, where] = seq
        mask[i, where] = 1
    return ids, mask


def _prompts() -> list[torch.Tensor]:
    return [random_ids(1, n, seed=20 + n)[0] for n in (6, 3, 5)]


def test_beam_search_rows_equal_their_solo_runs(family):
    model = _bank(family)
    seqs = _prompts()
    ids, mask = _left_pad(seqs)
    options = {"num_beams": 3, "do_sample": False, "max_new_tokens": 6, "num_return_sequences": 2}
    batched = model.generate(ids, attention_mask=mask, prefix=ROWS, **options)
    new = batched[:, ids.shape[1] :].view(len(seqs), 2, -1)  # (B, beams returned, T)
    for i, seq in enumerate(seqs):
        alone = model.generate(seq[None], prefix=[ROWS[i]], **options)[:, len(seq) :]  # (2, T_i)
        # A row that ends early is padded in the batch; its tokens up to then must be the same.
        assert new[i, :, : alone.shape[1]].tolist() == alone.tolist(), ROWS[i]


def test_sampled_rows_follow_exactly_their_solo_distributions(family):
    """Sampling draws from one generator for the whole batch, so the tokens a row draws depend on its
    neighbours; what must not depend on them is the distribution each token is drawn from. Each row's
    processed scores (after temperature and top-p) at every step equal those of the row run alone on
    the same history."""
    model = _bank(family)
    seqs = _prompts()
    ids, mask = _left_pad(seqs)
    torch.manual_seed(0)
    out = model.generate(
        ids,
        attention_mask=mask,
        prefix=ROWS,
        do_sample=True,
        temperature=0.7,
        top_p=0.9,
        top_k=0,
        max_new_tokens=5,
        output_scores=True,
        return_dict_in_generate=True,
    )
    warpers = [TemperatureLogitsWarper(0.7), TopPLogitsWarper(0.9)]
    eos = model.base.generation_config.eos_token_id
    for i, seq in enumerate(seqs):
        drawn = out.sequences[i, ids.shape[1] :]
        for step, scores in enumerate(out.scores):
            history = torch.cat([seq, drawn[:step]])[None]  # (1, n + step)
            logits = model(history, prefix=[ROWS[i]]).logits[:, -1]
            for warp in warpers:
                logits = warp(history, logits)
            finite = torch.isfinite(logits[0])
            assert torch.equal(finite, torch.isfinite(scores[i]))
            torch.testing.assert_close(scores[i][finite], logits[0][finite], rtol=0, atol=ATOL)
            assert finite[drawn[step]]  # the drawn token was possible for the row alone
            if drawn[step].item() == eos:
                break


def _bytes(module: torch.nn.Module) -> int:
    """Bytes held by a module's parameters and buffers, each storage counted once."""
    held = {t.data_ptr(): t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()]}
    return sum(held.values())


def test_memory_grows_only_by_the_prefixes_size():
    model = add_prefix(make_model("llama"), PrefixConfig(length=4, reparam="flat", seed=0))
    base_before = {n: (p.data_ptr(), p.numel()) for n, p in model.base.named_parameters()}
    lengths = [1, 3, 5, 8, 2, 6, 4]
    for i, length in enumerate(lengths):
        model.add(f"p{i}", PrefixConfig(length=length, reparam="mlp", mlp_hidden=16, seed=i))
    model.fold()  # what a served bank holds (load_prefix gives folded prefixes too)
    ids = random_ids(8, 5)
    model.generate(ids, prefix=["default"] + [f"p{i}" for i in range(7)], max_new_tokens=3, do_sample=False)

    assert {n: (p.data_ptr(), p.numel()) for n, p in model.base.named_parameters()} == base_before
    base_bytes = _bytes(model.base)
    per_vector = model.layout.width * 4  # keys and values of every slot, fp32
    assert _bytes(model) == base_bytes + (4 + sum(lengths)) * per_vector

    model.remove("p3")
    assert _bytes(model) == base_bytes + (4 + sum(lengths) - lengths[3]) * per_vector


def test_prefixes_added_and_removed_at_run_time_leave_the_others_unchanged():
    model = _bank("llama")
    ids = random_ids(2, 6)
    before = model(ids, prefix=["default", "short"]).logits
    model.add("late", PrefixConfig(length=7, reparam="flat", seed=9))
    with_late = model(random_ids(3, 6), prefix=["late", "default", "short"]).logits
    torch.testing.assert_close(with_late[1:], model(random_ids(3, 6)[1:], prefix=["default", "short"]).logits)
    model.remove("default")
    assert model.default_prefix == "short"
    after = model(ids, prefix=["short", "short"]).logits
    torch.testing.assert_close(after[1], before[1], rtol=0, atol=ATOL)


def _bart(seed: int = 0) -> BartForConditionalGeneration:
    torch.manual_seed(seed)
    config = BartConfig(
        vocab_size=96,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        max_position_embeddings=64,
        init_std=0.15,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
        attn_implementation="sdpa",
    )
    return BartForConditionalGeneration(config).eval()


def test_encoder_decoder_rows_equal_their_solo_runs():
    """BART: the core puts a prefix in encoder self-attention, decoder self-attention and
    cross-attention alike, so mixed rows must match their solo runs there too."""
    model = add_prefix(_bart(), PrefixConfig(length=4, reparam="flat", seed=3))
    model.add("short", PrefixConfig(length=2, reparam="flat", seed=4))
    seqs = _prompts()
    ids, mask = _left_pad(seqs, right=True)
    decoder = random_ids(3, 4, seed=5)
    logits = model(ids, attention_mask=mask, decoder_input_ids=decoder, prefix=ROWS).logits
    for options in ({"do_sample": False}, {"num_beams": 3, "do_sample": False}):
        out = model.generate(ids, attention_mask=mask, prefix=ROWS, max_new_tokens=5, **options)
        for i, seq in enumerate(seqs):
            alone = model.generate(seq[None], prefix=[ROWS[i]], max_new_tokens=5, **options)[0]
            assert out[i, : len(alone)].tolist() == alone.tolist(), (options, ROWS[i])
    for i, seq in enumerate(seqs):
        alone = model(seq[None], decoder_input_ids=decoder[i : i + 1], prefix=[ROWS[i]]).logits
        torch.testing.assert_close(logits[i : i + 1], alone, rtol=0, atol=ATOL)
    assert len({tuple(row) for row in out.tolist()}) > 1  # the prefixes do steer the rows apart


# Every kind with each position convention it allows (an embedding prompt is always shifted, an infix
# never): the one-prefix-for-every-row path and its per-row position offsets.
VARIANTS = [("prefix", "keep"), ("prefix", "shifted"), ("embedding", "shifted"), ("infix", "keep")]


def _shared(family: str, kind: str, positions: str):
    config = PrefixConfig(length=5, reparam="flat", kind=kind, positions=positions, seed=3)
    return add_prefix(make_model(family), config)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize(("kind", "positions"), VARIANTS, ids=[f"{k}-{p}" for k, p in VARIANTS])
@pytest.mark.parametrize("returned", [1, 2])
def test_a_shared_prefix_expands_to_beams_and_returned_sequences(family, kind, positions, returned):
    """Beam search (returning one or two sequences per row) on a batch sharing one prefix: each row's
    beams equal those of the row generated alone."""
    model = _shared(family, kind, positions)
    ids = random_ids(2, 5, seed=7)
    options = {"max_new_tokens": 5, "do_sample": False, "num_beams": 3, "num_return_sequences": returned}
    batched = model.generate(ids, **options)[:, ids.shape[1] :].view(2, returned, -1)  # (B, returned, T)
    for i in range(2):
        alone = model.generate(ids[i : i + 1], **options)[:, ids.shape[1] :]  # (returned, T)
        assert batched[i, :, : alone.shape[1]].tolist() == alone.tolist(), i


@pytest.mark.parametrize(("kind", "positions"), VARIANTS, ids=[f"{k}-{p}" for k, p in VARIANTS])
def test_a_shared_prefix_samples_several_sequences_per_row_from_the_solo_distribution(kind, positions):
    """num_return_sequences with sampling: every returned sequence's scores at every step equal those
    of its row alone on the same history (the draws themselves share one generator)."""
    model = _shared("llama", kind, positions)
    ids = random_ids(2, 5, seed=7)
    out = model.generate(
        ids, do_sample=True, top_k=0, max_new_tokens=4, num_return_sequences=2,
        output_scores=True, return_dict_in_generate=True,
    )  # fmt: skip
    for row, sequence in enumerate(out.sequences):  # (B * 2, n + T): row // 2 is the prompt
        for step, scores in enumerate(out.scores):
            history = sequence[None, : ids.shape[1] + step]
            logits = model(history, infix_at=torch.tensor([ids.shape[1] - 1])).logits[0, -1]
            torch.testing.assert_close(scores[row], logits, rtol=0, atol=ATOL)


def test_mixed_rows_with_a_shifted_prefix_expand_to_beams():
    model = _shared("llama", "prefix", "shifted")
    model.add("embedded", PrefixConfig(length=2, reparam="flat", kind="embedding", seed=4))
    ids = random_ids(3, 5, seed=7)
    rows = ["default", None, "embedded"]
    options = {"max_new_tokens": 5, "do_sample": False, "num_beams": 3, "num_return_sequences": 2}
    batched = model.generate(ids, prefix=rows, **options)[:, ids.shape[1] :].view(3, 2, -1)
    for i, name in enumerate(rows):
        alone = model.generate(ids[i : i + 1], prefix=[name], **options)[:, ids.shape[1] :]
        assert batched[i, :, : alone.shape[1]].tolist() == alone.tolist(), name
