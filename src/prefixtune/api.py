"""The entry points `add_prefix` and `load_prefix`: the engine's prefixes plus a classifier's head.

The public layer above the engine: a classifier's task head (`train/heads.py`) trains with the
prefixes and is saved and restored with them, which the engine, knowing no task heads, leaves to
this layer (`engine/wrap.py` makes the `PrefixModel`).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from prefixtune.engine.config import PrefixConfig
from prefixtune.engine.model import DEFAULT_NAME, PrefixModel
from prefixtune.engine.storage import read_prefix
from prefixtune.engine.wrap import wrap
from prefixtune.train import heads


def add_prefix(
    model: nn.Module | PrefixModel,
    config: PrefixConfig | None = None,
    *,
    tokenizer=None,
    name: str = DEFAULT_NAME,
    train_head: bool = True,
) -> PrefixModel:
    """Freeze `model` and give every attention layer a trainable prefix called `name`.

    Args:
        model: a Hugging Face model (loaded with `attn_implementation` "sdpa" or "eager"), or a
            `PrefixModel`, to which the prefix is added.
        config: how the prefix is shaped and initialised (default `PrefixConfig()`).
        tokenizer: needed for `init="text"`.
        name: the prefix's name; rows of a batch pick prefixes by name (`prefix=`).
        train_head: when `model` is a classifier (`...ForSequenceClassification`,
            `...ForTokenClassification`), train its task head with the prefixes: it becomes trainable,
            its parameters join `prefix_parameters()`, and it is saved with every prefix (P-Tuning v2).
            False keeps it frozen. Only read when `model` is a base model: a `PrefixModel`'s head stays
            as it is.
    """
    config = config or PrefixConfig()
    fresh = not isinstance(model, PrefixModel)
    prefix_model = wrap(model) if fresh else model
    prefix_model.add(name, config, tokenizer)
    if fresh:
        heads.default_head(prefix_model, train_head)
    return prefix_model


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
        if (Path(path) / heads.HEAD_FILE).exists():  # a classifier: its head was trained with the prefix
            heads.load_head(prefix_model, Path(path), trainable=trainable)
        else:
            heads.warn_if_untrained(prefix_model, f"{path} holds no head to restore")
    except Exception:
        if fresh:  # leave the user's model exactly as it was handed in
            prefix_model.unload()
        raise
    return prefix_model
