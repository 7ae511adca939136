"""The step-wise decoder: rows that leave the batch, end-of-sequence, stop texts, top-p, cancelling."""

from __future__ import annotations

import pytest
import torch
from serving import tiny_bank
from synthetic import word_tokenizer
from transformers import TemperatureLogitsWarper, TopPLogitsWarper

from prefixtune.serve.engine import Engine, Row, Sampling, probabilities

PROMPTS = [[5, 6, 7], [20, 21], [40, 41, 42, 43]]


def _rows(prefixes, lengths, stop=(), temperature=0.0, seed=None):
    pieces: dict[int, list[str]] = {}
    finished: list[int] = []
    rows = []
    for i, (prefix, length) in enumerate(zip(prefixes, lengths, strict=True)):
        pieces[i] = []
        generator = torch.Generator().manual_seed(seed + i) if seed is not None else None
        rows.append(
            Row(
                prompt=PROMPTS[i],
                prefix=prefix,
                sampling=Sampling(max_tokens=length, temperature=temperature, stop=stop),
                generator=generator,
                on_text=lambda row, text, i=i: pieces[i].append(text),
                on_finish=lambda row, i=i: finished.append(i),
            )
        )
    return rows, pieces, finished


def _solo(model, prefix, prompt, length) -> list[int]:
    out = model.generate(torch.tensor([prompt]), prefix=[prefix], max_new_tokens=length, do_sample=False)
    return out[0, len(prompt) :].tolist()


def test_rows_leaving_the_batch_early_leave_the_others_exact():
    model = tiny_bank()
    engine = Engine(model, word_tokenizer())
    prefixes, lengths = ["a", None, "b"], [2, 7, 4]
    rows, pieces, finished = _rows(prefixes, lengths)
    engine.run(rows)
    reference = tiny_bank()
    for row, prefix, length, prompt in zip(rows, prefixes, lengths, PROMPTS, strict=True):
        assert row.tokens == _solo(reference, prefix, prompt, length)
        assert row.finish == "length"
    assert finished == [0, 2, 1]  # in the order they ran out of tokens
    assert ["".join(pieces[i]) for i in range(3)] == [row.text for row in rows]
    assert model.injector.current is None  # nothing left behind for the next caller


def _with_variants(model):
    from prefixtune import PrefixConfig

    model.add("infix", PrefixConfig(length=3, kind="infix", reparam="flat", seed=3))
    model.add("prompt", PrefixConfig(length=2, kind="embedding", reparam="flat", seed=2, layers=[1]))
    return model


def test_infixes_prompts_and_layer_subsets_serve_like_prefixes():
    model = _with_variants(tiny_bank())
    engine = Engine(model, word_tokenizer())
    prefixes, lengths = ["infix", "prompt", "a"], [6, 3, 4]
    rows, _, _ = _rows(prefixes, lengths)
    engine.run(rows)
    reference = _with_variants(tiny_bank())
    for row, prefix, length, prompt in zip(rows, prefixes, lengths, PROMPTS, strict=True):
        assert row.tokens == _solo(reference, prefix, prompt, length)
    # the infix row would differ had it seen the infix one column early (the row is left-padded)
    early = reference.generate(
        torch.tensor([PROMPTS[0]]), prefix=["infix"], max_new_tokens=6, infix_at=torch.tensor(1)
    )
    assert rows[0].tokens != early[0, 3:].tolist()


def test_end_of_sequence_ends_a_row_without_showing_up_in_its_text():
    model = tiny_bank()
    greedy = _solo(tiny_bank(), "a", PROMPTS[0], 5)
    model.base.generation_config.eos_token_id = greedy[3]
    rows, pieces, _ = _rows(["a"], [5])
    Engine(model, word_tokenizer()).run(rows)
    assert rows[0].finish == "stop"
    assert rows[0].tokens == greedy[: greedy.index(greedy[3])]


