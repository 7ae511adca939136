"""One trainable prefix: its config, its reparametrisation and how it becomes per-slot keys/values."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from prefixtune.engine.config import PrefixConfig
from prefixtune.engine.layout import SlotLayout, select_slots
from prefixtune.engine.reparam import FlatPrefix, MlpPrefix, PerKindPrefix

PromptEncoder = Callable[[torch.Tensor], torch.Tensor]
"""(P, d) prompt embeddings -> (P, W) keys/values of the prefix's slots, through the frozen base
(`prefixtune.engine.prompt.encode_prompt`, bound by `PrefixModel.insert`)."""


class Prefix(nn.Module):
    """A prefix of `length` vectors for the slots of `layout` that `config.layers` selects (all by
    default), parametrised flat or through an MLP.

    With `kind="embedding"` the reparametrisation produces (P, d) input embeddings instead, which
    `encoder` turns into keys/values by running the frozen base on them (prompt tuning).
    """

    def __init__(self, config: PrefixConfig, layout: SlotLayout, length: int, embed_dim: int) -> None:
        """Args: layout: the whole model's slots; the prefix keeps those `config.layers` selects."""
        super().__init__()
        self.slots = select_slots(config.layers, len(layout.slots))
        """Indices of this prefix's slots in the model's layout (sorted)."""
        layers = None if config.layers is None else self.slots
        self.config = config.replace(length=length, layers=layers)
        self.layout = layout if layers is None else layout.select(self.slots)
        self.prompt = config.kind == "embedding"
        """True while the reparametrisation yields input embeddings (an unfolded embedding prompt)."""
        self.encoder: PromptEncoder | None = None
        self.reparam = _build_reparam(config, self.layout, length, embed_dim, self.prompt)

    @classmethod
    def from_keys_values(cls, config: PrefixConfig, layout: SlotLayout, flat: torch.Tensor) -> Prefix:
        """A flat prefix holding the given keys/values `flat` (P, W of its slots), e.g. read from disk.

        Whatever the kind, a stored prefix is the keys/values themselves: an embedding prompt was
        run through the base once when it was saved, like an MLP.
        """
        prefix = cls(config.replace(reparam="flat", kind="prefix"), layout, flat.shape[0], 0)
        prefix.config = prefix.config.replace(kind=config.kind)  # for information: how it was trained
        with torch.no_grad():
            prefix.reparam.prefix.copy_(flat)
        return prefix

    @property
    def length(self) -> int:
        return self.config.length  # type: ignore[return-value]

    def materialise(self) -> torch.Tensor:
        """The prefix as one (P, W) matrix. The MLP (and a prompt's run through the base) happens here
        once, whatever the batch size."""
        value = self.reparam()
        if not self.prompt:
            return value
        if self.encoder is None:
            raise RuntimeError("an embedding prompt needs its base model: insert it into a PrefixModel")
        return self.encoder(value)  # (P, d) -> (P, W)

    def slot_tensors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per slot (key, value), each (H_kv, P, D)."""
        return self.layout.split(self.materialise())

    @torch.no_grad()
    def fold(self) -> None:
        """Run the reparametrisation once and keep only its output as a flat prefix."""
        if isinstance(self.reparam, FlatPrefix) and not self.prompt:
            return
        value = self.materialise()  # (P, W)
        flat = FlatPrefix(self.length, self.layout.width).to(value.device)
        flat.prefix.copy_(value.to(flat.prefix.dtype))
        flat.requires_grad_(False)
        self.reparam = flat
        self.config = self.config.replace(reparam="flat")
        self.prompt, self.encoder = False, None  # now the keys/values themselves

    def set_initial(self, target: torch.Tensor | None, zero: bool) -> None:
        """Start from `target` (P, W) if given, from zeros if `zero`, else keep the random init."""
        with torch.no_grad():
            if isinstance(self.reparam, FlatPrefix):
                if target is not None:
                    self.reparam.prefix.copy_(target)
                elif not zero:
                    raise ValueError(
                        "a flat random prefix needs a target scale; see initialise.initial_target"
                    )
                return
            for mlp, columns in self._mlp_parts():
                if target is not None:
                    mlp.fit_output(target[:, columns])
                elif zero:
                    mlp.mlp[2].weight.zero_()
                    mlp.mlp[2].bias.zero_()

    def _mlp_parts(self) -> list[tuple[MlpPrefix, torch.Tensor | slice]]:
        """Each MLP and the columns of the (P, W) matrix it produces."""
        if isinstance(self.reparam, PerKindPrefix):
            return [(part, self.layout.columns(kind)) for kind, part in self.reparam.parts.items()]
        return [(self.reparam, slice(None))]


def _build_reparam(
    config: PrefixConfig, layout: SlotLayout, length: int, embed_dim: int, prompt: bool
) -> nn.Module:
    """Flat, one MLP, or (an encoder-decoder's slots) one MLP per slot kind: encoder, decoder, cross.

    A prompt's output is (P, d) input embeddings; with `mlp` that is P-Tuning (v1)'s idea of
    reparametrising prompt embeddings, with the paper's MLP (Lester et al. train them flat).
    """
    if prompt:
        if config.reparam == "flat":
            return FlatPrefix(length, embed_dim)
        return MlpPrefix(length, embed_dim, embed_dim, config.mlp_hidden)
    if config.reparam == "flat":
        return FlatPrefix(length, layout.width)
    if len(layout.kinds) == 1:
        return MlpPrefix(length, layout.width, embed_dim, config.mlp_hidden)
    columns = {kind: layout.columns(kind) for kind in layout.kinds}
    parts = {kind: MlpPrefix(length, len(c), embed_dim, config.mlp_hidden) for kind, c in columns.items()}
    return PerKindPrefix(parts, columns)
