"""The scheduler: how batches are filled, a full queue, jobs between batches, unloaded prefixes, stop."""

from __future__ import annotations

import threading

import pytest
from serving import tiny_bank
from synthetic import word_tokenizer

from prefixtune.serve.engine import Engine, Sampling
from prefixtune.serve.scheduler import Event, QueueFull, Request, Scheduler, Stopped

WAIT_S = 60


class Collector:
    """Gathers a request's events; `done` is set by its last one."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.done = threading.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if event.kind in ("done", "error"):
            self.done.set()


def _request(model_name: str, prefix: str | None, tokens: int = 3) -> tuple[Request, Collector]:
    sink = Collector()
    sampling = Sampling(max_tokens=tokens, temperature=0)
    return Request(model_name, prefix, [[5, 6, 7]], 1, sampling, on_event=sink), sink


def _scheduler(policy: str = "mixed", **limits) -> Scheduler:
    settings = {"max_batch": 8, "max_wait_s": 0.0, "max_pending": 16, **limits}
    return Scheduler(Engine(tiny_bank(), word_tokenizer()), policy=policy, **settings)


@pytest.mark.parametrize(("policy", "batches", "mixed"), [("mixed", 1, 1), ("single", 3, 0)])
def test_batches_are_filled_across_prefixes_or_one_prefix_at_a_time(policy, batches, mixed):
    scheduler = _scheduler(policy)
    requests = [_request(n, p) for n, p in (("a", "a"), ("b", "b"), ("a", "a"), ("tiny", None))]
    for request, _ in requests:
        scheduler.submit(request)  # all wait before the worker starts, so the batching is deterministic
    scheduler.start()
    try:
        for _, sink in requests:
            assert sink.done.wait(WAIT_S)
            assert [e.kind for e in sink.events] == ["text", "text", "text", "finish", "done"]
    finally:
        scheduler.stop()
    assert (scheduler.stats.batches, scheduler.stats.mixed_batches) == (batches, mixed)
    assert scheduler.stats.completed == 4 and scheduler.stats.tokens == 12


def test_a_full_queue_refuses_and_jobs_run_on_the_worker_between_batches():
    scheduler = _scheduler(max_pending=2)
    scheduler.submit(_request("a", "a")[0])
    scheduler.submit(_request("b", "b")[0])
    with pytest.raises(QueueFull):
        scheduler.submit(_request("a", "a")[0])
    job = scheduler.call(lambda: threading.current_thread().name)
    scheduler.start()
    try:
        assert job.result(WAIT_S) == "prefixtune-serve"
    finally:
        scheduler.stop()


def test_a_request_whose_prefix_was_unloaded_meanwhile_fails_with_404():
    scheduler = _scheduler()
    request, sink = _request("a", "a")
    scheduler.submit(request)
    scheduler.engine.model.remove("a")
    scheduler.start()
    try:
        assert sink.done.wait(WAIT_S)
    finally:
        scheduler.stop()
    assert sink.events[-1].kind == "error" and sink.events[-1].status == 404


def test_stopping_answers_the_waiting_requests_with_503_and_cancelling_drops_them():
    scheduler = _scheduler()
    (kept, kept_sink), (dropped, dropped_sink) = _request("a", "a"), _request("b", "b")
    scheduler.submit(kept)
    scheduler.submit(dropped)
    scheduler.cancel(dropped)
    assert scheduler.waiting == 1 and scheduler.stats.cancelled == 1
    scheduler.stop()  # never started: everything still waits
    assert kept_sink.events[-1].status == 503 and not dropped_sink.events


def test_a_request_that_waited_through_a_batch_still_gives_others_time_to_join():
    # A closed loop of clients: request 1 waited while the worker was busy (long past its own
    # max_wait), and the client answered by that batch sends request 2 a moment after the worker
    # comes free. Both must share the next batch, or the clients split into cohorts for good.
    scheduler = _scheduler(max_wait_s=1.0)
    first, first_sink = _request("a", "a")
    first.arrived -= 30.0  # arrived long ago
    scheduler._free_since = first.arrived + 29.9  # the worker came free 0.1 s ago
    scheduler.submit(first)
    scheduler.start()
    try:
        second, second_sink = _request("b", "b")
        scheduler.submit(second)
        assert first_sink.done.wait(WAIT_S) and second_sink.done.wait(WAIT_S)
    finally:
        scheduler.stop()
    assert (scheduler.stats.batches, scheduler.stats.mixed_batches) == (1, 1)


def test_a_request_that_raises_fails_alone_and_the_worker_runs_on():
    """A seed torch refuses (2**64: the edge refuses it too) and a client whose callback raises: each
    fails with 500 on its own, its batch neighbours complete, and later requests are served."""
    scheduler = _scheduler()
    bad_seed, bad_seed_sink = _request("a", "a")
    bad_seed.sampling = Sampling(max_tokens=3, temperature=1.0, seed=2**64)
    broken, broken_sink = _request("b", "b")

    def explode(event: Event) -> None:
        broken_sink(event)
        if event.kind == "text":
            raise RuntimeError("the client's event loop is closed")

    broken.on_event = explode
    good = [_request(n, p) for n, p in (("a", "a"), ("tiny", None))]
    for request in (bad_seed, good[0][0], broken, good[1][0]):
        scheduler.submit(request)
    scheduler.start()
    try:
        for sink in (bad_seed_sink, broken_sink, good[0][1], good[1][1]):
            assert sink.done.wait(WAIT_S)
        later, later_sink = _request("b", "b")
        scheduler.submit(later)
        assert later_sink.done.wait(WAIT_S)
        assert scheduler.alive
    finally:
        scheduler.stop()
    assert bad_seed_sink.events[-1].status == 500 and "could not start" in bad_seed_sink.events[-1].text
    assert broken_sink.events[-1].status == 500 and "event loop" in broken_sink.events[-1].text
    for sink in (good[0][1], good[1][1], later_sink):
        assert [e.kind for e in sink.events] == ["text", "text", "text", "finish", "done"]
    assert scheduler.stats.failed == 2 and scheduler.stats.completed == 3
    assert scheduler.stats.batches == 2  # the four shared one batch


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_worker_that_dies_answers_everyone_503_and_refuses_new_work():
    scheduler = _scheduler()

    def die(*args) -> None:
        raise SystemExit("killed")  # not an Exception: nothing in the worker catches it

    scheduler.engine.forward = die
    running, running_sink = _request("a", "a")
    scheduler.submit(running)
    scheduler.start()
    assert running_sink.done.wait(WAIT_S)
    scheduler._thread.join(WAIT_S)
    assert running_sink.events[-1].status == 503 and not scheduler.alive
    with pytest.raises(Stopped, match="worker has stopped"):
        scheduler.submit(_request("b", "b")[0])
    with pytest.raises(Stopped):
        scheduler.call(lambda: None)
    scheduler.stop()
