"""E2E metrics against values worked out by hand from the published formulas."""

from __future__ import annotations

import math
import shutil

import pytest

from prefixtune.data import bundled_e2e, group_references, read_e2e_csv
from prefixtune.errors import PrefixTuneError
from prefixtune.metrics import E2E_METRICS, bleu, e2e_scores

pytest.importorskip("sacrebleu", reason="the eval extra (sacrebleu) is not installed")
pytest.importorskip("pycocoevalcap.cider.cider", reason="the eval extra (pycocoevalcap) is not installed")

HAS_JAVA = shutil.which("java") is not None
needs_java = pytest.mark.skipif(not HAS_JAVA, reason="METEOR runs a Java program and no `java` is on PATH")
NO_METEOR = ["BLEU", "NIST", "ROUGE_L", "CIDEr"]
NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2


def dev_sample():
    """Bundled E2E dev MRs: the first reference as the 'system', the other references as references."""
    groups = group_references(read_e2e_csv(bundled_e2e("dev")))
    return [refs[0] for _, refs in groups], [refs[1:] for _, refs in groups]


# --- BLEU (mteval-v13a) ---------------------------------------------------------------------------------


def test_bleu_of_exact_matches_is_100():
    hyps = ["The Vaults is a pub near Café Adriatic.", "Zizzi serves cheap food in the city centre."]
    assert bleu(hyps, [[h] for h in hyps]) == pytest.approx(100.0)
    assert e2e_scores(hyps, [[h, "Something else entirely."] for h in hyps], metrics=["BLEU"])[
        "BLEU"
    ] == pytest.approx(100.0)


def test_bleu_is_case_insensitive_and_tokenizes_like_mteval():
    assert bleu(["The Cat, the MAT."], [["the cat , the mat ."]]) == pytest.approx(100.0)
    # v13a splits a dash only after a digit and leaves the non-ASCII £ attached to the number.
    assert bleu(["Price £20-25."], [["price £20 - 25 ."]]) == pytest.approx(100.0)
    assert bleu(["price £20-25"], [["price £ 20 - 25"]]) < 50


def test_bleu_hand_worked_with_mteval_smoothing():
    # hyp: the cat sat on the mat / ref: the cat is on the mat (6 tokens each, BP = 1)
    # 1-grams 5/6, 2-grams 3/5 (the cat, on the, the mat), 3-grams 1/4 (on the mat), 4-grams 0/3.
    # mteval smooths the first zero order to 1 / (2 * 3).
    expected = 100 * (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25
    assert bleu(["the cat sat on the mat"], [["the cat is on the mat"]]) == pytest.approx(expected)
    assert expected == pytest.approx(37.9918, abs=1e-4)


def test_bleu_brevity_penalty_uses_the_closest_reference():
    # 3 hypothesis tokens; references of 4 and 8 tokens: the closest (4) is used, BP = exp(1 - 4/3).
    # All 1-, 2- and 3-grams match and there are no 4-grams, which mteval counts as precision 1.
    score = bleu(["a b c"], [["a b c d", "a b c d e f g h"]])
    assert score == pytest.approx(100 * math.exp(1 - 4 / 3))
    # A tie in distance picks the shorter reference: 3 tokens vs refs of 4 and 2 -> 2 -> BP = 1.
    # "a b x": 1-grams 2/3, 2-grams 1/2, 3-grams 0/1 -> 1 / (2 * 1), no 4-grams.
    assert bleu(["a b x"], [["a b c d", "a b"]]) == pytest.approx(100 * (2 / 3 * 1 / 2 * 1 / 2) ** 0.25)


def test_bleu_matches_sacrebleu_on_real_data():
    sacrebleu = pytest.importorskip("sacrebleu")
    hyps, refs = dev_sample()
    depth = max(len(r) for r in refs)
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(depth)]
    expected = sacrebleu.corpus_bleu(hyps, streams, lowercase=True, tokenize="13a").score
    assert bleu(hyps, refs) == pytest.approx(expected, abs=1e-9)
    assert 40 < expected < 80


# --- NIST -----------------------------------------------------------------------------------------------


