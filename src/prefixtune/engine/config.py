"""The configuration of one prefix: a frozen dataclass whose attribute docstrings are its documentation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from prefixtune.engine.errors import PrefixTuneError

INITS = ("random", "zero", "text")
POSITIONS = ("keep", "shifted")
KINDS = ("prefix", "embedding", "infix")
DEFAULT_LENGTH = 10


@dataclass(frozen=True)
class PrefixConfig:
    """How a prefix is shaped, parametrised and initialised."""

    length: int | None = None
    """Prefix length P (key/value vectors per attention layer). None: the token count of `init_text`
    when `init="text"`, else 10 (Li & Liang use 10 for table-to-text)."""

    reparam: str = "mlp"
    """`flat`: the prefix itself is the parameter. `mlp`: P = MLP(P'), two layers with tanh, as in
    Li & Liang (2021); `fold()` runs it once and keeps only the flat result."""

    mlp_hidden: int = 512
    """Hidden width of the `mlp` reparametrisation (512 in the paper)."""

    init: str = "random"
    """`random`, `zero`, or `text`: start from the keys/values the frozen model computes for `init_text`."""

    init_text: str | None = None
    """Real words to initialise from when `init="text"`, e.g. "table-to-text:"."""

    positions: str | None = None
    """`keep`: real tokens keep positions 0..n-1, exactly as without a prefix (prefixtune's default).
    `shifted`: real tokens sit at P..P+n-1, as if the prefix were P past tokens (as in PEFT and the
    paper's code). None: `shifted` for `kind="embedding"` (its prompt occupies positions 0..P-1),
    else `keep`."""

    kind: str = "prefix"
    """Which variant: `prefix` (trainable keys/values in every attention layer, the paper's method) or
    `embedding` (prompt tuning, Lester et al. 2021, the paper's embedding-only ablation: P trainable
    input embeddings before the real tokens of a decoder-only model; see `prefixtune.engine.prompt`) or
    `infix` (the paper's `[x; INFIX; y]` ablation for decoders: keys/values like a prefix, seen only
    by the queries from `infix_at` on, the source's last token and the target; see `PrefixModel.forward`)."""

    layers: tuple[int, ...] | None = None
    """The attention layers that get the prefix (slot indices in call order, which is the layer index
    for decoder-only models and encoders; -1 is the last); None: every layer. The others run bare,
    and the prefix holds no parameters for them (P-Tuning v2's depth ablation)."""

    seed: int | None = None
    """Seed for the random parts of the initialisation; None uses torch's current generator."""

    def __post_init__(self) -> None:
        from prefixtune.engine.reparam import REPARAMS  # late: reparam imports nothing from here at load

        _check_choice("reparam", self.reparam, tuple(REPARAMS))
        _check_choice("init", self.init, INITS)
        _check_choice("kind", self.kind, KINDS)
        if self.positions is None:  # frozen: the resolved value is set once, here
            object.__setattr__(self, "positions", default_positions(self.kind))
        _check_choice("positions", self.positions, POSITIONS)
        if self.kind == "embedding" and self.positions != "shifted":
            raise PrefixTuneError(
                'kind="embedding" puts its prompt at positions 0..P-1, so the real tokens must follow at '
                'P..P+n-1: use positions="shifted" (or leave positions unset)'
            )
        if self.kind == "infix" and self.positions != "keep":
            raise PrefixTuneError(
                'kind="infix" takes no positions (the target continues right after the source): '
                'use positions="keep" (or leave positions unset)'
            )
        if self.layers is not None:
            _check_layers(self)
        if self.length is not None and self.length < 1:
            raise PrefixTuneError(f"prefix length must be at least 1, got {self.length}")
        if self.mlp_hidden < 1:
            raise PrefixTuneError(f"mlp_hidden must be at least 1, got {self.mlp_hidden}")
        if self.init == "text" and not (self.init_text and self.init_text.strip()):
            raise PrefixTuneError('init="text" needs init_text, e.g. init_text="table-to-text:"')

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrefixConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PrefixTuneError(f"unknown prefix config fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> PrefixConfig:
        return dataclasses.replace(self, **changes)


def default_positions(kind: str) -> str:
    """The positions of a prefix of this kind that leaves `positions` unset (None)."""
    return "shifted" if kind == "embedding" else "keep"


def parse_layers(text: str) -> tuple[int, ...]:
    """`"0,1,2"` or `"-2,-1"` (command line, sweep grids) -> a tuple of layer indices."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise PrefixTuneError(
            f"layers {text!r}: give comma-separated layer indices, e.g. 0,1,2 or =-2,-1"
        ) from None


def _check_layers(config: PrefixConfig) -> None:
    """`layers` as a tuple of distinct ints (JSON and the command line give lists or one int).

    Negative indices stay as given here: only the model knows how many layers it has, so they are
    normalised when the prefix is built (`prefix.select_slots`)."""
    layers = config.layers
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = (layers,)
    if not isinstance(layers, list | tuple) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in layers
    ):
        raise PrefixTuneError(
            f"layers must be a list of layer indices such as [0, 1] or [-2, -1], got {layers!r}"
        )
    if not layers:
        raise PrefixTuneError("layers is empty: name at least one layer, or None for every layer")
    if len(set(layers)) != len(layers):
        raise PrefixTuneError(f"layers {list(layers)} names a layer twice")
    object.__setattr__(config, "layers", tuple(layers))


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise PrefixTuneError(f"{field}={value!r} is not one of {list(choices)}")
