"""How a prefix is parametrised: `flat` (the prefix is the parameter) or `mlp` (P = MLP(P')).

Both produce the same thing, a matrix of shape (P, W) where W is the summed key+value width of
every attention slot (see `layout.SlotLayout`); only what is trained differs.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import torch
from torch import nn


class FlatPrefix(nn.Module):
    """The prefix itself is the trainable parameter."""

    def __init__(self, length: int, width: int) -> None:
        super().__init__()
        self.prefix = nn.Parameter(torch.zeros(length, width))  # (P, W)

    def forward(self) -> torch.Tensor:
        return self.prefix


class MlpPrefix(nn.Module):
    """P = MLP(P'): embedding (P, d) -> Linear(d, hidden) -> tanh -> Linear(hidden, W), as in Li & Liang.

    The paper found this stabilises training; after training `fold()` runs it once and drops it.
    """

    def __init__(self, length: int, width: int, embed_dim: int, hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(length, embed_dim))  # P': (P, d)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.Tanh(), nn.Linear(hidden, width))

    def forward(self) -> torch.Tensor:
        return self.mlp(self.embedding)  # (P, W)

    @torch.no_grad()
    def fit_output(self, target: torch.Tensor) -> torch.Tensor:
        """Set the output layer so that the MLP's output equals `target` (P, W); returns the residual.

        The hidden features tanh(W1 P' + b1) of P <= hidden+1 random rows are linearly independent,
        so the minimum-norm least-squares solution for (W2, b2) reproduces `target` exactly up to
        rounding: the MLP starts at the text's keys/values yet keeps its random first layer, so
        training moves through the reparametrisation as it would from a random start.
        """
        hidden = torch.tanh(self.mlp[0](self.embedding)).double()  # (P, hidden)
        features = torch.cat([hidden, hidden.new_ones(hidden.shape[0], 1)], dim=1)  # (P, hidden+1)
        solution = torch.linalg.pinv(features) @ target.double()  # (hidden+1, W)
        out = self.mlp[2]
        out.weight.copy_(solution[:-1].T.to(out.weight.dtype))
        out.bias.copy_(solution[-1].to(out.bias.dtype))
        return (self() - target).abs().max()


class PerKindPrefix(nn.Module):
    """One reparametrisation per slot kind, interleaved back into the slot order of the (P, W) matrix.

    Li & Liang's BART setup gives the encoder, the decoder's self-attention and its cross-attention
    each their own MLP (and their own P'): one shared MLP would tie three unrelated key spaces.
    """

    def __init__(self, parts: dict[str, nn.Module], columns: dict[str, torch.Tensor]) -> None:
        """Args: parts: kind -> reparametrisation of (P, W_kind); columns: kind -> its (W_kind,)
        column indices in the slot-ordered matrix."""
        super().__init__()
        self.parts = nn.ModuleDict(parts)
        grouped = torch.cat([columns[kind] for kind in parts])  # (W,) slot column of each grouped column
        # not saved: it follows from the layout, and the state dict holds only trained weights
        self.register_buffer("order", torch.argsort(grouped), persistent=False)  # (W,)

    def forward(self) -> torch.Tensor:
        grouped = torch.cat([part() for part in self.parts.values()], dim=1)  # (P, W), kind after kind
        return grouped.index_select(1, self.order)  # (P, W) in slot order


REPARAMS: Mapping[str, type[nn.Module]] = MappingProxyType({"flat": FlatPrefix, "mlp": MlpPrefix})
"""The reparametrisations by name (read-only: the engine keeps no module-level state that changes)."""
