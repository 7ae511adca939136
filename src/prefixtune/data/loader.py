"""`read_dataset`: one entry point that picks the reader from a format name or the file's extension."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from prefixtune.data.records import Example
from prefixtune.data.tabular import E2E_SOURCE_COLUMN, E2E_TARGET_COLUMN, read_csv, read_e2e_csv, read_jsonl
from prefixtune.data.triples import (
    dart_examples,
    load_json,
    read_dart_json,
    read_webnlg_json,
    webnlg_examples,
)
from prefixtune.errors import PrefixTuneError

FORMATS = ("e2e", "webnlg", "dart", "csv", "tsv", "jsonl")
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
}


def read_dataset(
    path: str | Path,
    fmt: str | None = None,
    source_column: str = "source",
    target_column: str = "target",
    column_options: tuple[str, str] = ("source_column", "target_column"),
) -> list[Example]:
    """Read a data set into Examples.

    `fmt` is one of "e2e", "webnlg", "dart", "csv", "tsv", "jsonl"; when None it is chosen from the
    extension: `.csv` (E2E when the header is `mr,ref` and has no `source_column`), `.tsv`, `.jsonl`,
    and `.json` (WebNLG when it has an "entries" object, DART when it is a list).
    `source_column` / `target_column` apply to csv, tsv and jsonl; `column_options` is how the caller's
    user sets them, named when a column is missing (a command line: its flags).
    """
    path = Path(path)
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in FORMATS:
            raise PrefixTuneError(f"unknown data format {fmt!r}. Use one of: {', '.join(FORMATS)}.")
    else:
        fmt = _EXTENSIONS.get(path.suffix.lower())
        if fmt is None:
            raise PrefixTuneError(
                f"cannot tell the format of {path} from its extension {path.suffix!r}. Pass fmt= one of: "
                f"{', '.join(FORMATS)}."
            )
        if fmt == "json":
            return _read_any_json(path)
        if fmt == "csv" and _looks_like_e2e(path, source_column):
            fmt = "e2e"
    if fmt == "e2e":
        return read_e2e_csv(path)
    if fmt == "webnlg":
        return read_webnlg_json(path)
    if fmt == "dart":
        return read_dart_json(path)
    if fmt == "jsonl":
        return read_jsonl(path, source_column, target_column, column_options)
    delimiter = "\t" if fmt == "tsv" else ","
    return read_csv(path, source_column, target_column, delimiter, column_options)


def _looks_like_e2e(path: Path, source_column: str) -> bool:
    if not path.is_file():
        return False  # read_csv reports the missing file
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        first_line = handle.readline().removeprefix("\ufeff")
    header = next(csv.reader(io.StringIO(first_line)), [])
    names = {name.strip() for name in header}
    return source_column not in names and {E2E_SOURCE_COLUMN, E2E_TARGET_COLUMN} <= names


def _read_any_json(path: Path) -> list[Example]:
    data = load_json(path)
    if isinstance(data, dict) and "entries" in data:
        return webnlg_examples(data, path)
    if isinstance(data, list):
        return dart_examples(data, path)
    raise PrefixTuneError(
        f"{path} is neither WebNLG JSON (an object with 'entries') nor DART JSON (a list of records). "
        "Pass fmt='webnlg' or fmt='dart' to see what is missing, or use JSON Lines (fmt='jsonl')."
    )
