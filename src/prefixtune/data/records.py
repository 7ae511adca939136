"""The record every reader returns, and grouping of references for multi-reference evaluation."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Example:
    """One (source, target) pair: a linearised input and one human reference text."""

    source: str
    target: str
    category: str | None = None
    """The topic the data set files the input under (WebNLG's `category`, e.g. "Airport"); None when
    the format has none."""


def group_references(examples: list[Example]) -> list[tuple[str, list[str]]]:
    """Unique sources in first-seen order, each with all its references in file order.

    E2E, WebNLG and DART have several references per input; the evaluation scores one
    generated text per unique source against all of that source's references.
    """
    groups: dict[str, list[str]] = {}
    for example in examples:
        groups.setdefault(example.source, []).append(example.target)
    return list(groups.items())
