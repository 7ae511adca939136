"""The OpenAI-compatible HTTP app: FastAPI routes in front of the scheduler.

Routes: `POST /v1/completions` (`model` names a prefix or the base model), `GET /v1/models`,
`GET /health`, `POST /v1/prefixes` (load a prefix folder) and `DELETE /v1/prefixes/{name}`
(unload; both off unless the operator names prefix roots). Every error is OpenAI's error body with
a fitting status: 400 for a bad body or parameter or a prompt too long for the context, 401 without
the API key, 403 for loading while it is off, 404 for an unknown model, 409 for a name already
taken, 413 for a body over the limit, 429 when the queue is full, 500 for a request whose generation
failed (that request only), 503 while shutting down or once the worker has stopped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Header
from fastapi import Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from prefixtune.engine.model import PrefixModel
from prefixtune.errors import PrefixTuneError, WeightsMismatch
from prefixtune.serve.config import ServeConfig
from prefixtune.serve.engine import Engine, Sampling
from prefixtune.serve.limits import BodyLimit, prompt_char_limit
from prefixtune.serve.live import mergeable
from prefixtune.serve.prefixes import NotAllowed, find_prefix_folder, load_for_serving, resolve_roots
from prefixtune.serve.protocol import (
    CompletionBody,
    LoadBody,
    chunk,
    completion,
    error_body,
    model_card,
    new_id,
)
from prefixtune.serve.scheduler import Event, QueueFull, Request, Scheduler, Stopped

_RETRY_AFTER_S = "1"  # seconds a 429 tells the client to wait: rows leave at every decode step
_POLL_S = 0.25  # how often a waiting handler checks whether its client is still there
_KINDS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error", 503: "server_error"}  # fmt: skip
_LOADING_OFF = (
    "loading and unloading prefixes while serving is off; the operator turns it on by starting the "
    "server with --prefix-root DIR, and prefixes can then be loaded from folders under DIR"
)


class ApiError(Exception):
    """An error answered with OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers

    def response(self) -> JSONResponse:
        kind = _KINDS.get(self.status, "server_error")
        body = error_body(self.message, kind, self.code, self.param)
        return JSONResponse(body, status_code=self.status, headers=self.headers)


@dataclass(frozen=True)
class Served:
    """What the routes share: the bank, its tokenizer, the scheduler and the base model's name."""

    model: PrefixModel
    tokenizer: Any
    scheduler: Scheduler
    base_name: str
    started: int
    roots: tuple[Path, ...] = ()
    """Resolved folders prefixes may be loaded from; none: runtime loading is off."""
    max_prompt_chars: int | None = None


def create_app(model: PrefixModel, tokenizer, config: ServeConfig, base_name: str) -> FastAPI:
    """The app serving `model`'s prefixes (each by its name) and the bare model (as `base_name`)."""
    engine = Engine(model, tokenizer)
    wait_s = config.max_wait_ms / 1000
    if config.scheduling == "continuous" and not mergeable(model.config):
        print(
            "note: this model has sliding-window attention layers, whose caches continuous batching "
            "cannot merge: requests are scheduled in whole batches (--scheduling batch)",
            file=sys.stderr,
        )
        config = dataclasses.replace(config, scheduling="batch")
    scheduler = Scheduler(
        engine,
        config.max_batch,
        wait_s,
        config.max_pending,
        config.policy,
        config.scheduling,
        config.max_cached_tokens,
    )
    roots = resolve_roots(config.prefix_roots)
    chars = prompt_char_limit(tokenizer, engine.window)
    served = Served(model, tokenizer, scheduler, base_name, int(time.time()), roots, chars)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        scheduler.start()
        yield
        await run_in_threadpool(scheduler.stop)

    async def check_key(authorization: str | None = Header(default=None)) -> None:
        if config.api_key is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), config.api_key.encode()):
            message = "missing or wrong API key: send 'Authorization: Bearer KEY'"
            raise ApiError(401, message, "invalid_api_key")

    # no /docs or /openapi.json: every route the server has is guarded by the key
    app = FastAPI(title="prefixtune", lifespan=lifespan, dependencies=[Depends(check_key)],
                  docs_url=None, redoc_url=None, openapi_url=None)  # fmt: skip
    app.state.scheduler = scheduler
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    _add_error_handlers(app)
    _add_model_routes(app, served)
    _add_completion_route(app, served)
    return app


