"""Size limits checked before any costly work: the request body, and a prompt's characters.

A 100 MB body used to be parsed and tokenised on the event loop (two minutes, 7.5 GiB, `/health`
stalled meanwhile). The body is now counted as it arrives and refused past `--max-body-bytes`, and a
prompt too long in characters for the context window is refused before the tokenizer sees it.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prefixtune.serve.protocol import error_body

CHARS_PER_TOKEN = 32
"""No real text averages more characters per token than this (English BPE: about 4); a prompt
longer than context x this, or x the vocabulary's longest token if longer, cannot fit the window."""


def prompt_char_limit(tokenizer: Any, window: int | None) -> int | None:
    """The most characters a prompt may have for this context window; None: no window, no limit."""
    if window is None:
        return None
    longest = max((len(token) for token in tokenizer.get_vocab()), default=0)
    return window * max(CHARS_PER_TOKEN, longest)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 before the app reads it.

    The body is read here (at most `limit` bytes are held) and handed on to the app whole; a declared
    Content-Length over the limit is refused without reading anything.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await self._refuse(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left while sending: nobody to answer
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"the request body is over this server's limit of {self.limit} bytes (--max-body-bytes)"
        body = error_body(message, "invalid_request_error", "request_too_large")
        await JSONResponse(body, status_code=413)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the app the body read already, then passes on (e.g. the disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
