"""`load_prefix`: a saved prefix folder onto a model, with what other code saved beside it.

The public layer above the engine: it restores a classifier's head (`train/heads.py`) when the
folder holds one, which the engine, knowing no task heads, cannot. `add_prefix` is the engine's
(`engine/wrap.py`).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from prefixtune.engine.model import DEFAULT_NAME, PrefixModel
from prefixtune.engine.storage import read_prefix
from prefixtune.engine.wrap import wrap
from prefixtune.train.heads import HEAD_FILE, load_head


def load_prefix(
    model: nn.Module | PrefixModel,
    path: str | Path,
    *,
    name: str | None = None,
    trainable: bool = False,
    check_weights: bool = True,
) -> PrefixModel:
    """Load a saved prefix folder onto `model` (a base model or a `PrefixModel`).

    Args:
        name: the name it gets in the bank (default: the folder's name, or "default" on a base model).
        trainable: restore the trainable state (e.g. the MLP) if the folder holds it, to continue training.
            A classifier's head (`head.safetensors`) is always restored, trainable only if this is set.
        check_weights: compare the base model's fingerprint with the one saved (layer count, heads,
            head size, sampled weights) and refuse a mismatch.
    """
    fresh = not isinstance(model, PrefixModel)
    prefix_model = wrap(model) if fresh else model
    if name is None:
        name = DEFAULT_NAME if not prefix_model.prefixes else Path(path).name
    try:
        prefix = read_prefix(prefix_model, Path(path), trainable=trainable, check_weights=check_weights)
        prefix_model.insert(name, prefix.to(prefix_model.device))
        if (Path(path) / HEAD_FILE).exists():  # a classifier: its head was trained with the prefix
            load_head(prefix_model, Path(path), trainable=trainable)
    except Exception:
        if fresh:  # leave the user's model exactly as it was handed in
            prefix_model.unload()
        raise
    return prefix_model
