"""The configuration of one prefix: a frozen dataclass whose attribute docstrings are its documentation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from prefixtune.errors import PrefixTuneError

INITS = ("random", "zero", "text")
POSITIONS = ("keep", "shifted")
KINDS = ("prefix",)
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

    positions: str = "keep"
    """`keep`: real tokens keep positions 0..n-1, exactly as without a prefix (prefixtune's default).
    `shifted`: real tokens sit at P..P+n-1, as if the prefix were P past tokens (as in PEFT and the
    paper's code)."""

    kind: str = "prefix"
    """Which variant: `prefix` puts the prefix in every attention layer (the paper's method)."""

    seed: int | None = None
    """Seed for the random parts of the initialisation; None uses torch's current generator."""

    def __post_init__(self) -> None:
        from prefixtune.reparam import REPARAMS  # late import: reparam imports nothing from here at load

        _check_choice("reparam", self.reparam, tuple(REPARAMS))
        _check_choice("init", self.init, INITS)
        _check_choice("positions", self.positions, POSITIONS)
        _check_choice("kind", self.kind, KINDS)
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


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise PrefixTuneError(f"{field}={value!r} is not one of {list(choices)}")