def test_a_stop_text_is_never_streamed_even_in_part():
    tokenizer = word_tokenizer()
    greedy = tokenizer.decode(_solo(tiny_bank(), "b", PROMPTS[1], 6), skip_special_tokens=True)
    words = greedy.split(" ")
    stop = f"{words[3]} {words[4]}"
    rows, pieces, _ = _rows([None, "b"], [6, 6], stop=(stop,))
    Engine(tiny_bank(), tokenizer).run(rows)
    row = rows[1]
    assert row.finish == "stop" and row.text == greedy[: greedy.index(stop)]
    assert "".join(pieces[1]) == row.text  # so no piece of the stop text was ever sent


@pytest.mark.parametrize("top_p", [0.3, 0.8, 0.95])
def test_the_nucleus_matches_transformers_top_p(top_p):
    logits = torch.randn(96, generator=torch.Generator().manual_seed(1)) * 3
    ours = probabilities(logits, 0.7, top_p)
    warped = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(0.7)(None, logits[None]))[0]
    assert torch.equal(ours > 0, torch.isfinite(warped))
    torch.testing.assert_close(ours / ours.sum(), torch.softmax(warped, -1), rtol=0, atol=1e-6)


def test_sampling_depends_only_on_the_rows_own_generator():
    model = tiny_bank()
    engine = Engine(model, word_tokenizer())
    together, _, _ = _rows(["a", "b", None], [6, 6, 6], temperature=1.0, seed=3)
    engine.run(together)
    for i in range(3):
        alone, _, _ = _rows(["a", "b", None], [6, 6, 6], temperature=1.0, seed=3)
        engine.run([alone[i]])
        assert alone[i].tokens == together[i].tokens
    greedy = [_solo(model, p, q, 6) for p, q in zip(["a", "b", None], PROMPTS, strict=True)]
    assert [r.tokens for r in together] != greedy


def test_a_cancelled_row_leaves_and_the_others_go_on():
    model = tiny_bank()
    rows, _, finished = _rows(["a", "b", None], [6, 6, 6])
    rows[1].is_cancelled = lambda: len(rows[1].tokens) >= 2
    Engine(model, word_tokenizer()).run(rows)
    assert len(rows[1].tokens) == 2 and rows[1].finish is None and finished == [0, 2]
    reference = tiny_bank()
    assert rows[0].tokens == _solo(reference, "a", PROMPTS[0], 6)
    assert rows[2].tokens == _solo(reference, None, PROMPTS[2], 6)


def test_a_vanishing_temperature_samples_the_greedy_token_instead_of_nan():
    logits = torch.tensor([0.5, 3.0, -1.0, 3.0 - 1e-6, float("-inf")])
    for temperature in (5e-324, 1e-300, 1e-30):
        probs = probabilities(logits, temperature, 1.0)
        assert torch.isfinite(probs).all()
        assert probs.tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    assert torch.isfinite(probabilities(logits, 5e-324, 0.5)).all()


def test_a_row_that_raises_fails_alone_and_its_neighbours_run_on():
    """One row's bad numerics (a NaN temperature, as the schema never lets through) or a client callback
    that raises ends that row with finish "error"; the others decode exactly as they would alone."""
    model = tiny_bank()
    engine = Engine(model, word_tokenizer())
    rows, _, finished = _rows(["a", None, "b"], [4, 4, 4])
    errors: list[tuple[int, str]] = []
    rows[0].sampling = Sampling(max_tokens=4, temperature=float("nan"))
    rows[2].on_text = lambda row, text: (_ for _ in ()).throw(RuntimeError("the client's loop is closed"))
    for i, row in enumerate(rows):
        row.on_error = lambda row, err, i=i: errors.append((i, str(err)))
    engine.run(rows)
    assert [i for i, _ in errors] == [0, 2] and "closed" in errors[1][1]
    assert [row.finish for row in rows] == ["error", "length", "error"]
    assert rows[1].tokens == _solo(tiny_bank(), None, PROMPTS[1], 4) and finished == [1]
    assert model.injector.current is None
