"""prefixtune: prefix-tuning (Li & Liang 2021) and P-Tuning v2 for any Hugging Face transformer.

The public API:
- `PrefixConfig`: how a prefix is shaped, parametrised and initialised.
- `add_prefix(model, config)`: freeze a model and give every attention layer a trainable prefix.
- `load_prefix(model, path)`: put a saved prefix on a model.
- `load_base(name_or_path)`: a base model and tokenizer from a folder, a `.gguf` file or an alias.
- `PrefixModel`: what `add_prefix` returns (`forward`, `generate`, `fold`, `save`).

Names are imported on first use, so `prefixtune.data` and `prefixtune.metrics` load without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefixtune.api import add_prefix, load_prefix
    from prefixtune.engine.config import PrefixConfig
    from prefixtune.engine.model import PrefixModel
    from prefixtune.errors import PrefixTuneError
    from prefixtune.loading import load_base

_EXPORTS = {
    "PrefixConfig": "prefixtune.engine.config",
    "PrefixModel": "prefixtune.engine.model",
    "PrefixTuneError": "prefixtune.engine.errors",
    "add_prefix": "prefixtune.api",
    "load_base": "prefixtune.loading",
    "load_prefix": "prefixtune.api",
}
__all__ = ["PrefixConfig", "PrefixModel", "PrefixTuneError", "add_prefix", "load_base", "load_prefix"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'prefixtune' has no attribute {name!r}")
