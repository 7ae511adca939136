"""One trainable prefix: its config, its reparametrisation and how it becomes per-slot keys/values."""

from __future__ import annotations

import torch
from torch import nn

from prefixtune.config import PrefixConfig
from prefixtune.layout import SlotLayout
from prefixtune.reparam import FlatPrefix, MlpPrefix, PerKindPrefix


class Prefix(nn.Module):
    """A prefix of `length` vectors for every slot of `layout`, parametrised flat or through an MLP."""

    def __init__(self, config: PrefixConfig, layout: SlotLayout, length: int, embed_dim: int) -> None:
        super().__init__()
        self.config = config.replace(length=length)
        self.layout = layout
        self.reparam = _build_reparam(config, layout, length, embed_dim)

    @property
    def length(self) -> int:
        return self.config.length  # type: ignore[return-value]

    def materialise(self) -> torch.Tensor:
        """The prefix as one (P, W) matrix. The MLP runs here once, whatever the batch size."""
        return self.reparam()

    def slot_tensors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per slot (key, value), each (H_kv, P, D)."""
        return self.layout.split(self.materialise())

    @torch.no_grad()
    def fold(self) -> None:
        """Run the reparametrisation once and keep only its output as a flat prefix."""
        if isinstance(self.reparam, FlatPrefix):
            return
        value = self.materialise()  # (P, W)
        flat = FlatPrefix(self.length, self.layout.width).to(value.device)
        flat.prefix.copy_(value)
        flat.requires_grad_(False)
        self.reparam = flat
        self.config = self.config.replace(reparam="flat")

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


def _build_reparam(config: PrefixConfig, layout: SlotLayout, length: int, embed_dim: int) -> nn.Module:
    """Flat, one MLP, or (an encoder-decoder's slots) one MLP per slot kind: encoder, decoder, cross."""
    if config.reparam == "flat":
        return FlatPrefix(length, layout.width)
    if len(layout.kinds) == 1:
        return MlpPrefix(length, layout.width, embed_dim, config.mlp_hidden)
    columns = {kind: layout.columns(kind) for kind in layout.kinds}
    parts = {kind: MlpPrefix(length, len(c), embed_dim, config.mlp_hidden) for kind, c in columns.items()}
    return PerKindPrefix(parts, columns)
