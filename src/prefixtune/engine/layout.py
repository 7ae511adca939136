"""Which attention layers get a prefix, and how one flat (P, W) prefix matrix splits into them.

Shapes come from the attention modules themselves (read during a probe forward, see `inject.probe`),
never from config keys: a slot's key width is whatever the module's keys actually are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from prefixtune.engine.errors import PrefixTuneError


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
    kind: str = "self"
    """What the module attends over, read off its tensors in the probe (see `inject.slot_kind`):
    `self` (the model's input: every layer of a decoder-only model or of an encoder, and an
    encoder-decoder's encoder), `decoder` (an encoder-decoder's decoder self-attention) or `cross`
    (decoder queries over the encoder's output). Each kind gets its own reparametrisation."""

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

    def select(self, indices: tuple[int, ...]) -> SlotLayout:
        """The layout of only the slots at `indices` (a prefix on a subset of layers)."""
        return SlotLayout([self.slots[i] for i in indices])

    @property
    def kinds(self) -> list[str]:
        """The slot kinds present, in order of first appearance."""
        return list(dict.fromkeys(s.kind for s in self.slots))

    def columns(self, kind: str) -> torch.Tensor:
        """(W_kind,) the flat matrix's column indices that belong to slots of `kind`, in order."""
        starts = torch.tensor([0] + [s.width for s in self.slots]).cumsum(0)
        spans = [torch.arange(starts[i], starts[i + 1]) for i, s in enumerate(self.slots) if s.kind == kind]
        return torch.cat(spans)

    def join(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Inverse of `split`: per slot (key, value) of (H_kv, P, D) -> (P, W)."""
        cols = []
        for key, value in pairs:
            kv = torch.stack([key.transpose(0, 1), value.transpose(0, 1)], dim=1)  # (P, 2, H_kv, D)
            cols.append(kv.reshape(kv.shape[0], -1))
        return torch.cat(cols, dim=1)


def select_slots(layers: tuple[int, ...] | None, count: int) -> tuple[int, ...]:
    """`PrefixConfig.layers` as sorted non-negative slot indices of a model with `count` slots.

    Negative indices count from the end (-1: the last slot), as in Python.
    """
    if layers is None:
        return tuple(range(count))
    bad = [i for i in layers if not -count <= i < count]
    if bad:
        raise PrefixTuneError(
            f"layers {list(layers)}: {bad} out of range; this model has {count} attention layers, "
            f"so use indices 0..{count - 1} (or -{count}..-1 from the end)"
        )
    normalised = sorted(i % count for i in layers)
    if len(set(normalised)) != len(normalised):
        raise PrefixTuneError(f"layers {list(layers)} names the same layer twice (counting from the end)")
    return tuple(normalised)
