"""Readers for row-per-example files: E2E CSV, generic CSV / TSV, and JSON Lines."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from prefixtune.data._io import read_text, require_examples
from prefixtune.data.records import Example
from prefixtune.errors import PrefixTuneError

E2E_SOURCE_COLUMN = "mr"
E2E_TARGET_COLUMN = "ref"


def read_e2e_csv(path: str | Path) -> list[Example]:
    """The E2E NLG data set's CSV (header `mr,ref`): source = the MR as written, target = one reference."""
    return read_csv(path, source_column=E2E_SOURCE_COLUMN, target_column=E2E_TARGET_COLUMN, delimiter=",")


def read_csv(
    path: str | Path,
    source_column: str = "source",
    target_column: str = "target",
    delimiter: str | None = None,
    column_options: tuple[str, str] = ("source_column", "target_column"),
) -> list[Example]:
    """A CSV (RFC 4180 quoting) or TSV file with a header row; one Example per data row.

    The delimiter is a tab for `.tsv` / `.tab` files and a comma otherwise, unless given. TSV is read
    without quote processing (the usual convention: a tab never occurs inside a field), so quote
    characters are kept as text. `column_options` names the two column settings in error messages
    (a command line passes its flags, e.g. `("--text-column", "--label-column")`).
    """
    path = Path(path)
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(
        io.StringIO(read_text(path), newline=""), delimiter=delimiter, quoting=quoting, strict=True
    )
    try:
        header = next(reader, None)
        if header is None:
            raise PrefixTuneError(
                f"{path} is empty: expected a header row naming the columns, then data rows."
            )
        header = [name.strip() for name in header]
        source_index = _column_index(header, source_column, column_options[0], path)
        target_index = _column_index(header, target_column, column_options[1], path)
        examples = []
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue  # blank line
            if len(row) <= max(source_index, target_index):
                raise PrefixTuneError(
                    f"{path} line {reader.line_num} has {len(row)} field(s) but the header has "
                    f"{len(header)}. Fix that row (a field with a delimiter or a line break must be in "
                    "double quotes)."
                )
            examples.append(Example(row[source_index], row[target_index]))
    except csv.Error as err:
        raise PrefixTuneError(
            f"{path} line {reader.line_num} is not valid CSV ({err}). Check its quoting: a field with a "
            'comma, a quote or a line break goes in double quotes, and a quote inside it is doubled ("").'
        ) from None
    return require_examples(examples, path, "only a header row")


def _column_index(header: list[str], column: str, argument: str, path: Path) -> int:
    if column not in header:
        present = ", ".join(repr(name) for name in header)
        raise PrefixTuneError(
            f"{path} has no column {column!r}; its columns are {present}. Pass {argument}=<one of those>."
        )
    return header.index(column)


def read_jsonl(
    path: str | Path,
    source_column: str = "source",
    target_column: str = "target",
    column_options: tuple[str, str] = ("source_column", "target_column"),
) -> list[Example]:
    """JSON Lines: one object per line. The target may be a string or a list of strings (several references,
    one Example each). Blank lines are skipped. `column_options` as in `read_csv`."""
    path = Path(path)
    examples = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise PrefixTuneError(
                f"{path} line {number} is not valid JSON ({err.msg} at column {err.colno}). "
                "Each line of a JSONL file must be one complete JSON object."
            ) from None
        if not isinstance(record, dict):
            raise PrefixTuneError(
                f"{path} line {number} is a JSON {type(record).__name__}, not an object. "
                f'Write each line as {{"{source_column}": ..., "{target_column}": ...}}.'
            )
        source = _field(record, source_column, column_options[0], path, number)
        targets = _field(record, target_column, column_options[1], path, number)
        if not isinstance(source, str) or not (
            isinstance(targets, str)
            or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))
        ):
            raise PrefixTuneError(
                f"{path} line {number}: {source_column!r} must be a string and {target_column!r} a string "
                "or a list of strings. Quote numbers and other values as JSON strings."
            )
        for target in [targets] if isinstance(targets, str) else targets:
            examples.append(Example(source, target))
    return require_examples(examples, path, "no non-blank lines")


def _field(record: dict, key: str, argument: str, path: Path, number: int):
    if key not in record:
        present = ", ".join(repr(name) for name in record) or "none"
        raise PrefixTuneError(
            f"{path} line {number} has no key {key!r}; its keys are {present}. "
            f"Pass {argument}=<one of those>."
        )
    return record[key]