def test_nist_hand_worked():
    # References "a b" and "a c": 4 words; count(a) = 2, count(b) = count(c) = 1, count(a b) = 1.
    # info(a) = log2(4/2) = 1, info(b) = log2(4/1) = 2, info(a b) = log2(count(a)/count(a b)) = 1.
    # Matches: "a b" -> a, b, (a b); "a d" -> a.  1-grams: (1 + 2 + 1) / 4, 2-grams: 1 / 2.  Lengths equal.
    scores = e2e_scores(["a b", "a d"], [["a b"], ["a c"]], metrics=["NIST"])
    assert scores["NIST"] == pytest.approx(1.0 + 0.5)


def test_nist_length_penalty():
    # Hypotheses "a", "a": 1-grams (1 + 1) / 2 = 1; 2 system words against 4 reference words: ratio 0.5.
    expected = 1.0 * math.exp(-NIST_BETA * math.log(0.5) ** 2)
    assert e2e_scores(["a", "a"], [["a b"], ["a c"]], metrics="NIST")["NIST"] == pytest.approx(expected)
    assert expected == pytest.approx(0.1319, abs=1e-4)


def test_nist_average_reference_length_divides_by_the_largest_reference_count():
    # As mteval with E2E's padded reference sets: 6 reference words / 2 reference sets = 3 -> ratio 2/3.
    # Counts: a 3, b 2, c 1 -> info(a) = log2(6/3) = 1; matches: a, a.
    score = e2e_scores(["a", "a"], [["a b", "a b"], ["a c"]], metrics=["NIST"])["NIST"]
    assert score == pytest.approx(1.0 * math.exp(-NIST_BETA * math.log(2 / 3) ** 2))


# --- ROUGE-L and CIDEr (COCO caption code) ---------------------------------------------------------------


def test_rouge_l_hand_worked_two_segments():
    def f(p, r, beta=1.2):
        return (1 + beta**2) * p * r / (r + beta**2 * p)

    # 1: "the cat sat" vs "the cat sat on the mat": LCS 3, P = 3/3, R = 3/6.
    # 2: "one two three four" vs "one five three" (LCS 2: P 2/4, R 2/3) and "two three four six seven"
    #    (LCS 3: P 3/4, R 3/5); best P = 3/4 and best R = 2/3 are taken separately.
    expected = 100 * (f(1, 1 / 2) + f(3 / 4, 2 / 3)) / 2
    scores = e2e_scores(
        ["The cat sat.", "one two three four"],
        [["the cat sat on the mat"], ["one five three", "two three four six seven"]],
        metrics=["ROUGE_L"],
    )
    assert scores["ROUGE_L"] == pytest.approx(expected)
    assert expected == pytest.approx(66.367, abs=1e-3)


def test_cider_identical_vs_disjoint():
    refs = [["the vaults is a pub near the river"], ["zizzi serves cheap italian food downtown"]]
    # Identical and no n-gram shared across segments: every cosine is 1, no length penalty -> 10.
    identical = e2e_scores([r[0] for r in refs], refs, metrics=["CIDEr"])["CIDEr"]
    assert identical == pytest.approx(10.0)
    disjoint = e2e_scores(
        ["completely unrelated words here", "nothing in common at all"], refs, metrics=["CIDEr"]
    )
    assert disjoint["CIDEr"] == 0.0


def test_cider_d_hand_worked_with_length_penalty():
    # Segment 1: reference "a b c d", hypothesis "a b c d e f". Two segments, so every reference n-gram
    # has IDF log(2 / 1) and unseen n-grams (e, f, d e, ...) get log(2 / 1) too: all weights equal.
    # Cosines for n = 1..4: 4 / (sqrt 6 * 2), 3 / (sqrt 5 * sqrt 3), 2 / (2 * sqrt 2), 1 / sqrt 3;
    # Gaussian length penalty exp(-(6 - 4)^2 / (2 * 6^2)); times 10. Segment 2 is identical: 10.
    cosines = [2 / math.sqrt(6), math.sqrt(3 / 5), 1 / math.sqrt(2), 1 / math.sqrt(3)]
    first = 10 * sum(cosines) / 4 * math.exp(-(2**2) / (2 * 6**2))
    refs = [["a b c d"], ["one two three four five"]]
    score = e2e_scores(["a b c d e f", "one two three four five"], refs, metrics=["CIDEr"])["CIDEr"]
    assert score == pytest.approx((first + 10) / 2)
    assert score == pytest.approx(8.4002, abs=1e-4)