def _add_model_routes(app: FastAPI, served: Served) -> None:
    model, scheduler, base_name, started = served.model, served.scheduler, served.base_name, served.started

    @app.get("/health")
    async def health() -> dict:
        if not scheduler.alive:  # requests would wait for nobody: say so, for the load balancer
            raise ApiError(503, "the server's worker is not running; restart the server", "worker_down")
        stats = vars(scheduler.stats)
        return {"status": "ok", "running": len(scheduler.running), "waiting": scheduler.waiting, **stats}

    @app.get("/v1/models")
    async def list_models() -> dict:
        cards = [model_card(base_name, None, started)]
        # sorted() copies the key view in one step, safe while the worker thread loads a prefix
        cards += [model_card(name, base_name, started) for name in sorted(model.prefixes.keys())]
        return {"object": "list", "data": cards}

    @app.get("/v1/models/{name}")
    async def get_model(name: str) -> dict:
        _prefix_of(name, model, base_name)
        return model_card(name, None if name == base_name else base_name, started)

    @app.post("/v1/prefixes")
    async def load(body: LoadBody) -> dict:
        if not served.roots:
            raise ApiError(403, _LOADING_OFF, "runtime_loading_disabled")
        if body.name == base_name:
            raise _name_taken(body.name)
        await _on_worker(scheduler, lambda: _load(model, body, served.roots))
        return model_card(body.name, base_name)

    @app.delete("/v1/prefixes/{name}")
    async def unload(name: str) -> dict:
        if not served.roots:
            raise ApiError(403, _LOADING_OFF, "runtime_loading_disabled")
        if name == base_name:
            raise ApiError(400, f"{name!r} is the base model, which cannot be unloaded")
        _prefix_of(name, model, base_name)
        await _on_worker(scheduler, lambda: _unload(model, name))
        return {"id": name, "object": "model", "deleted": True}


def _add_completion_route(app: FastAPI, served: Served) -> None:
    scheduler = served.scheduler

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, http: HttpRequest) -> Response:
        prefix = _prefix_of(body.model, served.model, served.base_name)
        # tokenising a long prompt takes a while: off the event loop, which must keep answering
        request = await run_in_threadpool(_build_request, body, prefix, served)
        client = _Client(asyncio.Queue(), http, scheduler, request)
        loop = asyncio.get_running_loop()
        request.on_event = lambda event: loop.call_soon_threadsafe(client.queue.put_nowait, event)
        try:
            scheduler.submit(request)
        except QueueFull:
            message = "the server's queue is full; retry later"
            raise ApiError(429, message, "queue_full", headers={"Retry-After": _RETRY_AFTER_S}) from None
        except Stopped as err:
            raise ApiError(503, str(err)) from None
        if not body.stream:
            return await _collect(client, body.model)
        first = await client.next_event()
        if first is None:
            return Response(status_code=499)  # the client is gone; nobody reads this
        if first.kind == "error":  # nothing sent yet: answer with a proper status
            raise ApiError(first.status, first.text)
        return StreamingResponse(_sse(first, client, body.model), media_type="text/event-stream")


