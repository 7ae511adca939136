"""Hostile and careless requests: none may hang, kill or slow the server, or fail another request."""

from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from serving import BASE, ServerThread, solo_text  # noqa: E402

# Short enough that a request the server leaves hanging fails the test instead of stalling the run.
TIMEOUT = httpx.Timeout(20.0)
PROMPTS = ["w5 w6 w7", "w20 w21", "w40 w41 w42 w43", "w60", "w70 w71", "w80 w81 w82", "w9", "w11 w12"]


@pytest.fixture(scope="module")
def server():
    with ServerThread(max_wait_ms=150, max_batch=9) as running:
        yield running


def _post(url: str, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json=body, timeout=TIMEOUT, **kwargs)


def _health(url: str) -> httpx.Response:
    return httpx.get(f"{url}/health", timeout=TIMEOUT)


def _wait_for(condition, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", 2**64),
        ("seed", 2**63),
        ("seed", -(2**63) - 1),
        ("max_tokens", 2**64),
        ("n", 2**64),
        ("stop", "w" * 1025),
    ],
)
def test_out_of_range_fields_are_refused_at_the_edge(server, field, value):
    body = {"model": "a", "prompt": "w1", "max_tokens": 2, field: value}
    reply = _post(server.url, body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == field
    assert _post(server.url, {"model": "a", "prompt": "w1", "max_tokens": 2}).status_code == 200


@pytest.mark.parametrize("number", ["NaN", "Infinity"])
def test_non_finite_numbers_are_refused(server, number):
    for field in ("temperature", "top_p"):
        content = f'{{"model": "a", "prompt": "w1", "max_tokens": 2, "{field}": {number}}}'
        reply = httpx.post(f"{server.url}/v1/completions", content=content,
                           headers={"content-type": "application/json"}, timeout=TIMEOUT)  # fmt: skip
        assert reply.status_code == 400 and reply.json()["error"]["param"] == field


def test_the_extreme_seeds_allowed_are_served(server):
    for seed in (-(2**63), 2**63 - 1):
        reply = _post(server.url, {"model": "a", "prompt": "w1", "max_tokens": 2, "seed": seed})
        assert reply.status_code == 200, reply.text


def test_a_vanishing_temperature_fails_nobody_and_samples_greedily(server):
    """Eight greedy requests and one at 5e-324 share a batch: all nine answer, the odd one greedily."""
    bodies = [{"model": ["a", "b", BASE][i % 3], "prompt": p, "max_tokens": 5, "temperature": 0}
              for i, p in enumerate(PROMPTS)]  # fmt: skip
    odd = {"model": "b", "prompt": PROMPTS[2], "max_tokens": 5, "temperature": 5e-324}

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
            return await asyncio.gather(*(client.post("/v1/completions", json=b) for b in [*bodies, odd]))

    replies = asyncio.run(send_all())
    assert [r.status_code for r in replies] == [200] * 9, [r.text for r in replies]
    greedy = solo_text(server.reference, server.tokenizer, "b", PROMPTS[2], 5)
    assert replies[-1].json()["choices"][0]["text"] == greedy


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("scheduling", ["continuous", "batch"])
def test_a_dead_worker_makes_health_and_completions_answer_503_at_once(scheduling):
    with ServerThread(max_wait_ms=0, scheduling=scheduling) as doomed:

        def die(*args) -> None:
            raise SystemExit("killed")  # as nothing in the worker catches: the thread ends

        doomed.scheduler.engine.forward = die
        first = _post(doomed.url, {"model": "a", "prompt": "w1", "max_tokens": 2})
        assert _wait_for(lambda: not doomed.scheduler._thread.is_alive())
        assert first.status_code == 503 and "worker has stopped" in first.json()["error"]["message"]
        health = _health(doomed.url)
        assert health.status_code == 503 and health.json()["error"]["code"] == "worker_down"
        started = time.monotonic()
        later = _post(doomed.url, {"model": "b", "prompt": "w1", "max_tokens": 2})
        assert later.status_code == 503 and time.monotonic() - started < 5


def test_a_client_that_leaves_a_non_streamed_request_frees_the_batch():
    with ServerThread(max_batch=1, max_wait_ms=0) as small:
        body = {"model": "a", "prompt": "w5 w6", "max_tokens": 2000, "temperature": 0}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{small.url}/v1/completions", json=body, timeout=httpx.Timeout(20.0, read=0.5))
        assert _wait_for(lambda: _health(small.url).json()["running"] == 0)
        health = _health(small.url).json()
        assert health["cancelled"] == 1 and health["completed"] == 0
        assert health["tokens"] < 2000  # generation stopped early: the row left the batch


def test_a_body_over_the_limit_is_answered_413_declared_or_streamed():
    with ServerThread(max_body_bytes=4096) as limited:
        body = {"model": "a", "prompt": "w5 " * 2000, "max_tokens": 2}
        reply = _post(limited.url, body)
        assert reply.status_code == 413, reply.text
        error = reply.json()["error"]
        assert "4096 bytes" in error["message"] and error["code"] == "request_too_large"

        def chunks():  # no Content-Length: the size shows only while reading
            for _ in range(10):
                yield b"w5 " * 200

        streamed = httpx.post(f"{limited.url}/v1/completions", content=chunks(), timeout=TIMEOUT,
                              headers={"content-type": "application/json"})  # fmt: skip
        assert streamed.status_code == 413
        fits = _post(limited.url, {"model": "a", "prompt": "w5 " * 100, "max_tokens": 2})
        assert fits.status_code == 200
        assert _health(limited.url).json()["status"] == "ok"


def test_a_prompt_too_long_in_characters_is_refused_before_tokenising(server, monkeypatch):
    calls = []
    tokenize = type(server.tokenizer).__call__

    def counted(*args, **kwargs):
        calls.append(args)
        return tokenize(*args, **kwargs)

    monkeypatch.setattr(type(server.tokenizer), "__call__", counted)
    reply = _post(server.url, {"model": "a", "prompt": "w5 " * 30_000, "max_tokens": 2})
    assert reply.status_code == 400 and "characters" in reply.json()["error"]["message"]
    assert reply.json()["error"]["code"] == "context_length_exceeded" and not calls


def test_health_answers_while_a_long_prompt_is_tokenised(server, monkeypatch):
    """Tokenising runs off the event loop: a slow tokenizer delays its own request only."""
    tokenize = type(server.tokenizer).__call__

    def slow(*args, **kwargs):
        time.sleep(2.0)
        return tokenize(*args, **kwargs)

    monkeypatch.setattr(type(server.tokenizer), "__call__", slow)

    async def both() -> float:
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
            completion = asyncio.create_task(
                client.post("/v1/completions", json={"model": "a", "prompt": "w5", "max_tokens": 2})
            )
            await asyncio.sleep(0.3)
            started = time.monotonic()
            assert (await client.get("/health")).status_code == 200
            waited = time.monotonic() - started
            assert (await completion).status_code == 200
            return waited

    assert asyncio.run(both()) < 1.0