# --- METEOR ---------------------------------------------------------------------------------------------


@needs_java
def test_meteor_of_identical_strings_is_close_to_100():
    hyps = ["The Vaults is a pub near Café Adriatic.", "Zizzi serves cheap food in the city centre."]
    score = e2e_scores(hyps, [[h] for h in hyps], metrics=["METEOR"])["METEOR"]
    assert 95.0 <= score <= 100.0
    partial = e2e_scores(
        ["The Vaults is a pub."], [["The Vaults is an expensive restaurant."]], metrics=["METEOR"]
    )
    assert 20.0 < partial["METEOR"] < 80.0


def test_meteor_without_java_says_how_to_fix_it(monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(PrefixTuneError, match=r"no `java` is on PATH.*default-jre-headless.*metrics="):
        e2e_scores(["a b"], [["a b"]])
    # Without METEOR everything else still works with no Java at all.
    assert set(e2e_scores(["a b c d", "e f g h"], [["a b c d"], ["e f g h"]], metrics=NO_METEOR)) == set(
        NO_METEOR
    )


# --- all together, and input errors ----------------------------------------------------------------------


@needs_java
def test_all_five_on_the_bundled_dev_sample():
    hyps, refs = dev_sample()
    scores = e2e_scores(hyps, refs)
    assert list(scores) == list(E2E_METRICS)
    # A human reference scored against the other references: the range published E2E systems reach.
    assert 50 < scores["BLEU"] < 80 and 6 < scores["NIST"] < 10 and 35 < scores["METEOR"] < 55
    assert 55 < scores["ROUGE_L"] < 80 and 1 < scores["CIDEr"] < 3.5


def test_ter_counts_a_shift_as_one_edit():
    # "a" moved to the front is one shift; without shifts it would be a deletion and an insertion
    assert e2e_scores(["b c a"], [["a b c"]], metrics=["TER"])["TER"] == pytest.approx(100 / 3)
    assert e2e_scores(["The Cat"], [["the cat"]], metrics=["ter"]) == {"TER": 0.0}  # case-insensitive


def test_ter_takes_the_closest_reference_over_the_mean_reference_length():
    hyps = ["the cat sat on mat", "a b c"]
    # edits: 1 (insert "the") and 1 (insert "d", against the closer reference); lengths: 6 and (1 + 4) / 2
    refs = [["the cat sat on the mat"], ["x", "a b c d"]]
    assert e2e_scores(hyps, refs, metrics=["TER"])["TER"] == pytest.approx(100 * 2 / 8.5)


def test_metrics_argument_order_case_and_plain_string_references():
    scores = e2e_scores(["a b c d", "e f g h"], ["a b c d", "e f g h"], metrics=["cider", "BLEU"])
    assert list(scores) == ["CIDEr", "BLEU"]
    assert scores == pytest.approx({"CIDEr": 10.0, "BLEU": 100.0})


@pytest.mark.parametrize(
    ("hyps", "refs", "kwargs", "message"),
    [
        (["a"], [["a"], ["b"]], {}, "1 hypotheses but 2 reference lists"),
        ([], [], {}, "nothing to score"),
        (["a"], [["", "  "]], {}, "item 0 has no non-empty reference"),
        (["a"], [[3]], {}, "item 0: hypotheses must be strings"),
        ("a", [["a"]], {}, "pass lists"),
        (["a"], [["a"]], {"metrics": ["BLEU", "SPICE"]}, "unknown metric 'SPICE'.*BLEU, NIST, METEOR"),
        (["a"], [["a"]], {"metrics": []}, "no metric asked for"),
    ],
)
def test_bad_input(hyps, refs, kwargs, message):
    with pytest.raises(PrefixTuneError, match=message):
        e2e_scores(hyps, refs, **kwargs)
