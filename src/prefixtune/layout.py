"""Which attention layers get a prefix, and how one flat (P, W) prefix matrix splits into them.

Shapes come from the attention modules themselves (read during a probe forward, see `inject.probe`),
never from config keys: a slot's key width is whatever the module's keys actually are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class SlotSpec:
    """One attention module that sees a prefix."""

    name: str
    """The module's qualified name inside the base model, e.g. `model.layers.3.self_attn`."""
    kv_heads: int
    """Key/value heads (fewer than query heads under grouped-query attention)."""
    head_dim: int
    """Size of one head's key/value vector."""
    heads: int
    """Query heads (for information; the prefix is stored at kv_heads)."""

    @property
    def width(self) -> int:
        """Columns this slot takes in the flat prefix matrix: keys then values."""
        return 2 * self.kv_heads * self.head_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SlotLayout:
    """Splits a (P, W) prefix matrix into per-slot keys and values, as views (no copies).

    Columns are laid out slot after slot, keys before values, each flattened as (kv_heads, head_dim):
    the same order as the paper's (P, n_layer * 2 * d) matrix when every layer has a slot.
    """

    def __init__(self, slots: list[SlotSpec]) -> None:
        self.slots = list(slots)
        self.width = sum(s.width for s in self.slots)

    def split(self, flat: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Args: flat (P, W). Returns per slot (key, value), each (H_kv, P, D)."""
        length = flat.shape[0]
        out = []
        for chunk, slot in zip(flat.split([s.width for s in self.slots], dim=1), self.slots, strict=True):
            kv = chunk.view(length, 2, slot.kv_heads, slot.head_dim)  # (P, 2, H_kv, D)
            out.append((kv[:, 0].transpose(0, 1), kv[:, 1].transpose(0, 1)))  # (H_kv, P, D) each
        return out

    def join(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Inverse of `split`: per slot (key, value) of (H_kv, P, D) -> (P, W)."""
        cols = []
        for key, value in pairs:
            kv = torch.stack([key.transpose(0, 1), value.transpose(0, 1)], dim=1)  # (P, 2, H_kv, D)
            cols.append(kv.reshape(kv.shape[0], -1))
        return torch.cat(cols, dim=1)
