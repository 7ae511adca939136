"""`to_transformers`: a prefix as a file of KV-cache tensors that plain transformers generates from.

The file is safetensors with `{i}.key` and `{i}.value` per decoder layer, each (1, H_kv, P, D) fp32,
already placed as past tokens at positions 0..P-1 (`cache.cache_pairs`). A `DynamicCache` built from
it, handed to `generate` with an attention mask over P + prompt columns, reproduces
`PrefixModel.generate`; the README shows the ten lines, none of them importing prefixtune.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import transformers
from safetensors.torch import save_file

from prefixtune.engine.compat import CACHE_KWARG
from prefixtune.engine.model import PrefixModel
from prefixtune.export.cache import cache_pairs

FORMAT = "prefixtune-kv-cache"


def to_transformers(model: PrefixModel, output: str | os.PathLike, name: str | None = None) -> Path:
    """Write prefix `name` (default: the default prefix) of `model` as a KV-cache file at `output`.

    Raises: PrefixTuneError where a cache cannot reproduce the prefix (see `cache.check_exportable`).
    """
    name = name or model.default_prefix
    pairs = cache_pairs(model, name)
    prefix = model.prefixes[name]
    tensors = {}
    for i, (key, value) in enumerate(pairs):
        tensors[f"{i}.key"] = key[None].contiguous()  # (1, H_kv, P, D)
        tensors[f"{i}.value"] = value[None].contiguous()
    metadata = {
        "format": FORMAT,
        "length": str(prefix.length),
        "positions": str(prefix.config.positions),
        "layers": str(len(pairs)),
        # what generate must be given the cache by, on the transformers this was written with
        "cache_keyword": CACHE_KWARG,
        "transformers": transformers.__version__,
        "base": json.dumps(getattr(model.base.config, "_name_or_path", None) or None),
    }
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path
