"""Continuous batching: rows that join a decoding batch mid-way, and leave it, get their solo result."""

from __future__ import annotations

import torch
from serving import tiny_bank
from synthetic import word_tokenizer

from prefixtune import PrefixConfig
from prefixtune.serve.engine import Engine, Row, Sampling
from prefixtune.serve.live import LiveBatch

# (prefix, prompt, max_tokens): every convention: kept positions (a), shifted (b), none, an infix,
# an embedding prompt on one layer only; prompts of different lengths
JOBS = [
    ("a", [5, 6, 7], 9),
    ("b", [20, 21], 3),
    (None, [40, 41, 42, 43, 44, 45], 7),
    ("infix", [8], 6),
    ("prompt", [30, 31, 32, 33], 5),
    ("b", [11, 12, 13, 14, 15, 16, 17, 18], 8),
    ("infix", [50, 51, 52, 53, 54], 4),
]
JOIN_AT = [0, 0, 1, 2, 2, 4, 7]
"""The decode step before which each job joins."""


def _bank():
    model = tiny_bank()
    model.add("infix", PrefixConfig(length=3, kind="infix", reparam="flat", seed=3))
    model.add("prompt", PrefixConfig(length=2, kind="embedding", reparam="flat", seed=2, layers=[1]))
    return model


def _row(prefix, prompt, length, temperature=0.0, seed=None) -> Row:
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    sampling = Sampling(max_tokens=length, temperature=temperature, top_p=0.9)
    quiet = {"on_text": lambda row, text: None, "on_finish": lambda row: None}
    return Row(prompt, prefix, sampling, generator, **quiet)


def _alone(engine: Engine, job, **sampling) -> list[int]:
    row = _row(*job, **sampling)
    engine.run([row])
    return row.tokens


def _staggered(live: LiveBatch, rows: list[Row], join_at: list[int]) -> list[int]:
    """Join each row before its step, step until every row is done; the live widths seen."""
    widths, step = [], 0
    while step <= max(join_at) or live.rows:
        joining = [row for row, at in zip(rows, join_at, strict=True) if at == step]
        if joining:
            live.join(joining)
        live.step()
        widths.append(live.width)
        step += 1
    return widths


def test_rows_joining_mid_decode_get_exactly_their_solo_greedy_tokens():
    live = LiveBatch(Engine(_bank(), word_tokenizer()))
    rows = [_row(*job) for job in JOBS]
    widths = _staggered(live, rows, JOIN_AT)
    solo = Engine(_bank(), word_tokenizer())
    for row, job in zip(rows, JOBS, strict=True):
        assert row.tokens == _alone(solo, job), job
        assert row.finish == "length"
    assert live.rows == [] and live.engine.model.injector.current is None
    # a step adds a column to the cache, unless a leaving row took columns only it used
    assert any(later <= earlier for earlier, later in zip(widths, widths[1:-1], strict=False))


def test_a_joined_infix_row_sees_its_infix_from_its_own_last_prompt_column():
    """Joined beside a longer row, the infix row is left-padded; seen one column early it would differ."""
    model = _bank()
    live = LiveBatch(Engine(model, word_tokenizer()))
    long_row, infix_row = _row(None, [40, 41, 42, 43, 44, 45], 6), _row("infix", [8, 9], 6)
    _staggered(live, [long_row, infix_row], [0, 2])
    reference = _bank()
    solo = reference.generate(torch.tensor([[8, 9]]), prefix=["infix"], max_new_tokens=6)
    early = reference.generate(
        torch.tensor([[8, 9]]), prefix=["infix"], max_new_tokens=6, infix_at=torch.tensor(0)
    )
    assert infix_row.tokens == solo[0, 2:].tolist() != early[0, 2:].tolist()


def test_seeded_sampling_joining_mid_decode_draws_what_it_draws_alone():
    live = LiveBatch(Engine(_bank(), word_tokenizer()))
    rows = [_row(*job, temperature=1.3, seed=100 + i) for i, job in enumerate(JOBS)]
    _staggered(live, rows, JOIN_AT)
    solo = Engine(_bank(), word_tokenizer())
    for i, (row, job) in enumerate(zip(rows, JOBS, strict=True)):
        assert row.tokens == _alone(solo, job, temperature=1.3, seed=100 + i)


def test_a_cancelled_row_leaves_mid_decode_and_frees_its_columns():
    live = LiveBatch(Engine(_bank(), word_tokenizer()))
    long_prompt = _row("a", list(range(10, 40)), 20)
    long_prompt.is_cancelled = lambda: len(long_prompt.tokens) >= 3
    short = [_row(*JOBS[0]), _row(*JOBS[1])]
    live.join([long_prompt, short[0]])
    live.step()
    assert live.width == 31  # the 30-token prompt and one generated token
    live.join([short[1]])
    live.step()
    live.step()  # the long row's third token: its client leaves, and so do its 30 columns
    assert long_prompt not in live.rows and long_prompt.finish is None
    assert live.width == len(JOBS[0][1]) + 4 - 1  # the widest remaining row now
    while live.rows:
        live.step()
    solo = Engine(_bank(), word_tokenizer())
    assert [r.tokens for r in short] == [_alone(solo, JOBS[0]), _alone(solo, JOBS[1])]
