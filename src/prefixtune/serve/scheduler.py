"""The scheduler: requests wait in one queue and a single worker thread runs them.

Scheduling "continuous" (the default) works at the decode step: after every step, rows that
finished or whose client left go, and waiting requests are prefilled and join the decoding rows
(`LiveBatch`), as many as `max_batch` rows and `max_cached_tokens` allow. Scheduling "batch" runs
whole batches: a request arriving meanwhile waits until the longest row of the batch has ended. It
is kept to measure the difference (bench/serve_throughput.py --open-loop).

Batches are filled across prefixes (policy "mixed"): whatever prefix each request names, the
requests that arrive together run together, because the frozen model gives each row its own
prefix. Policy "single" takes one prefix per batch (the oldest request's), which is what serving
must do when a batch can carry only one prefix (PEFT); it is kept to measure the difference.

Every model call, including loading and unloading prefixes, happens on the worker thread, between
batches (continuous: once the live rows have drained, admitting nobody meanwhile), so the bank never
changes under a running row. The HTTP side only enqueues requests and
receives events through callbacks that the worker calls.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import torch

from prefixtune.serve.engine import Engine, Row
from prefixtune.serve.live import LiveBatch
from prefixtune.serve.requests import Event, QueueFull, Request, Stats, Stopped, run_job, send

__all__ = ["Event", "QueueFull", "Request", "Scheduler", "Stats", "Stopped"]

POLICIES = ("mixed", "single")
SCHEDULINGS = ("continuous", "batch")
_Job = tuple[Callable[[], Any], Future]


class Scheduler:
    """Owns the waiting queue and the worker thread that runs the engine."""

    def __init__(
        self,
        engine: Engine,
        max_batch: int,
        max_wait_s: float,
        max_pending: int,
        policy: str = "mixed",
        scheduling: str = "continuous",
        max_cached_tokens: int | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if scheduling not in SCHEDULINGS:
            raise ValueError(f"scheduling must be one of {SCHEDULINGS}, got {scheduling!r}")
        self.scheduling = scheduling
        self.max_cached_tokens = max_cached_tokens
        """Continuous scheduling: live rows times the widest row's prompt + max_tokens, at most."""
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
            send(request, Event("error", status=503, text="the server is shutting down"))
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
        if self.scheduling == "continuous":
            try:
                self._serve_continuous()
            finally:  # the thread ends: whoever still waits is told at once instead of hanging
                self._close([])
            return
        batch: list[Request] | None = None
        try:
            while True:
                batch = None  # not the last batch's requests, should `_next_work` fail
                job, batch = self._next_work()
                if job is None and batch is None:
                    return
                try:
                    if job is not None:
                        run_job(*job)
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

    def _rows_of(self, requests: list[Request]) -> list[Row]:
        """The rows of `requests`; one that cannot start (e.g. a seed torch refuses) fails alone."""
        rows = []
        for request in requests:
            try:
                rows += self._rows(request)
            except Exception as err:
                self._fail(request, 500, f"the request could not start: {err}")
        return rows

    def _run(self, batch: list[Request]) -> None:
        rows = self._rows_of(batch)
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
        send(request, Event("error", status=status, text=text))

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

    # -- continuous scheduling (on the worker thread) -----------------------------------------------
    def _serve_continuous(self) -> None:
        live = LiveBatch(self.engine)
        while True:
            job, joining = self._next_step(live)
            if job is None and joining is None:
                return
            if job is not None:
                run_job(*job)
            if joining:
                self._join(live, joining)
            if live.rows:
                self._step(live)
            self._retire(live)

    def _next_step(self, live: LiveBatch) -> tuple[_Job | None, list[Request] | None]:
        """What to do before the next decode step: a job (only once no row is live), the requests
        that join now (none is fine while rows are live), or (None, None) to end the worker."""
        with self._wake:
            while True:
                if live.rows:
                    return None, self._admit(live)
                if self._jobs:
                    return self._jobs.popleft(), None
                if self._stopping:
                    return None, None
                if not self._waiting:
                    self._wake.wait()
                    continue
                # Idle: the first group gets the same fill window as a batch (see `_next_work`).
                opened = max(self._waiting[0].arrived, self._free_since)
                wait = opened + self.max_wait_s - time.monotonic()
                if wait <= 0 or sum(r.rows for r in self._waiting) >= self.max_batch:
                    return None, self._admit(live)
                self._wake.wait(wait)

    def _admit(self, live: LiveBatch) -> list[Request]:
        """Oldest first, the waiting requests that fit beside the live rows (hold the lock).

        Nobody joins while a job or the shutdown waits for the live rows to drain. A request that
        does not fit stops the admission, so a large one is not overtaken for ever by small ones.
        """
        if self._jobs or self._stopping:
            return []
        rows, widest = len(live.rows), max((r.reserved for r in self.running), default=0)
        model = self.running[0].model if self.running and self.policy == "single" else None
        taken: list[Request] = []
        for request in self._waiting:
            if self.policy == "single" and model is not None and request.model != model:
                continue
            wider = max(widest, request.reserved)
            fits = rows + request.rows <= self.max_batch and (
                self.max_cached_tokens is None or (rows + request.rows) * wider <= self.max_cached_tokens
            )
            if not fits and (rows or taken):  # alone, a request always runs (the app refuses larger ones)
                break
            taken.append(request)
            rows, widest, model = rows + request.rows, wider, request.model
        for request in taken:
            self._waiting.remove(request)
        self.running.extend(taken)
        return taken

    def _join(self, live: LiveBatch, requests: list[Request]) -> None:
        rows = self._rows_of(requests)
        if not rows:
            return
        try:
            live.join(rows)
        except Exception as err:  # their prefill failed: they fail, the live rows go on
            for request in requests:
                self._fail(request, 500, f"generation failed: {err}")
        self.stats.batches += 1
        self.stats.rows += len(rows)
        self.stats.largest_batch = max(self.stats.largest_batch, len(live.rows))
        if len({r.prefix for r in live.rows}) > 1:
            self.stats.mixed_batches += 1

    def _step(self, live: LiveBatch) -> None:
        try:
            live.prune()  # clients that left since the last step
            live.step()
            self.stats.steps += 1
        except Exception as err:  # the batched forward itself failed: every live request fails
            for request in self.running:
                if any(row in live.rows for row in request._rows):
                    self._fail(request, 500, f"generation failed: {err}")
            live.clear()

    def _retire(self, live: LiveBatch) -> None:
        """Requests none of whose rows is live any more leave `running`."""
        still = set(live.rows)
        gone = [q for q in self.running if not any(row in still for row in q._rows)]
        for request in gone:
            if request.cancelled and request._open:
                self.stats.cancelled += 1
                self.stats.tokens += sum(len(r.tokens) for r in request._rows if r.finish is None)
        with self._wake:
            self.running = [q for q in self.running if q not in gone]
            if not live.rows:
                self._free_since = time.monotonic()
