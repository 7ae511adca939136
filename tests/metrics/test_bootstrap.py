"""Per-input BLEU counts and the paired bootstrap, against corpus BLEU computed directly."""

from __future__ import annotations

import random

import pytest

from prefixtune.data import bundled_e2e, group_references, read_e2e_csv
from prefixtune.errors import PrefixTuneError
from prefixtune.metrics import bleu, paired_bootstrap_bleu
from prefixtune.metrics.mteval import BLEU_ORDER, bleu_from_counts, bleu_statistics

pytest.importorskip("sacrebleu", reason="the eval extra (sacrebleu) is not installed")


def dev_sample():
    """Bundled E2E dev MRs: the first reference as the 'system', the others as its references."""
    groups = group_references(read_e2e_csv(bundled_e2e("dev")))
    return [refs[0] for _, refs in groups], [refs[1:] for _, refs in groups]


def summed_bleu(rows) -> float:
    total = [sum(column) for column in zip(*rows, strict=True)]
    return 100 * bleu_from_counts(total[2 : 2 + BLEU_ORDER], total[2 + BLEU_ORDER :], total[0], total[1])


def shuffled_words(text: str, rng: random.Random) -> str:
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


def test_summed_counts_are_corpus_bleu_of_any_subset():
    hyps, refs = dev_sample()
    rows = bleu_statistics(hyps, refs)
    assert summed_bleu(rows) == pytest.approx(bleu(hyps, refs), abs=1e-9)
    # a resample with repeats, as the bootstrap draws it, scored directly
    picks = random.Random(3).choices(range(len(hyps)), k=len(hyps))
    assert summed_bleu([rows[i] for i in picks]) == pytest.approx(
        bleu([hyps[i] for i in picks], [refs[i] for i in picks]), abs=1e-9
    )


def test_the_same_system_twice_differs_by_nothing():
    hyps, refs = dev_sample()
    result = paired_bootstrap_bleu(hyps, hyps, refs, samples=200)
    assert result.bleu_a == result.bleu_b == pytest.approx(bleu(hyps, refs))
    assert (result.low, result.high, result.a_wins) == (0.0, 0.0, 0.0)
    assert not result.significant


def test_a_clearly_better_system_wins_every_resample():
    hyps, refs = dev_sample()
    rng = random.Random(0)
    scrambled = [shuffled_words(h, rng) for h in hyps]
    result = paired_bootstrap_bleu(hyps, scrambled, refs, samples=300)
    assert result.bleu_b == pytest.approx(bleu(scrambled, refs))
    assert result.difference > 10
    assert result.low > 0 and result.a_wins == 1.0 and result.significant
    assert result.low <= result.difference <= result.high
    swapped = paired_bootstrap_bleu(scrambled, hyps, refs, samples=300)
    assert swapped.high < 0 and swapped.a_wins == 0.0


def test_a_small_difference_on_few_inputs_is_not_a_finding():
    hyps, refs = dev_sample()
    hyps, refs = hyps[:12], refs[:12]
    changed = list(hyps)
    changed[0] = shuffled_words(changed[0], random.Random(1))  # one output of twelve made worse
    result = paired_bootstrap_bleu(hyps, changed, refs, samples=500, seed=7)
    assert result.difference > 0
    assert result.low <= 0 < result.high and not result.significant
    assert result == paired_bootstrap_bleu(hyps, changed, refs, samples=500, seed=7)  # seeded


def test_mismatched_inputs_are_refused():
    hyps, refs = dev_sample()
    with pytest.raises(PrefixTuneError, match="same inputs"):
        paired_bootstrap_bleu(hyps, hyps[:-1], refs)
    with pytest.raises(PrefixTuneError, match="confidence"):
        paired_bootstrap_bleu(hyps, hyps, refs, confidence=95)
