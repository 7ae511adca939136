"""The pure-Python PTB tokenization against the Stanford CoreNLP PTBTokenizer the E2E scorer runs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from prefixtune.data import bundled_e2e, group_references, read_e2e_csv
from prefixtune.metrics import e2e_scores
from prefixtune.metrics.ptb import REMOVED_PUNCTUATION, ptb_tokenize

COCO_PUNCTUATION = {
    "''",
    "'",
    "``",
    "`",
    "-LRB-",
    "-RRB-",
    "-LCB-",
    "-RCB-",
    ".",
    "?",
    "!",
    ",",
    ":",
    "-",
    "--",
    "...",
    ";",
}


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        (
            "The Vaults pub, near Café Adriatic, has a 5-star rating.",
            "the vaults pub near café adriatic has a 5-star rating",
        ),
        ("Prices start at £30 (or €20-25).", "prices start at # 30 -lrb- or $ 20-25 -rrb-"),
        (
            "It's kid-friendly, isn't it? You can't miss it; we cannot.",
            "it 's kid-friendly is n't it you ca n't miss it we can not",
        ),
        ("Near St. John's College, open 5 p.m. to 10.30", "near st. john 's college open 5 p.m. to 10.30"),
        ("A “quoted” name — and ‘more’…", "a quoted name and more"),
        ("rated 3/5 and 1,000 points", "rated 3/5 and 1,000 points"),
        ("", ""),
    ],
)
def test_ptb_tokenize_examples(text, tokens):
    assert ptb_tokenize(text) == tokens.split()


def test_removed_punctuation_is_the_coco_list():
    # The COCO list's upper-case bracket tokens never match lowercased output, so brackets are kept;
    # '"' is here because CoreNLP turns it into `` or '', which the list removes.
    assert REMOVED_PUNCTUATION == {t for t in COCO_PUNCTUATION if not t.isupper()} | {'"'}


def _stanford_jar() -> Path | None:
    if shutil.which("java") is None:
        return None
    try:
        import pycocoevalcap.tokenizer.ptbtokenizer as ptb
    except ImportError:
        return None
    jar = Path(ptb.__file__).with_name("stanford-corenlp-3.4.1.jar")
    return jar if jar.is_file() else None


STANFORD = _stanford_jar()
needs_stanford = pytest.mark.skipif(STANFORD is None, reason="needs java and pycocoevalcap's CoreNLP jar")


def _stanford_tokenize(lines: list[str], tmp_path: Path) -> list[list[str]]:
    source = tmp_path / "lines.txt"
    source.write_text("\n".join(line.replace("\n", " ") for line in lines) + "\n", encoding="utf-8")
    command = [
        "java",
        "-cp",
        str(STANFORD),
        "edu.stanford.nlp.process.PTBTokenizer",
        "-preserveLines",
        "-lowerCase",
    ]
    output = subprocess.run([*command, str(source)], capture_output=True, check=True).stdout.decode("utf-8")
    return [
        [t for t in line.split(" ") if t and t not in COCO_PUNCTUATION]
        for line in output.split("\n")[: len(lines)]
    ]


@needs_stanford
def test_matches_stanford_corenlp_on_the_bundled_e2e_references(tmp_path):
    references = [e.target for split in ("train", "dev") for e in read_e2e_csv(bundled_e2e(split))]
    stanford = _stanford_tokenize(references, tmp_path)
    differing = [ref for ref, theirs in zip(references, stanford, strict=True) if ptb_tokenize(ref) != theirs]
    assert len(differing) <= 2, differing  # on all 46,733 E2E train + dev references: 4 differ


@needs_stanford
def test_rouge_l_and_cider_equal_the_official_coco_pipeline(tmp_path):
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    groups = group_references(read_e2e_csv(bundled_e2e("dev")))
    hyps, refs = [r[0] for _, r in groups], [r[1:] for _, r in groups]
    flat = _stanford_tokenize(hyps + [r for group in refs for r in group], tmp_path)
    tokenized_hyps, rest = flat[: len(hyps)], iter(flat[len(hyps) :])
    gts = {i: [" ".join(next(rest)) for _ in group] for i, group in enumerate(refs)}
    res = {i: [" ".join(tokens)] for i, tokens in enumerate(tokenized_hyps)}
    official = {
        "ROUGE_L": 100 * Rouge().compute_score(gts, res)[0],
        "CIDEr": Cider().compute_score(gts, res)[0],
    }
    ours = e2e_scores(hyps, refs, metrics=["ROUGE_L", "CIDEr"])
    assert ours == pytest.approx(official, abs=1e-9)
