"""The OpenAI completions protocol: the request body, the response shapes and the error body."""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from prefixtune.serve.config import name_problem

MAX_STOPS = 4  # as in OpenAI's API
MAX_STOP_CHARS = 1024
"""Longest stop text: each step searches the text for every stop and holds back a stop's length."""
SEED_RANGE = (-(2**63), 2**63)
"""A seed is a signed 64-bit integer, as OpenAI documents it (torch's generator takes any of them)."""


class CompletionBody(BaseModel):
    """The body of `POST /v1/completions`. Fields OpenAI defines and this server does not implement
    are refused rather than ignored, so that no client silently gets something else than it asked for."""

    model_config = ConfigDict(extra="ignore")

    model: str
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1, lt=2**31)
    temperature: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, lt=2**31)
    stream: bool = False
    seed: int | None = Field(None, ge=SEED_RANGE[0], lt=SEED_RANGE[1])
    logprobs: int | None = None
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompts_not_empty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("prompt is an empty list; give a string or a list of strings")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("a stop sequence is empty")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop sequence is longer than {MAX_STOP_CHARS} characters")
        return value

    def unsupported(self) -> str | None:
        """The first OpenAI option given that this server does not implement, or None."""
        if self.logprobs is not None:
            return "logprobs"
        if self.echo:
            return "echo"
        if self.best_of not in (None, 1):
            return "best_of"
        if self.suffix:
            return "suffix"
        return None

    def prompt_list(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def stop_tuple(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class LoadBody(BaseModel):
    """The body of `POST /v1/prefixes`: load the prefix folder `path` under the name `name`."""

    model_config = ConfigDict(extra="forbid")

    name: str
    """Letters, digits, `.`, `_` and `-`, starting with a letter or digit; 64 characters at most."""
    path: str = Field(min_length=1, max_length=4096)
    """A prefix folder under one of the server's `--prefix-root` folders (absolute, or relative to a root)."""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        problem = name_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    check_weights: bool = True
    """False: load it even if the served base model's weights differ from those it was trained on."""


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict:
    """OpenAI's error shape, which its clients turn into typed exceptions."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def new_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


def completion(
    request_id: str,
    created: int,
    model: str,
    texts: list[str],
    reasons: list[str | None],
    usage: dict[str, int],
) -> dict[str, Any]:
    choices = [
        {"text": text, "index": i, "logprobs": None, "finish_reason": reason}
        for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))
    ]
    return {
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage,
    }


def chunk(request_id: str, created: int, model: str, index: int, text: str, reason: str | None) -> dict:
    """One server-sent event of a streamed completion."""
    choice = {"text": text, "index": index, "logprobs": None, "finish_reason": reason}
    return {"id": request_id, "object": "text_completion", "created": created, "model": model,
            "choices": [choice]}  # fmt: skip


def model_card(name: str, parent: str | None, created: int | None = None) -> dict[str, Any]:
    """An entry of `GET /v1/models`: the base model, or a prefix whose `parent` is the base."""
    return {
        "id": name,
        "object": "model",
        "created": created if created is not None else int(time.time()),
        "owned_by": "prefixtune",
        "parent": parent,
    }
