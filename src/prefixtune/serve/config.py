"""The server's settings: a frozen dataclass whose attribute docstrings become `prefixtune serve --help`."""

from __future__ import annotations

from dataclasses import dataclass

from prefixtune.errors import PrefixTuneError
from prefixtune.serve.scheduler import POLICIES


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

    api_key: str | None = None
    """Bearer token every request must send (prefer the PREFIXTUNE_API_KEY variable: a command line
    is visible to other users); unset: no check."""

    max_body_bytes: int = 2 * 1024 * 1024
    """Largest request body accepted, in bytes; a larger one is answered 413 before it is parsed."""

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise PrefixTuneError(f"policy={self.policy!r} is not one of {list(POLICIES)}")
        for name in ("max_batch", "max_pending", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise PrefixTuneError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise PrefixTuneError(f"max_wait_ms must be 0 or more, got {self.max_wait_ms}")
        if not 0 <= self.port <= 65535:
            raise PrefixTuneError(f"port must be between 0 and 65535, got {self.port}")
        if self.api_key is not None and not self.api_key.strip():
            raise PrefixTuneError("api_key is empty; give a token or leave it unset")
