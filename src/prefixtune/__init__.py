"""prefixtune: prefix-tuning (Li & Liang 2021) and P-Tuning v2 for any Hugging Face transformer.

The public API:
- `PrefixConfig`: how a prefix is shaped, parametrised and initialised.
- `add_prefix(model, config)`: freeze a model and give every attention layer a trainable prefix.
- `load_prefix(model, path)`: put a saved prefix on a model.
- `load_base(name_or_path)`: a base model and tokenizer from a folder, a `.gguf` file or an alias.
- `PrefixModel`: what `add_prefix` returns (`forward`, `generate`, `fold`, `save`).
"""

from prefixtune.api import add_prefix, load_prefix
from prefixtune.config import PrefixConfig
from prefixtune.errors import PrefixTuneError
from prefixtune.model import PrefixModel

__all__ = ["PrefixConfig", "PrefixModel", "PrefixTuneError", "add_prefix", "load_base", "load_prefix"]
__version__ = "0.1.0"


def load_base(name_or_path, **kwargs):
    """A (model, tokenizer) pair from a Hugging Face folder, a `.gguf` file or an alias.

    See `prefixtune.loading.load_base` for the arguments.
    """
    from prefixtune.loading import load_base as _load_base

    return _load_base(name_or_path, **kwargs)
