"""Reading a data file as text, with errors that say what is wrong and how to fix it."""

from __future__ import annotations

from pathlib import Path

from prefixtune.errors import PrefixTuneError


def read_text(path: str | Path) -> str:
    """The whole file decoded as UTF-8 (a leading byte-order mark is dropped)."""
    path = Path(path)
    if not path.exists():
        raise PrefixTuneError(
            f"data file not found: {path}. Check the path (relative paths start at {Path.cwd()})."
        )
    if not path.is_file():
        raise PrefixTuneError(f"{path} is a directory, not a data file. Pass the path of the file itself.")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        bad = raw[err.start : err.end].hex(" ")
        raise PrefixTuneError(
            f"{path} is not valid UTF-8: byte(s) {bad} at byte offset {err.start} "
            f"(line {line}, byte {column} of that line). Re-save the file as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name} > fixed.csv` if it is Latin-1."
        ) from None
    return text.removeprefix("\ufeff")


def require_examples(examples: list, path: str | Path, what: str) -> list:
    """Raise when a reader found nothing: an empty data set is always a mistake upstream."""
    if not examples:
        raise PrefixTuneError(
            f"{path} holds no examples ({what}). Check that it is the right file and not empty."
        )
    return examples
