"""The OpenAI-compatible server, started for real on 127.0.0.1 and called over HTTP (httpx, openai)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from serving import BASE, ServerThread, solo_text  # noqa: E402

PROMPTS = ["w5 w6 w7", "w20 w21", "w40 w41 w42 w43", "w60", "w70 w71", "w80 w81 w82"]
TIMEOUT = httpx.Timeout(30.0)


@pytest.fixture(scope="module")
def server():
    # a long batching window, so that requests sent together surely share a batch
    with ServerThread(max_wait_ms=150, max_batch=8) as running:
        yield running


def _post(server, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/completions", json=body, timeout=TIMEOUT, **kwargs)


def _health(server) -> dict:
    return httpx.get(f"{server.url}/health", timeout=TIMEOUT).json()


def test_models_and_health_list_the_base_and_every_prefix(server):
    models = httpx.get(f"{server.url}/v1/models", timeout=TIMEOUT).json()
    assert [m["id"] for m in models["data"]] == [BASE, "a", "b"]
    assert [m["parent"] for m in models["data"]] == [None, BASE, BASE]
    assert httpx.get(f"{server.url}/v1/models/b", timeout=TIMEOUT).json()["id"] == "b"
    health = _health(server)
    assert health["status"] == "ok" and health["running"] == 0 and health["waiting"] == 0


def test_concurrent_mixed_prefix_requests_each_equal_their_solo_greedy_run(server):
    names = ["a", "b", BASE, "a", "b", BASE]
    before = _health(server)

    async def send_all() -> list[dict]:
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
            bodies = [
                {"model": n, "prompt": p, "max_tokens": 6, "temperature": 0}
                for n, p in zip(names, PROMPTS, strict=True)
            ]
            replies = await asyncio.gather(*(client.post("/v1/completions", json=b) for b in bodies))
        assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
        return [r.json() for r in replies]

    replies = asyncio.run(send_all())
    for name, prompt, reply in zip(names, PROMPTS, replies, strict=True):
        expected = solo_text(server.reference, server.tokenizer, None if name == BASE else name, prompt, 6)
        assert reply["choices"][0]["text"] == expected, name
        assert reply["choices"][0]["finish_reason"] == "length"
        assert reply["model"] == name and reply["object"] == "text_completion"
        assert reply["usage"]["completion_tokens"] == 6
        assert reply["usage"]["prompt_tokens"] == len(prompt.split())
    after = _health(server)
    assert after["mixed_batches"] > before["mixed_batches"]  # the prefixes did share a batch
    assert after["largest_batch"] >= 3
    assert len({r["choices"][0]["text"] for r in replies[:3]}) == 3  # and they did steer differently


def test_the_openai_client_works_unchanged(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)
    assert [m.id for m in client.models.list()] == [BASE, "a", "b"]
    reply = client.completions.create(model="b", prompt=PROMPTS[2], max_tokens=5, temperature=0)
    expected = solo_text(server.reference, server.tokenizer, "b", PROMPTS[2], 5)
    assert reply.choices[0].text == expected
    assert reply.usage.completion_tokens == 5
    stream = client.completions.create(model="b", prompt=PROMPTS[2], max_tokens=5, temperature=0, stream=True)
    pieces = [(c.choices[0].text, c.choices[0].finish_reason) for c in stream]
    assert "".join(text for text, _ in pieces) == expected
    assert len(pieces) >= 5 and pieces[-1][1] == "length"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="w5", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="a", prompt="w5", max_tokens=2, temperature=7)


def test_streaming_sends_events_as_openai_does(server):
    body = {"model": "a", "prompt": PROMPTS[0], "max_tokens": 4, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=TIMEOUT) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: ") :] for line in reply.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" and c["model"] == "a" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == solo_text(server.reference, server.tokenizer, "a", PROMPTS[0], 4)
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"


def test_a_seeded_sample_is_the_same_alone_and_in_a_mixed_batch(server):
    """Each request samples from its own seeded generator, so its draws do not depend on its neighbours."""
    body = {"model": "a", "prompt": PROMPTS[1], "max_tokens": 8, "temperature": 1.2, "top_p": 0.9, "seed": 11}
    alone = _post(server, body).json()["choices"][0]["text"]

    async def in_company() -> str:
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as client:
            others = [
                {"model": n, "prompt": p, "max_tokens": 8, "temperature": 1.0}
                for n, p in (("b", PROMPTS[3]), (BASE, PROMPTS[4]), ("a", PROMPTS[5]))
            ]
            replies = await asyncio.gather(*(client.post("/v1/completions", json=b) for b in [*others, body]))
        return replies[-1].json()["choices"][0]["text"]

    assert asyncio.run(in_company()) == alone
    other_seed = _post(server, {**body, "seed": 12}).json()["choices"][0]["text"]
    greedy = solo_text(server.reference, server.tokenizer, "a", PROMPTS[1], 8)
    assert len({alone, other_seed, greedy}) == 3  # sampling does sample


def test_n_several_prompts_and_stop_texts(server):
    words = solo_text(server.reference, server.tokenizer, "a", PROMPTS[0], 6).split(" ")
    stop = f"{words[2]} {words[3]}"
    text = " ".join(words)
    needed = next(k for k in range(1, 7) if stop in " ".join(words[:k]))  # tokens until the stop shows
    reply = _post(server, {"model": "a", "prompt": PROMPTS[0], "max_tokens": 6, "temperature": 0,
                           "stop": ["w999", stop]}).json()  # fmt: skip
    assert reply["choices"][0]["text"] == text[: text.index(stop)]
    assert reply["choices"][0]["finish_reason"] == "stop"
    assert reply["usage"]["completion_tokens"] == needed
    reply = _post(server, {"model": "b", "prompt": PROMPTS[:2], "n": 2, "max_tokens": 3, "temperature": 0})
    choices = reply.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    first = solo_text(server.reference, server.tokenizer, "b", PROMPTS[0], 3)
    second = solo_text(server.reference, server.tokenizer, "b", PROMPTS[1], 3)
    assert [c["text"] for c in choices] == [first, first, second, second]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": "nope", "prompt": "w5"}, 404, "'nope' does not exist"),
        ({"prompt": "w5"}, 400, "model: Field required"),
        ({"model": "a", "prompt": "w5", "temperature": 3}, 400, "temperature"),
        ({"model": "a", "prompt": "w5", "top_p": 0}, 400, "top_p"),
        ({"model": "a", "prompt": "w5", "max_tokens": 0}, 400, "max_tokens"),
        ({"model": "a", "prompt": "w5", "max_tokens": "many"}, 400, "max_tokens"),
        ({"model": "a", "prompt": "w5", "n": 9}, 400, "larger --max-batch"),
        ({"model": "a", "prompt": [], "max_tokens": 2}, 400, "empty list"),
        ({"model": "a", "prompt": "", "max_tokens": 2}, 400, "prompt is empty"),
        ({"model": "a", "prompt": "w5", "stop": ["w1", "w2", "w3", "w4", "w5"]}, 400, "at most 4"),
        ({"model": "a", "prompt": "w5", "stop": ""}, 400, "stop sequence is empty"),
        ({"model": "a", "prompt": "w5", "logprobs": 2}, 400, "logprobs is not supported"),
        ({"model": "a", "prompt": "w5 " * 2040, "max_tokens": 5}, 400, "context is 2048 positions"),
        ({"model": "a", "prompt": "w5", "max_tokens": 2045}, 400, "lower max_tokens"),
    ],
)
def test_bad_requests_are_answered_with_a_message_and_never_take_the_server_down(
    server, body, status, message
):
    reply = _post(server, body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert message in error["message"] and error["type"]
    if "stream" not in body:
        streamed = _post(server, {**body, "stream": True})
        assert streamed.status_code == status  # also before a stream starts
    assert _health(server)["status"] == "ok"


def test_malformed_json_and_unknown_routes(server):
    reply = httpx.post(
        f"{server.url}/v1/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=TIMEOUT,
    )
    assert reply.status_code == 400 and "JSON" in reply.json()["error"]["message"]
    assert httpx.get(f"{server.url}/v1/nothing", timeout=TIMEOUT).status_code == 404
    assert httpx.get(f"{server.url}/v1/models/nope", timeout=TIMEOUT).status_code == 404
    assert httpx.get(f"{server.url}/v1/completions", timeout=TIMEOUT).status_code == 405
    assert _health(server)["status"] == "ok"


def test_prefixes_load_and_unload_while_running(tmp_path):
    with ServerThread(prefix_roots=(str(tmp_path),)) as server:
        _load_and_unload(server, tmp_path)


def _load_and_unload(server, tmp_path):
    server.reference.save(tmp_path / "saved", name="a")
    url = f"{server.url}/v1/prefixes"
    loaded = httpx.post(url, json={"name": "c", "path": str(tmp_path / "saved")}, timeout=TIMEOUT)
    assert loaded.status_code == 200 and loaded.json()["id"] == "c"
    assert "c" in [m["id"] for m in httpx.get(f"{server.url}/v1/models", timeout=TIMEOUT).json()["data"]]
    reply = _post(server, {"model": "c", "prompt": PROMPTS[3], "max_tokens": 5, "temperature": 0})
    assert reply.json()["choices"][0]["text"] == solo_text(
        server.reference, server.tokenizer, "a", PROMPTS[3], 5
    )

    again = httpx.post(url, json={"name": "c", "path": str(tmp_path / "saved")}, timeout=TIMEOUT)
    assert again.status_code == 409
    missing = httpx.post(url, json={"name": "d", "path": str(tmp_path / "nothing")}, timeout=TIMEOUT)
    assert missing.status_code == 400 and "no prefix folder" in missing.json()["error"]["message"]
    assert httpx.post(url, json={"name": "d"}, timeout=TIMEOUT).status_code == 400

    assert httpx.delete(f"{url}/c", timeout=TIMEOUT).json()["deleted"] is True
    gone = _post(server, {"model": "c", "prompt": PROMPTS[3], "max_tokens": 5})
    assert gone.status_code == 404
    assert httpx.delete(f"{url}/c", timeout=TIMEOUT).status_code == 404
    assert httpx.delete(f"{url}/{BASE}", timeout=TIMEOUT).status_code == 400
    assert sorted(server.model.prefixes) == ["a", "b"]


def test_a_prefix_folder_with_a_wrong_type_is_a_400_naming_the_field(tmp_path):
    with ServerThread(prefix_roots=(str(tmp_path),)) as server:
        server.reference.save(tmp_path / "typo", name="a")
        config = tmp_path / "typo" / "prefix_config.json"
        meta = json.loads(config.read_text())
        meta["config"]["length"] = "four"
        config.write_text(json.dumps(meta))
        reply = httpx.post(
            f"{server.url}/v1/prefixes", json={"name": "typo", "path": "typo"}, timeout=TIMEOUT
        )
        assert reply.status_code == 400
        assert 'config.length holds "four" (text)' in reply.json()["error"]["message"]
        assert "typo" not in server.model.prefixes


def test_a_prefix_saved_on_other_weights_is_refused_unless_the_body_says_so(tmp_path):
    from serving import tiny_bank

    tiny_bank(seed=1).save(tmp_path / "other", name="a")  # same shapes, other weights
    with ServerThread(prefix_roots=(str(tmp_path),)) as server:
        url, path = f"{server.url}/v1/prefixes", str(tmp_path / "other")
        refused = httpx.post(url, json={"name": "other", "path": path}, timeout=TIMEOUT)
        assert refused.status_code == 400
        message = refused.json()["error"]["message"]
        assert "weights differ" in message and '"check_weights": false' in message
        assert "check_weights=False" not in message
        loaded = httpx.post(
            url, json={"name": "other", "path": path, "check_weights": False}, timeout=TIMEOUT
        )
        assert loaded.status_code == 200
        assert httpx.delete(f"{url}/other", timeout=TIMEOUT).json()["deleted"] is True


def test_an_api_key_guards_every_endpoint():
    with ServerThread(api_key="s3cret") as guarded:
        for method, path in (("GET", "/health"), ("GET", "/v1/models"), ("POST", "/v1/completions"),
                             ("POST", "/v1/prefixes"), ("DELETE", "/v1/prefixes/a")):  # fmt: skip
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                reply = httpx.request(method, guarded.url + path, headers=headers, timeout=TIMEOUT)
                assert reply.status_code == 401, (method, path, headers)
                assert "API key" in reply.json()["error"]["message"]
        for path in ("/docs", "/openapi.json"):
            assert httpx.get(guarded.url + path, timeout=TIMEOUT).status_code == 404
        ok = httpx.get(f"{guarded.url}/health", headers={"Authorization": "Bearer s3cret"}, timeout=TIMEOUT)
        assert ok.status_code == 200
        client = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="s3cret", max_retries=0, timeout=30)
        assert client.completions.create(model="a", prompt="w5", max_tokens=2, temperature=0).choices
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="x", max_retries=0).models.list()


def _wait_for(condition, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_full_queue_answers_429_and_a_client_leaving_mid_stream_frees_its_slot():
    with ServerThread(max_pending=1, max_batch=1, max_wait_ms=0) as small:
        long = {"model": "a", "prompt": "w5 w6", "max_tokens": 2000, "temperature": 0, "stream": True}
        short = {"model": "b", "prompt": "w7", "max_tokens": 2, "temperature": 0}
        with httpx.Client(timeout=TIMEOUT) as client:
            with client.stream("POST", f"{small.url}/v1/completions", json=long) as reply:
                lines = reply.iter_lines()
                assert next(line for line in lines if line.startswith("data: "))
                full = client.post(f"{small.url}/v1/completions", json=short)
                assert full.status_code == 429 and full.json()["error"]["type"] == "rate_limit_error"
                assert full.headers["retry-after"] == "1"
            # leaving the `with` closed the connection mid-stream
        assert _wait_for(lambda: _health(small)["running"] == 0)
        health = _health(small)
        assert health["cancelled"] == 1 and health["completed"] == 0
        assert health["tokens"] < 2000  # generation stopped early: the row left the batch
        after = httpx.post(f"{small.url}/v1/completions", json=short, timeout=TIMEOUT)
        assert after.status_code == 200
        assert after.json()["choices"][0]["text"] == solo_text(small.reference, small.tokenizer, "b", "w7", 2)
