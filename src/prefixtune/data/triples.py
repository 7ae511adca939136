"""Readers for RDF-triple data sets (WebNLG 2017 JSON, DART JSON), linearised as in Li & Liang (2021).

Li & Liang's code writes each triple as `subject : property : object` and joins the triples of one
input with ` | `, keeping entity names as they are (WebNLG's underscores included). For DART it
lowercases the property; for WebNLG it keeps only lexicalisations whose `comment` is "good".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefixtune.data._io import read_text, require_examples
from prefixtune.data.records import Example
from prefixtune.errors import PrefixTuneError

TRIPLE_SEPARATOR = " | "
PART_SEPARATOR = " : "


def linearise_triples(triples: list[tuple[str, str, str]]) -> str:
    """`s1 : p1 : o1 | s2 : p2 : o2 | ...`."""
    return TRIPLE_SEPARATOR.join(PART_SEPARATOR.join(triple) for triple in triples)


def load_json(path: str | Path) -> Any:
    """A whole JSON document, with a PrefixTuneError naming the line when it does not parse."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise PrefixTuneError(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}). "
            "Check that the file is complete (not truncated)."
        ) from None


def read_webnlg_json(path: str | Path) -> list[Example]:
    """WebNLG 2017 JSON (`{"entries": [{"1": {...}}, ...]}`): one Example per good lexicalisation."""
    return webnlg_examples(load_json(path), path)


def read_dart_json(path: str | Path) -> list[Example]:
    """DART JSON (a list of `{"tripleset": [[s, p, o], ...], "annotations": [{"text": ...}]}`)."""
    return dart_examples(load_json(path), path)


def webnlg_examples(data: Any, path: str | Path) -> list[Example]:
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise PrefixTuneError(
            f'{path} is not WebNLG JSON: expected an object with an "entries" list. For DART use '
            "fmt='dart'; for one example per line use fmt='jsonl'."
        )
    examples = []
    for number, wrapper in enumerate(data["entries"], start=1):
        try:
            (entry,) = wrapper.values()
            triples = [(t["subject"], t["property"], t["object"]) for t in entry["modifiedtripleset"]]
            lexicalisations = entry["lexicalisations"]
            texts = [lex["lex"] for lex in lexicalisations if lex.get("comment", "good") == "good"]
            source = linearise_triples(triples)
            category = entry.get("category")
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise PrefixTuneError(
                f"{path}: entry {number} is not a WebNLG entry (problem: {err!r}). Each entry must be "
                '{"<n>": {"modifiedtripleset": [{"subject", "property", "object"}], '
                '"lexicalisations": [{"lex"}]}}.'
            ) from None
        examples.extend(Example(source, text, category) for text in texts)
    return require_examples(examples, path, "no entry with a good lexicalisation")


def dart_examples(data: Any, path: str | Path) -> list[Example]:
    if not isinstance(data, list):
        raise PrefixTuneError(
            f"{path} is not DART JSON: expected a list of records with 'tripleset' and 'annotations'. "
            "For WebNLG use fmt='webnlg'; for one example per line use fmt='jsonl'."
        )
    examples = []
    for number, record in enumerate(data, start=1):
        try:
            triples = [(s, p.lower(), o) for s, p, o in record["tripleset"]]
            texts = [annotation["text"] for annotation in record["annotations"]]
            source = linearise_triples(triples)
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise PrefixTuneError(
                f"{path}: record {number} is not a DART record (problem: {err!r}). Each record must be "
                '{"tripleset": [[subject, property, object], ...], "annotations": [{"text": ...}, ...]}.'
            ) from None
        examples.extend(Example(source, text) for text in texts)
    return require_examples(examples, path, "no annotated record")