def _name_taken(name: str) -> ApiError:
    return ApiError(409, f"the name {name!r} is taken; unload it first or pick another", "name_taken")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request, err: ApiError) -> JSONResponse:
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def bad_body(_request, err: RequestValidationError) -> JSONResponse:
        problems = []
        for problem in err.errors():
            where = ".".join(str(p) for p in problem.get("loc", ()) if p != "body")
            problems.append(f"{where}: {problem.get('msg')}" if where else str(problem.get("msg")))
        param = next((str(p["loc"][-1]) for p in err.errors() if p.get("loc")), None)
        return ApiError(400, "invalid request: " + "; ".join(problems), "invalid_request", param).response()

    @app.exception_handler(HTTPException)
    async def http_error(_request, err: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(err.detail), "invalid_request_error"), status_code=err.status_code)


def _prefix_of(name: str, model: PrefixModel, base_name: str) -> str | None:
    """The prefix a model name stands for (None: the bare base model), or 404."""
    if name == base_name:
        return None
    if name not in model.prefixes:
        known = ", ".join([base_name, *sorted(model.prefixes.keys())])
        raise ApiError(404, f"the model {name!r} does not exist; served: {known}", "model_not_found", "model")
    return name


def _build_request(body: CompletionBody, prefix: str | None, served: Served) -> Request:
    """Check the parameters against this server and tokenize the prompts (400 on any problem)."""
    scheduler = served.scheduler
    unsupported = body.unsupported()
    if unsupported:
        raise ApiError(400, f"{unsupported} is not supported by this server", "unsupported", unsupported)
    prompts = body.prompt_list()
    if len(prompts) * body.n > scheduler.max_batch:
        raise ApiError(
            400,
            f"{len(prompts)} prompt(s) times n={body.n} is more than the {scheduler.max_batch} rows a batch "
            "holds; send fewer or start the server with a larger --max-batch",
            param="n",
        )
    engine = scheduler.engine
    _check_characters(prompts, served.max_prompt_chars, engine.window)
    ids = [list(served.tokenizer(p, add_special_tokens=True)["input_ids"]) for p in prompts]
    for tokens in ids:
        if not tokens:
            raise ApiError(400, "a prompt is empty (no tokens)", param="prompt")
        if max(tokens) >= engine.vocab:  # the tokenizer knows tokens the model has no embedding for
            message = f"the prompt holds token {max(tokens)}, beyond the model's {engine.vocab} embeddings"
            raise ApiError(400, message, param="prompt")
        try:
            needed = engine.positions_needed(tokens, prefix, body.max_tokens)
        except KeyError:  # unloaded since `_prefix_of` looked
            raise ApiError(404, f"the model {body.model!r} was unloaded", "model_not_found") from None
        if engine.window is not None and needed > engine.window:
            raise ApiError(
                400,
                f"this model's context is {engine.window} positions, but the prefix, the prompt "
                f"({len(tokens)} tokens) and max_tokens ({body.max_tokens}) need {needed}; "
                "shorten the prompt or lower max_tokens",
                "context_length_exceeded",
                "prompt",
            )
    sampling = Sampling(body.max_tokens, body.temperature, body.top_p, body.stop_tuple(), body.seed)
    request = Request(body.model, prefix, ids, body.n, sampling, on_event=lambda _event: None)
    limit = scheduler.max_cached_tokens
    if scheduler.scheduling == "continuous" and limit is not None and request.rows * request.reserved > limit:
        raise ApiError(
            400,
            f"{request.rows} row(s) of up to {request.reserved} tokens (prompt and max_tokens) need more "
            f"than the {limit} cached tokens this server holds; send fewer or shorter, or lower max_tokens",
            "context_length_exceeded",
            "max_tokens",
        )
    return request


def _check_characters(prompts: list[str], limit: int | None, window: int | None) -> None:
    """Refuse a prompt that cannot fit the context, before the tokenizer spends seconds on it."""
    for prompt in prompts:
        if limit is not None and len(prompt) > limit:
            raise ApiError(
                400,
                f"a prompt has {len(prompt)} characters, more than this model's context of {window} "
                f"positions can hold (at most {limit} characters are read); shorten the prompt",
                "context_length_exceeded",
                "prompt",
            )


