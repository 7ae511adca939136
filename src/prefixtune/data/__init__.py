"""Data readers: every reader returns `list[Example]` (source text, one target text).

Readers are tokenizer-free; training code tokenizes the Examples itself.

- `read_dataset(path, fmt=None, source_column="source", target_column="target")`: picks the reader.
- `read_e2e_csv`, `read_webnlg_json`, `read_dart_json`, `read_csv` (CSV or TSV), `read_jsonl`.
- `group_references(examples)`: unique sources with all their references, for multi-reference scores.
- `select_categories(examples, path, keep=..., drop=...)`: keep or hold out WebNLG categories.
- `bundled_e2e(split)`: path of the small E2E sample shipped with the package ("train" or "dev").
"""

from prefixtune.data.bundled import bundled_e2e
from prefixtune.data.categories import select_categories
from prefixtune.data.loader import FORMATS, read_dataset
from prefixtune.data.records import Example, group_references
from prefixtune.data.tabular import read_csv, read_e2e_csv, read_jsonl
from prefixtune.data.triples import linearise_triples, read_dart_json, read_webnlg_json

__all__ = [
    "FORMATS",
    "Example",
    "bundled_e2e",
    "group_references",
    "linearise_triples",
    "read_csv",
    "read_dart_json",
    "read_dataset",
    "read_e2e_csv",
    "read_jsonl",
    "read_webnlg_json",
    "select_categories",
]
