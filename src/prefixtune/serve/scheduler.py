"""The scheduler: requests wait in one queue and a single worker thread runs them in batches.

Batches are filled across prefixes (policy "mixed"): whatever prefix each request names, the
requests that arrive together run together, because the frozen model gives each row its own
prefix. Policy "single" takes one prefix per batch (the oldest request's), which is what serving
must do when a batch can carry only one prefix (PEFT); it is kept to measure the difference.

Every model call, including loading and unloading prefixes, happens on the worker thread, between
batches, so the bank never changes under a running batch. The HTTP side only enqueues requests and
receives events through callbacks that the worker calls.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from prefixtune.serve.engine import Engine, Row, Sampling

POLICIES = ("mixed", "single")


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


class Scheduler:
    """Owns the waiting queue and the worker thread that runs the engine."""

    def __init__(
        self, engine: Engine, max_batch: int, max_wait_s: float, max_pending: int, policy: str = "mixed"
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.engine = engine
        self.max_batch, self.max_wait_s, self.max_pending, self.policy = (
            max_batch,
            max_wait_s,
            max_pending,
            policy,
        )
        self.stats = Stats()
        self.running: list[Request] = []
        self._waiting: deque[Request] = deque()
        self._free_since = 0.0
        """When the worker last finished a batch (`time.monotonic()`)."""
        self._jobs: deque[tuple[Callable[[], Any], Future]] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._dead = False
        """The worker thread has ended (after `stop`, or killed by something no handler caught)."""
        self._thread = threading.Thread(target=self._loop, name="prefixtune-serve", daemon=True)
        # one random source for requests without a seed; each request still gets its own generator
        self._seeds = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))

    # -- called from the HTTP side ------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the running batch, fail the waiting requests, end the worker."""
        with self._wake:
            self._stopping = True
            waiting, self._waiting = list(self._waiting), deque()
            self._wake.notify_all()
        for request in waiting:
            _send(request, Event("error", status=503, text="the server is shutting down"))
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, request: Request) -> None:
        """Queue `request`, or raise QueueFull when `max_pending` requests are already held."""
        with self._wake:
            self._check_open()
            if len(self._waiting) + len(self.running) >= self.max_pending:
                raise QueueFull()
            self._waiting.append(request)
            self._wake.notify_all()

    def _check_open(self) -> None:
        if self._dead:
            raise Stopped("the server's worker has stopped; restart the server")
        if self._stopping:
            raise Stopped("the server is shutting down")

    def cancel(self, request: Request) -> None:
        """The client went away: drop the request from the queue, or its rows from the running batch."""
        request.cancelled = True
        with self._wake:
            if request in self._waiting:
                self._waiting.remove(request)
                self.stats.cancelled += 1

    def call(self, job: Callable[[], Any]) -> Future:
        """Run `job` on the worker thread between batches (e.g. loading a prefix); its result as a Future."""
        future: Future = Future()
        with self._wake:
            self._check_open()
            self._jobs.append((job, future))
            self._wake.notify_all()
        return future

    # -- the worker thread --------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """Whether the worker thread runs and takes work (False before `start` and after `stop`)."""
        return self._thread.is_alive() and not self._stopping and not self._dead

    def _loop(self) -> None:
        batch: list[Request] | None = None
        try:
            while True:
                batch = None  # not the last batch's requests, should `_next_work` fail
                job, batch = self._next_work()
                if job is None and batch is None:
                    return
                try:
                    if job is not None:
                        _run_job(*job)
                    if batch:
                        self._run(batch)
                except Exception as err:  # a bug of ours: those requests fail, the worker goes on
                    for request in batch or []:
                        self._fail(request, 500, f"internal error: {err}")
        finally:  # the thread ends: whoever still waits is told at once instead of hanging
            self._close(batch or [])

    def _close(self, batch: list[Request]) -> None:
        with self._wake:
            self._dead = True
            held = [*batch, *self.running, *self._waiting]
            jobs, self._waiting, self._jobs, self.running = list(self._jobs), deque(), deque(), []
        for request in dict.fromkeys(held):  # each once, in order
            self._fail(request, 503, "the server's worker has stopped; restart the server")
        for _, future in jobs:
            if future.set_running_or_notify_cancel():
                future.set_exception(Stopped("the server's worker has stopped"))

    def _next_work(self) -> tuple[tuple[Callable[[], Any], Future] | None, list[Request] | None]:
        """Block until there is a job or a batch worth starting; (None, None) when stopping."""
        with self._wake:
            while True:
                if self._jobs:
                    return self._jobs.popleft(), None
                if self._stopping:
                    return None, None
                if self._waiting:
                    eligible = self._eligible()
                    rows = sum(r.rows for r in eligible)
                    # The fill window opens when the oldest request arrived or, if later, when the
                    # worker came free: clients answered by the last batch get `max_wait_s` to send
                    # their next request and join the next batch. Counted from arrival alone, requests
                    # that waited through a batch leave at once, and a closed loop of clients splits
                    # into cohorts that never share a batch again.
                    opened = max(self._waiting[0].arrived, self._free_since)
                    wait = opened + self.max_wait_s - time.monotonic()
                    if rows >= self.max_batch or wait <= 0:
                        batch = self._take(eligible)
                        self.running = batch
                        return None, batch
                    self._wake.wait(wait)
                else:
                    self._wake.wait()

    def _eligible(self) -> list[Request]:
        """The waiting requests the next batch may draw from, oldest first."""
        if self.policy == "mixed":
            return list(self._waiting)
        first = self._waiting[0].model
        return [r for r in self._waiting if r.model == first]

    def _take(self, eligible: list[Request]) -> list[Request]:
        """Oldest first, as many requests as fit in `max_batch` rows (always at least one)."""
        batch, rows = [], 0
        for request in eligible:
            if batch and rows + request.rows > self.max_batch:
                break
            batch.append(request)
            rows += request.rows
        for request in batch:
            self._waiting.remove(request)
        return batch

    def _run(self, batch: list[Request]) -> None:
        rows = []
        for request in batch:
            try:
                rows += self._rows(request)
            except Exception as err:  # e.g. a seed torch refuses: this request fails, the batch runs
                self._fail(request, 500, f"the request could not start: {err}")
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(rows))
        self.stats.rows += len(rows)
        if len({r.prefix for r in rows}) > 1:
            self.stats.mixed_batches += 1
        try:
            if rows:
                self.engine.run(rows)
        except Exception as err:  # the batched forward itself failed: every request in it fails
            for request in batch:
                self._fail(request, 500, f"generation failed: {err}")
        finally:
            for request in batch:
                if request.cancelled and request._open:
                    self.stats.cancelled += 1
                    self.stats.tokens += sum(len(r.tokens) for r in request._rows if r.finish is None)
            with self._wake:
                self.running = []
                self._free_since = time.monotonic()

    def _fail(self, request: Request, status: int, text: str) -> None:
        """End `request` with an error event (once); its rows still in the batch leave at the next step."""
        if request.closed:
            return
        request.closed, request.cancelled, request._open = True, True, 0
        self.stats.failed += 1
        _send(request, Event("error", status=status, text=text))

    def _rows(self, request: Request) -> list[Row]:
        """The request's rows, or none if it was cancelled or names a prefix unloaded meanwhile."""
        if request.cancelled:
            self.stats.cancelled += 1
            return []
        if request.prefix is not None and request.prefix not in self.engine.model.prefixes:
            self._fail(request, 404, f"the model {request.model!r} was unloaded")
            return []
        generator = torch.Generator(device=self.engine.model.device)
        seed = request.sampling.seed
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=self._seeds))
        generator.manual_seed(seed)  # one generator per request: its draws never depend on other requests
        request._open = request.rows
        rows = []
        for prompt in request.prompts:
            for _ in range(request.n):
                choice = len(rows)
                rows.append(
                    Row(
                        prompt=prompt,
                        prefix=request.prefix,
                        sampling=request.sampling,
                        generator=generator,
                        on_text=lambda row, text, c=choice, r=request: r.on_event(Event("text", c, text)),
                        on_finish=lambda row, c=choice, r=request: self._finished(r, c, row),
                        on_error=lambda row, err, r=request: self._fail(r, 500, f"generation failed: {err}"),
                        is_cancelled=lambda r=request: r.cancelled,
                    )
                )
        request._rows = rows
        return rows

    def _finished(self, request: Request, choice: int, row: Row) -> None:
        request.completion_tokens += len(row.tokens)
        self.stats.tokens += len(row.tokens)
        request.on_event(Event("finish", choice, finish_reason=row.finish))
        request._open -= 1
        if request._open == 0:
            request.closed = True
            self.stats.completed += 1
            prompt_tokens = sum(len(p) for p in request.prompts)
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": request.completion_tokens,
                "total_tokens": prompt_tokens + request.completion_tokens,
            }
            request.on_event(Event("done", usage=usage))


def _run_job(function: Callable[[], Any], future: Future) -> None:
    if future.set_running_or_notify_cancel():
        try:
            future.set_result(function())
        except BaseException as err:  # handed to the caller, who decides the status
            future.set_exception(err)


def _send(request: Request, event: Event) -> None:
    """Hand `event` to the request's client, whatever its callback raises (the client is gone then)."""
    try:
        request.on_event(event)
    except Exception:  # e.g. its event loop has closed: nobody is left to tell
        pass
