"""Prompt tuning (`kind="embedding"`) as one more reparametrisation of the prefix.

Lester et al. (2021), and Li & Liang's "embedding-only" ablation, train P input embeddings placed
before the real tokens. In a causal decoder those P prompt tokens attend only to themselves, so the
keys/values they leave in every layer do not depend on the input: running the frozen model once on
the prompt alone (positions 0..P-1) gives a (P, W) prefix that is exactly what the real tokens would
see. So a prompt is a prefix computed through the base model instead of an MLP: it then batches,
mixes with other prefixes, folds and saves like any prefix, and the real tokens sit at P..P+n-1
(`positions="shifted"`), as they would after P prompt tokens.

Not for encoders or encoder-decoders: there the prompt would see the input (bidirectional
attention), so its keys/values depend on x and no fixed prefix reproduces it. Nor exactly for
sliding-window layers (Gemma, Mistral): prefixtune keeps a prefix visible to every query, where
real prompt tokens would leave the window of a long input.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator

import torch
from torch import nn

from prefixtune.engine.errors import PrefixTuneError
from prefixtune.engine.inject import Injector
from prefixtune.engine.layout import SlotLayout


def check_supported(base: nn.Module, injector: Injector) -> None:
    """Refuse a model whose prompt tokens would see the input (see the module docstring)."""
    if getattr(base.config, "is_encoder_decoder", False) or injector.bidirectional:
        raise PrefixTuneError(
            'kind="embedding" (prompt tuning as a fixed prefix) needs a causal decoder-only model: in '
            f"{type(base).__name__} the prompt would attend to the input, so its keys/values change with "
            'every input; use kind="prefix"'
        )


def encode_prompt(
    base: nn.Module, injector: Injector, slots: tuple[int, ...], layout: SlotLayout, embeds: torch.Tensor
) -> torch.Tensor:
    """Run the frozen `base` on the prompt alone and return the keys/values its slots compute.

    Args:
        slots: the prefix's slot indices in the model's layout; `layout` is the layout of those slots.
        embeds: (P, d) prompt embeddings (the input of the model's embedding scaling, if any).
    Returns: (P, W) with W = `layout.width`, differentiable with respect to `embeds`.
    """
    weight = base.get_input_embeddings().weight
    inputs = embeds.to(weight.dtype)[None]  # (1, P, d)
    positions = torch.arange(inputs.shape[1], device=inputs.device)[None]  # (1, P): 0..P-1
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}
    saved = injector.current, injector.recording, injector.record_graph
    injector.current, injector.recording, injector.record_graph = None, {}, True
    try:
        with _no_checkpointing(base):
            base(inputs_embeds=inputs, position_ids=positions, use_cache=False, **extra)
        recorded = injector.recording
    finally:
        injector.current, injector.recording, injector.record_graph = saved
    pairs = [(recorded[i][0][0].float(), recorded[i][1][0].float()) for i in slots]  # (H_kv, P, D) each
    return layout.join(pairs)


@contextlib.contextmanager
def _no_checkpointing(base: nn.Module) -> Iterator[None]:
    """Gradient checkpointing off for the prompt's run.

    Checkpointing recomputes a layer during backward with whatever prefix batch is current by then,
    which is the real batch's, not this run's (which has none): the recomputation would differ. The
    prompt is a few tokens, so there is little memory to save anyway. Transformers' layers read the
    `gradient_checkpointing` flag at call time, so it is switched off and back on around the run.
    """
    layers = [m for m in base.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for layer in layers:
        layer.gradient_checkpointing = False
    try:
        yield
    finally:
        for layer in layers:
            layer.gradient_checkpointing = True


def initial_prompt(
    config_init: str, length: int, base: nn.Module, token_ids: list[int] | None, generator
) -> torch.Tensor | None:
    """The (P, d) embeddings a prompt starts from: the words' own (`text`, so that the prompt equals
    them exactly), those of random vocabulary tokens (`random`, Lester et al.'s sampled-vocabulary
    start, in the embeddings' own scale), or None (`zero`)."""
    table = base.get_input_embeddings().weight.detach()
    if config_init == "text":
        ids = torch.tensor((token_ids * (length // len(token_ids) + 1))[:length])  # type: ignore[operator]
    elif config_init == "random":
        ids = torch.randint(0, table.shape[0], (length,), generator=generator)
    else:
        return None
    return table[ids.to(table.device)].float().cpu()  # (P, d)
