"""What a request is and what the worker tells it: the scheduler's vocabulary, shared with the HTTP app."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from prefixtune.serve.engine import Row, Sampling


class QueueFull(Exception):
    """The server holds as many requests as it may; the client should retry later."""


class Stopped(Exception):
    """The server is shutting down."""


@dataclass(frozen=True)
class Event:
    """What the worker tells a request: new text, a finished choice, the end, or a failure."""

    kind: str
    """"text", "finish", "done" or "error"."""
    choice: int = 0
    text: str = ""
    finish_reason: str | None = None
    status: int = 0
    """For "error": the HTTP status to answer with."""
    usage: dict[str, int] | None = None


@dataclass(eq=False)
class Request:
    """One completion request: `n` choices for each prompt, all with the same prefix."""

    model: str
    """The name the client asked for (a prefix, or the base model)."""
    prefix: str | None
    prompts: list[list[int]]
    n: int
    sampling: Sampling
    on_event: Callable[[Event], None]
    """Called on the worker thread; must not block."""
    arrived: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    closed: bool = False
    """Answered: done, or failed (then `cancelled` too, so that its rows leave the batch)."""
    completion_tokens: int = 0
    _open: int = 0
    _rows: list[Row] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.n

    @property
    def reserved(self) -> int:
        """Cache columns each of its rows may come to hold: its longest prompt plus max_tokens."""
        return max(len(p) for p in self.prompts) + self.sampling.max_tokens


@dataclass
class Stats:
    """Counters shown by the health endpoint."""

    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    batches: int = 0
    mixed_batches: int = 0
    """Batches whose rows named more than one prefix (the base model counting as one)."""
    largest_batch: int = 0
    rows: int = 0
    """Rows run in all batches (rows / batches: the mean batch size)."""
    tokens: int = 0
    steps: int = 0
    """Decode forwards (continuous scheduling), each over every live row."""


def run_job(function: Callable[[], Any], future: Future) -> None:
    if future.set_running_or_notify_cancel():
        try:
            future.set_result(function())
        except BaseException as err:  # handed to the caller, who decides the status
            future.set_exception(err)


def send(request: Request, event: Event) -> None:
    """Hand `event` to the request's client, whatever its callback raises (the client is gone then)."""
    try:
        request.on_event(event)
    except Exception:  # e.g. its event loop has closed: nobody is left to tell
        pass
