"""Keeping or leaving out the topics of a data set: WebNLG files each input under a category.

Li & Liang test extrapolation on WebNLG's unseen categories, which only its test set holds. With the
train and dev sets alone the same question is asked by holding categories out: train with
`exclude_categories="City,Monument,University"`, then score the dev set's held-out categories
(`categories=...`) against the trained ones (`exclude_categories=...`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from prefixtune.data.records import Example
from prefixtune.errors import PrefixTuneError


def parse_categories(text: str | None) -> tuple[str, ...]:
    """`"City, Monument"` -> ("City", "Monument"); None or "" -> ()."""
    return tuple(name.strip() for name in (text or "").split(",") if name.strip())


def select_categories(
    examples: list[Example],
    path: str | Path,
    *,
    keep: str | None = None,
    drop: str | None = None,
    flags: tuple[str, str] = ("--categories", "--exclude-categories"),
) -> list[Example]:
    """The examples of the categories in `keep` (all when None), less those in `drop`.

    Both are comma-separated names. A name the data does not hold is refused with the names it does
    hold, since a typo would otherwise quietly select nothing (or hold nothing out). `flags` are the
    options the caller's user sets them with, named in errors.
    """
    wanted, unwanted = parse_categories(keep), parse_categories(drop)
    if not wanted and not unwanted:
        return examples
    counts = Counter(e.category for e in examples)
    if set(counts) == {None}:
        raise PrefixTuneError(
            f"{path} has no categories, so {flags[0]}/{flags[1]} cannot select from it; they apply to "
            "data that files each input under a category (WebNLG JSON)"
        )
    for flag, names in zip(flags, (wanted, unwanted), strict=True):
        unknown = [name for name in names if name not in counts]
        if unknown:
            held = ", ".join(f"{c} ({n})" for c, n in sorted(counts.items(), key=lambda i: str(i[0])))
            raise PrefixTuneError(
                f"{flag}: {path} has no category {', '.join(map(repr, unknown))}; it holds {held} "
                "(names are case-sensitive)"
            )
    kept = [e for e in examples if (not wanted or e.category in wanted) and e.category not in unwanted]
    if not kept:
        raise PrefixTuneError(f"{flags[0]} {keep!r} with {flags[1]} {drop!r} leaves no example of {path}")
    return kept
