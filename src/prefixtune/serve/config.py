"""The server's settings: a frozen dataclass whose attribute docstrings become `prefixtune serve --help`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from prefixtune.errors import PrefixTuneError
from prefixtune.serve.scheduler import POLICIES, SCHEDULINGS

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""A prefix's name must round-trip through a URL path (`DELETE /v1/prefixes/{name}`) and a command
line (`--prefix NAME=PATH`): no slash, space, `=` or `%`. No dot either: the bank is a ModuleDict."""


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a prefix, or None if it can."""
    if not NAME_PATTERN.fullmatch(name):
        return (
            f"the prefix name {name!r} is not allowed: use 1 to 64 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    if hasattr(nn.ModuleDict(), name):  # the bank would refuse it (e.g. "train", "keys") with a KeyError
        return f"the prefix name {name!r} is not allowed: the prefix bank has an attribute of that name"
    return None


@dataclass(frozen=True)
class ServeConfig:
    """How the OpenAI-compatible server listens and batches."""

    host: str = "127.0.0.1"
    """Address to listen on; the default takes connections from this machine only."""

    port: int = 8000
    """TCP port to listen on."""

    max_batch: int = 16
    """Rows (prompts times n) decoded together at most; also the largest n a request may ask for."""

    max_wait_ms: float = 10.0
    """How long a batch waits to fill: from its oldest request's arrival, or from when the last batch
    ended if that is later (so that clients answered by one batch can join the next)."""

    max_pending: int = 256
    """Requests held at once, waiting or running; beyond it a request is answered 429."""

    policy: str = "mixed"
    """`mixed`: fill each batch across prefixes. `single`: one prefix per batch (for comparison)."""

    scheduling: str = "continuous"
    """`continuous`: at every decode step finished rows leave and waiting requests join. `batch`:
    a batch runs until its longest row ends while new requests wait (the older way, for comparison)."""

    max_cached_tokens: int = 65536
    """Continuous scheduling: KV-cache columns held at most, counted as live rows times the widest
    row's prompt plus max_tokens (requests beyond it wait; a request needing more alone gets 400)."""

    api_key: str | None = None
    """Bearer token every request must send (prefer the PREFIXTUNE_API_KEY variable: a command line
    is visible to other users); unset: no check."""

    prefix_roots: tuple[str, ...] = ()
    """Folders from which `POST /v1/prefixes` may load prefixes (a folder anywhere below one, after
    symlinks and `..` are resolved). Empty: loading and unloading while serving are off, as in vLLM."""

    max_body_bytes: int = 2 * 1024 * 1024
    """Largest request body accepted, in bytes; a larger one is answered 413 before it is parsed."""

    def __post_init__(self) -> None:
        # a bare string or a list from the command line: stored as a tuple, so the config stays hashable
        roots = (self.prefix_roots,) if isinstance(self.prefix_roots, str) else tuple(self.prefix_roots)
        object.__setattr__(self, "prefix_roots", tuple(str(r) for r in roots))
        if self.policy not in POLICIES:
            raise PrefixTuneError(f"policy={self.policy!r} is not one of {list(POLICIES)}")
        if self.scheduling not in SCHEDULINGS:
            raise PrefixTuneError(f"scheduling={self.scheduling!r} is not one of {list(SCHEDULINGS)}")
        for name in ("max_batch", "max_pending", "max_body_bytes", "max_cached_tokens"):
            if getattr(self, name) < 1:
                raise PrefixTuneError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise PrefixTuneError(f"max_wait_ms must be 0 or more, got {self.max_wait_ms}")
        if not 0 <= self.port <= 65535:
            raise PrefixTuneError(f"port must be between 0 and 65535, got {self.port}")
        if self.api_key is not None and not self.api_key.strip():
            raise PrefixTuneError("api_key is empty; give a token or leave it unset")