@dataclass
class _Client:
    """A completion's handler side: the events the worker sends, and the connection they are for."""

    queue: asyncio.Queue[Event]
    http: HttpRequest
    scheduler: Scheduler
    request: Request
    checked: float = field(default_factory=time.monotonic)
    """When the connection was last looked at."""

    async def next_event(self) -> Event | None:
        """The request's next event; None (and the request cancelled) if the client disconnected.

        The connection is looked at every `_POLL_S` however fast events come: a busy batch keeps the
        queue full, and a non-streamed reply learns that its client left only by asking.
        """
        try:
            while True:
                if time.monotonic() - self.checked >= _POLL_S:
                    self.checked = time.monotonic()
                    if await self.http.is_disconnected():
                        self.scheduler.cancel(self.request)
                        return None
                try:
                    return await asyncio.wait_for(self.queue.get(), timeout=_POLL_S)
                except asyncio.TimeoutError:
                    continue
        except asyncio.CancelledError:
            self.scheduler.cancel(self.request)
            raise


async def _collect(client: _Client, name: str) -> Response:
    texts = [""] * client.request.rows
    reasons: list[str | None] = [None] * client.request.rows
    while True:
        event = await client.next_event()
        if event is None:
            return Response(status_code=499)
        if event.kind == "error":
            raise ApiError(event.status, event.text)
        if event.kind == "text":
            texts[event.choice] += event.text
        elif event.kind == "finish":
            reasons[event.choice] = event.finish_reason
        elif event.kind == "done":
            body = completion(new_id(), int(time.time()), name, texts, reasons, event.usage or {})
            return JSONResponse(body)


async def _sse(event: Event, client: _Client, name: str) -> AsyncIterator[str]:
    """Server-sent events as OpenAI streams them, ending with `data: [DONE]`."""
    request_id, created, done = new_id(), int(time.time()), False
    try:
        while True:
            if event.kind == "done":
                done = True
                yield "data: [DONE]\n\n"
                return
            if event.kind == "error":
                done = True
                yield f"data: {json.dumps(error_body(event.text, 'server_error'))}\n\n"
                return
            text, reason = (event.text, None) if event.kind == "text" else ("", event.finish_reason)
            yield f"data: {json.dumps(chunk(request_id, created, name, event.choice, text, reason))}\n\n"
            next_event = await client.next_event()
            if next_event is None:
                return
            event = next_event
    finally:
        if not done:  # the client went away mid-stream: its rows leave the batch
            client.scheduler.cancel(client.request)


async def _on_worker(scheduler: Scheduler, job) -> None:
    """Run `job` on the model's thread between batches; a PrefixTuneError becomes a 400."""
    try:
        future = scheduler.call(job)
    except Stopped as err:
        raise ApiError(503, str(err)) from None
    try:
        await asyncio.wrap_future(future)
    except Stopped as err:
        raise ApiError(503, str(err)) from None
    except PrefixTuneError as err:
        raise ApiError(400, str(err), "bad_prefix", "path") from None


def _load(model: PrefixModel, body: LoadBody, roots: tuple[Path, ...]) -> None:
    """Runs on the worker thread: find the folder under `roots`, then load it (nothing else changes)."""
    if body.name in model.prefixes:  # loaded by another request while this one waited
        raise _name_taken(body.name)
    try:
        folder = find_prefix_folder(body.path, roots)
    except NotAllowed as err:  # the same answer whatever the reason: the client may not probe files
        raise ApiError(400, str(err), "prefix_not_found", "path") from None
    try:
        load_for_serving(model, folder, body.name, check_weights=body.check_weights)
    except WeightsMismatch as err:
        fix = 'load it on a server of that base model, or send "check_weights": false to load it anyway'
        raise err.with_fix(fix) from None


def _unload(model: PrefixModel, name: str) -> None:
    if name not in model.prefixes:  # unloaded by another request while this one waited
        raise ApiError(404, f"the model {name!r} does not exist", "model_not_found", "model")
    model.remove(name)
