"""`e2e_scores`: the five E2E NLG Challenge metrics, multi-reference, as the official scorer defines them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prefixtune.errors import PrefixTuneError
from prefixtune.metrics import coco, mteval
from prefixtune.metrics._deps import require
from prefixtune.metrics.ptb import ptb_tokenize

E2E_METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")
METRICS = (*E2E_METRICS, "TER")
"""What `e2e_scores` can compute: the E2E challenge's five, and TER, which WebNLG reports."""
_BY_LOWER = {name.lower(): name for name in METRICS}


def e2e_scores(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str] | str],
    metrics: Iterable[str] = E2E_METRICS,
) -> dict[str, float]:
    """Score system outputs against their references with the E2E challenge metrics.

    `hypotheses[i]` is the output for one input and `references[i]` the list of all references for that
    input (a plain string counts as a single reference; `prefixtune.data.group_references` builds these).
    `metrics` chooses which of "BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr" and "TER" to compute (any
    case); METEOR needs Java, so leave it out where there is none.

    Returns {name: score} in the order asked, on the scale papers report: BLEU, METEOR and ROUGE_L as
    percentages (0-100), NIST and CIDEr raw (E2E: GPT-2 prefix-tuning about 8.8 NIST and 2.5 CIDEr).
    BLEU and NIST are case-insensitive (mteval-v13a tokenization); METEOR, ROUGE_L and CIDEr use the
    COCO code's lowercased PTB tokenization without punctuation (see `prefixtune.metrics.ptb`).
    TER (translation edit rate, lower is better, as a percentage) is sacrebleu's reimplementation of
    tercom, case-insensitive, against the closest reference of each input: WebNLG's third metric.
    """
    names = _metric_names(metrics)
    hyps, refs = _check_inputs(hypotheses, references)
    if "METEOR" in names:
        coco.java_executable()
        coco.meteor_jar()
    scores: dict[str, float] = {}
    if "BLEU" in names:
        scores["BLEU"] = 100.0 * mteval.mteval_bleu(hyps, refs)
    if "NIST" in names:
        scores["NIST"] = mteval.mteval_nist(hyps, refs)
    if "TER" in names:
        scores["TER"] = ter(hyps, refs)
    if {"METEOR", "ROUGE_L", "CIDEr"} & set(names):
        hyp_tokens = [ptb_tokenize(h) for h in hyps]
        ref_tokens = [[ptb_tokenize(r) for r in group] for group in refs]
        if "METEOR" in names:
            scores["METEOR"] = 100.0 * coco.meteor(hyp_tokens, ref_tokens)
        if "ROUGE_L" in names:
            scores["ROUGE_L"] = 100.0 * coco.rouge_l(hyp_tokens, ref_tokens)
        if "CIDEr" in names:
            scores["CIDEr"] = coco.cider(hyp_tokens, ref_tokens)
    return {name: scores[name] for name in names}


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str] | str]) -> float:
    """Corpus BLEU (0-100) exactly as in `e2e_scores`; cheap (no Java), for evaluation during training."""
    hyps, refs = _check_inputs(hypotheses, references)
    return 100.0 * mteval.mteval_bleu(hyps, refs)


def ter(hypotheses: list[str], references: list[list[str]]) -> float:
    """Corpus TER (0-100+): all inputs' edits over their references' mean lengths, summed."""
    ter_module = require("sacrebleu.metrics.ter", "sacrebleu", "TER")
    width = max(len(group) for group in references)
    # sacrebleu takes one stream per reference position; None pads an input with fewer references
    streams = [[group[i] if i < len(group) else None for group in references] for i in range(width)]
    return float(ter_module.TER().corpus_score(hypotheses, streams).score)


def _metric_names(metrics: Iterable[str]) -> list[str]:
    if isinstance(metrics, str):
        metrics = [metrics]
    names = []
    for metric in metrics:
        name = _BY_LOWER.get(str(metric).lower())
        if name is None:
            raise PrefixTuneError(f"unknown metric {metric!r}. Choose from: {', '.join(METRICS)}.")
        if name not in names:
            names.append(name)
    if not names:
        raise PrefixTuneError(f"no metric asked for. Pass metrics= a list drawn from: {', '.join(METRICS)}.")
    return names


def _check_inputs(
    hypotheses: Sequence[str], references: Sequence[Sequence[str] | str]
) -> tuple[list[str], list[list[str]]]:
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise PrefixTuneError(
            "pass lists: hypotheses = one string per input, references = one list of reference strings "
            "per input."
        )
    hyps, refs = list(hypotheses), list(references)
    if len(hyps) != len(refs):
        raise PrefixTuneError(
            f"got {len(hyps)} hypotheses but {len(refs)} reference lists; pass one list of references per "
            "hypothesis, in the same order (prefixtune.data.group_references gives them per unique source)."
        )
    if not hyps:
        raise PrefixTuneError("nothing to score: hypotheses and references are empty.")
    grouped = []
    for i, (hyp, group) in enumerate(zip(hyps, refs, strict=True)):
        group = [group] if isinstance(group, str) else list(group)
        if not isinstance(hyp, str) or not all(isinstance(ref, str) for ref in group):
            raise PrefixTuneError(
                f"item {i}: hypotheses must be strings and references lists of strings "
                f"(got {type(hyp).__name__} and {[type(ref).__name__ for ref in group]})."
            )
        group = [ref for ref in group if ref.strip()]
        if not group:
            raise PrefixTuneError(
                f"item {i} has no non-empty reference; every hypothesis needs at least one."
            )
        grouped.append(group)
    return hyps, grouped
