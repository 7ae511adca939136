"""Continuous batching over real HTTP: requests join a running stream, leave before it, and wait when
the cache is full."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from serving import BASE, ServerThread, solo_text  # noqa: E402

TIMEOUT = httpx.Timeout(60.0)
LONG = {"model": "a", "prompt": "w5 w6", "max_tokens": 1500, "temperature": 0, "stream": True}
SHORT = [("b", "w20 w21", 5), (BASE, "w40 w41 w42 w43", 7), ("a", "w60", 3), ("b", "w7 w8 w9", 6)]


def _health(server) -> dict:
    return httpx.get(f"{server.url}/health", timeout=TIMEOUT).json()


def _wait_for(condition, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


async def _post_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
        return await asyncio.gather(*(client.post("/v1/completions", json=b) for b in bodies))


def _stream_text(lines) -> str:
    text = ""
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            text += json.loads(line[6:])["choices"][0]["text"]
    return text


def test_requests_join_a_running_stream_finish_before_it_and_equal_their_solo_runs():
    with ServerThread(max_wait_ms=0, max_batch=8) as server, httpx.Client(timeout=TIMEOUT) as client:
        with client.stream("POST", f"{server.url}/v1/completions", json=LONG) as reply:
            lines = reply.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            bodies = [{"model": m, "prompt": p, "max_tokens": t, "temperature": 0} for m, p, t in SHORT]
            replies = asyncio.run(_post_all(server.url, bodies))
            health = _health(server)
            assert health["running"] == 1  # they came and went while the long stream decodes
            rest = _stream_text([first, *lines])
        for (model, prompt, tokens), answer in zip(SHORT, replies, strict=True):
            prefix = None if model == BASE else model
            assert answer.json()["choices"][0]["text"] == solo_text(
                server.reference, server.tokenizer, prefix, prompt, tokens
            )
        assert rest == solo_text(server.reference, server.tokenizer, "a", "w5 w6", 1500)
        health = _health(server)
        assert health["batches"] >= 2 and health["largest_batch"] >= 2 and health["completed"] == 5


def test_a_full_cache_makes_requests_wait_and_one_too_large_alone_is_refused():
    limited = ServerThread(max_wait_ms=0, max_cached_tokens=2000)
    with limited as server, httpx.Client(timeout=TIMEOUT) as client:
        too_large = {"model": "b", "prompt": "w1", "max_tokens": 2000}
        refused = client.post(f"{server.url}/v1/completions", json=too_large)
        assert refused.status_code == 400 and "cached tokens" in refused.json()["error"]["message"]
        short = {"model": "b", "prompt": "w20", "max_tokens": 3, "temperature": 0}
        answers: list[httpx.Response] = []
        sender = threading.Thread(
            target=lambda: answers.append(
                httpx.post(f"{server.url}/v1/completions", json=short, timeout=TIMEOUT)
            )
        )
        # the long row reserves 2 + 1500 columns: a second row of any size would need 2 x 1502 > 2000
        with client.stream("POST", f"{server.url}/v1/completions", json=LONG) as reply:
            lines = reply.iter_lines()  # kept: a generator collected now would close the stream
            next(line for line in lines if line.startswith("data: "))
            sender.start()
            assert _wait_for(lambda: _health(server)["waiting"] == 1)
            assert _health(server)["running"] == 1 and not answers
        # the long stream's client left: its row and its columns are freed, and the waiting one runs
        sender.join(30)
        assert answers and answers[0].status_code == 200
        assert answers[0].json()["choices"][0]["text"] == solo_text(
            server.reference, server.tokenizer, "b", "w20", 3
        )
        assert _health(server)["cancelled"] == 1


def test_a_sliding_window_model_falls_back_to_whole_batches_and_serves(capsys):
    import httpx
    from conftest import make_model
    from serving import tiny_bank
    from synthetic import word_tokenizer

    from prefixtune import PrefixConfig, add_prefix
    from prefixtune.serve import ServeConfig, create_app
    from prefixtune.serve.background import BackgroundServer

    tokenizer = word_tokenizer()
    assert create_app(tiny_bank(), tokenizer, ServeConfig(), BASE).state.scheduler.scheduling == "continuous"
    gemma = add_prefix(make_model("gemma3"), PrefixConfig(length=3, reparam="flat", seed=1), name="a")
    app = create_app(gemma, tokenizer, ServeConfig(), BASE)
    assert app.state.scheduler.scheduling == "batch"
    assert "sliding-window" in capsys.readouterr().err
    reference = add_prefix(make_model("gemma3"), PrefixConfig(length=3, reparam="flat", seed=1), name="a")
    expected = solo_text(reference, tokenizer, "a", "w5 w6 w7", 6)
    with BackgroundServer(app) as server:
        body = {"model": "a", "prompt": "w5 w6 w7", "max_tokens": 6, "temperature": 0}
        reply = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
    assert reply.status_code == 200 and reply.json()["choices"][0]["text"] == expected
