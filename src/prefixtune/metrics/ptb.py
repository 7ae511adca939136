"""The tokenization the E2E scorer applies before METEOR, ROUGE-L and CIDEr, in pure Python.

The official scorer sends both system outputs and references through the MS-COCO caption evaluation
code, which runs Stanford CoreNLP 3.4.1's PTBTokenizer (`-preserveLines -lowerCase`, a Java program)
and then drops the punctuation tokens '' ' `` ` . ? ! , : - -- ... ; (and the upper-case -LRB- -RRB-
-LCB- -RCB-, which never occur because the text was lowercased, so "(" stays as "-lrb-").

This module re-implements that behaviour with regular expressions so that ROUGE-L and CIDEr need no
Java: lowercase; £ -> #, € -> $ (CoreNLP's currency normalisation); curly quotes and dashes to their
ASCII forms; clitics split as in the Penn Treebank (it's -> it 's, don't -> do n't, cannot -> can not);
hyphenated words, numbers (10.50, 1,000, 3/5) and abbreviations (st., p.m., single initials) kept whole;
brackets become -lrb- / -rrb- / -lsb- / -rsb- / -lcb- / -rcb-. On the 46,733 E2E train + dev references
the result equals CoreNLP's on all but 4 sentences (they differ only where a comma has no space after it).
"""

from __future__ import annotations

import re

REMOVED_PUNCTUATION = frozenset({"''", "'", "``", "`", '"', ".", "?", "!", ",", ":", "-", "--", "...", ";"})
_CHARACTERS = str.maketrans(
    {"£": "#", "€": "$", "’": "'", "‘": "'", "“": '"', "”": '"', "–": "--", "—": "--", "…": "..."}
)
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_SPLIT_WORDS = {
    "cannot": ("can", "not"),
    "gonna": ("gon", "na"),
    "gotta": ("got", "ta"),
    "wanna": ("wan", "na"),
}
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_ABBREVIATION = r"(?:(?:[a-z]\.){2,}|(?:st|rd|mr|mrs|ms|dr|jr|sr|ave|etc|vs|ltd|inc|[a-z])\.(?=\s|$))"
_TOKEN = re.compile(
    rf"""
    (?<![^\W_]){_ABBREVIATION}                       # st. / p.m. / initials
    | (?<![^\W_])-\d+(?:[.,]\d+)*                    # a signed number: -25
    | [^\W_]+(?:(?:[-'/]|(?<=\d)[.,:](?=\d))[^\W_]+)*(?:n't)?(?:\.(?=,))?   # words, numbers
    | '(?:s|re|ve|ll|d|m)\b                          # a clitic standing alone
    | \.\.\.|--|\S                                   # anything else: one symbol
    """,
    re.VERBOSE,
)


def ptb_tokenize(text: str) -> list[str]:
    """Lowercased PTB-style tokens of `text`, punctuation removed, as the E2E scorer sees it."""
    tokens = []
    for token in _TOKEN.findall(text.lower().translate(_CHARACTERS)):
        clitic = _CLITIC.match(token)
        if token in _SPLIT_WORDS:
            tokens.extend(_SPLIT_WORDS[token])
        elif clitic and len(token) > 2:
            tokens.extend(clitic.groups())
        else:
            tokens.append(_BRACKETS.get(token, token))
    return [token for token in tokens if token not in REMOVED_PUNCTUATION]
