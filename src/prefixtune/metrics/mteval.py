"""BLEU and NIST as the E2E challenge scorer computes them.

The official scorer (tuetschek/e2e-metrics, measure_scores.py) runs NIST's mteval-v13a.pl without `-c`,
so both metrics are **case-insensitive**: the text is lowercased (ASCII letters only, as the Perl
`tr/[A-Z]/[a-z]/` does) and tokenized with mteval's v13a rules (sacrebleu's "13a" tokenizer implements
the same rules). The whole output set is scored as one document.

- BLEU: corpus BLEU-4 with clipped counts against all references of a segment and the brevity penalty
  from the closest reference length (ties: the shorter one). mteval's default smoothing applies: an
  n-gram order with no match gets precision 1 / (2^k * total), k counting such orders. Returned on 0-1.
- NIST: NIST-5. The n-gram information weights come from the reference counts of the whole set:
  info(w1..wn) = log2(count(w1..wn-1) / count(w1..wn)) (count of all reference words for n = 1).
  Score = sum over n of (information of the clipped matches / number of system n-grams), times
  exp(-beta * log(r)^2) when r < 1, beta = -ln(0.5) / ln(1.5)^2, r = system words / average reference
  words. As in mteval with E2E's padded reference sets, the average divides all reference words by
  the largest number of references any segment has.

BLEU's counts come from sacrebleu; the final BLEU formula (mteval's smoothing) and NIST are computed
here from the published mteval-v13a definitions.
"""

from __future__ import annotations

import functools
import math
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from prefixtune.metrics._deps import require

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
BLEU_ORDER = 4
NIST_ORDER = 5
_NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2


def _normalise(text: str) -> str:
    return text.translate(_ASCII_LOWER)


@functools.cache
def _tokenizer_13a() -> Callable[[str], str]:
    return require("sacrebleu.tokenizers.tokenizer_13a", "sacrebleu", "BLEU / NIST").Tokenizer13a()


def _sacrebleu_bleu() -> Any:
    """sacrebleu's BLEU set to count as mteval-v13a does (the text is lowercased by `_normalise` first)."""
    bleu_module = require("sacrebleu.metrics.bleu", "sacrebleu", "BLEU")
    return bleu_module.BLEU(lowercase=False, tokenize="13a", smooth_method="exp", force=True)


def mteval_tokenize(text: str) -> list[str]:
    """Lowercase (ASCII) and tokenize as mteval-v13a does; returns the tokens."""
    return _tokenizer_13a()(_normalise(text)).split()


def mteval_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU on 0-1; `references[i]` are the non-empty references of `hypotheses[i]`."""
    depth = max(len(refs) for refs in references)
    streams = [[_normalise(refs[k]) if k < len(refs) else None for refs in references] for k in range(depth)]
    stats = _sacrebleu_bleu().corpus_score([_normalise(h) for h in hypotheses], streams)
    return bleu_from_counts(stats.counts, stats.totals, stats.sys_len, stats.ref_len)


def bleu_statistics(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> list[list[int]]:
    """Each input's BLEU counts: [sys_len, ref_len, matches 1-4, totals 1-4], as `mteval_bleu` counts them.

    Corpus BLEU only adds these up, so the sum over any subset of inputs, passed to `bleu_from_counts`,
    is that subset's corpus BLEU: what a bootstrap over inputs needs without rescoring every sample.
    """
    metric = _sacrebleu_bleu()
    rows = []
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        stats = metric.corpus_score([_normalise(hypothesis)], [[_normalise(r)] for r in refs])
        rows.append([stats.sys_len, stats.ref_len, *stats.counts[:BLEU_ORDER], *stats.totals[:BLEU_ORDER]])
    return rows


def bleu_from_counts(matches: Sequence[int], totals: Sequence[int], sys_len: int, ref_len: int) -> float:
    """mteval-v13a's smoothed BLEU from corpus n-gram matches / totals (index 0 = unigrams)."""
    if sys_len == 0:
        return 0.0
    log_score = 0.0
    smooth = 1
    for match, total in zip(matches[:BLEU_ORDER], totals[:BLEU_ORDER], strict=True):
        if total == 0:
            continue  # mteval counts an order the system never produced as precision 1
        if match == 0:
            smooth *= 2
            log_score += math.log(1.0 / (smooth * total))
        else:
            log_score += math.log(match / total)
    return math.exp(log_score / BLEU_ORDER + min(0.0, 1.0 - ref_len / sys_len))


def _ngrams(tokens: list[str], max_order: int) -> Counter:
    return Counter(
        tuple(tokens[i : i + n]) for n in range(1, max_order + 1) for i in range(len(tokens) - n + 1)
    )


def mteval_nist(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus NIST-5 (unbounded above; E2E systems score about 8-9)."""
    hyp_tokens = [mteval_tokenize(h) for h in hypotheses]
    ref_tokens = [[mteval_tokenize(r) for r in refs] for refs in references]
    return nist_from_tokens(hyp_tokens, ref_tokens)


def nist_from_tokens(hyp_tokens: list[list[str]], ref_tokens: list[list[list[str]]]) -> float:
    ref_counts: Counter = Counter()
    ref_words = 0
    for refs in ref_tokens:
        for ref in refs:
            ref_counts.update(_ngrams(ref, NIST_ORDER))
            ref_words += len(ref)

    def info(ngram: tuple[str, ...]) -> float:
        context = ref_counts[ngram[:-1]] if len(ngram) > 1 else ref_words
        return math.log2(context / ref_counts[ngram])

    matched_info = [0.0] * NIST_ORDER
    system_ngrams = [0] * NIST_ORDER
    for hyp, refs in zip(hyp_tokens, ref_tokens, strict=True):
        best: Counter = Counter()
        for ref in refs:
            best |= _ngrams(ref, NIST_ORDER)  # max count over the references
        for ngram, count in _ngrams(hyp, NIST_ORDER).items():
            if ngram in best:
                matched_info[len(ngram) - 1] += info(ngram) * min(count, best[ngram])
        for n in range(NIST_ORDER):
            system_ngrams[n] += max(len(hyp) - n, 0)
    score = sum(info_sum / max(total, 1) for info_sum, total in zip(matched_info, system_ngrams, strict=True))
    reference_sets = max(len(refs) for refs in ref_tokens)
    average_ref_words = ref_words / reference_sets
    ratio = system_ngrams[0] / average_ref_words if average_ref_words else 1.0
    return score * _nist_length_penalty(ratio)


def _nist_length_penalty(ratio: float) -> float:
    if ratio >= 1:
        return 1.0
    if ratio <= 0:
        return 0.0
    return math.exp(-_NIST_BETA * math.log(ratio) ** 2)
