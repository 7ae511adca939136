"""A Hugging Face model becomes an empty `PrefixModel` (`wrap`), to which prefixes are added
(`PrefixModel.add`; `prefixtune.add_prefix` does both, and trains a classifier's head)."""

from __future__ import annotations

import torch
from torch import nn

from prefixtune.engine.errors import PrefixTuneError
from prefixtune.engine.inject import attach
from prefixtune.engine.model import PrefixModel


def wrap(model: nn.Module) -> PrefixModel:
    """Freeze `model`, switch it to the prefixtune attention and return an empty `PrefixModel`."""
    if not hasattr(model, "config") or not hasattr(model, "get_input_embeddings"):
        raise PrefixTuneError(f"expected a Hugging Face transformers model, got {type(model).__name__}")
    model.requires_grad_(False)
    injector = attach(model, probe_inputs(model))
    return PrefixModel(model, injector)


def probe_inputs(model: nn.Module) -> dict[str, torch.Tensor]:
    """A tiny valid input: a few token ids that exist in any vocabulary."""
    vocab = model.get_input_embeddings().num_embeddings
    device = next(model.parameters()).device
    ids = torch.arange(1, 4, device=device).clamp(max=vocab - 1)[None]  # (1, 3)
    inputs = {"input_ids": ids}
    if getattr(model.config, "is_encoder_decoder", False):
        # shorter than the encoder's input: `inject.slot_kind` tells the attention kinds apart by length
        inputs["decoder_input_ids"] = ids[:, :2]
    return inputs
