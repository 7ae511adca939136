"""Serving many prefixes on one frozen model behind an OpenAI-compatible HTTP API.

Needs the `serve` extra (`pip install 'prefixtune[serve]'`: FastAPI and uvicorn). The core library
imports nothing from here.

- `create_app(model, tokenizer, ServeConfig(), base_name)`: the FastAPI app.
- `Engine`, `LiveBatch`, `Scheduler`: step-wise batched decoding, the rows of continuous batching
  (they join and leave between steps), and the worker; usable without HTTP.
"""

from __future__ import annotations

from prefixtune.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str):
    if name == "create_app":  # FastAPI is imported only when the app is asked for
        from prefixtune.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'prefixtune.serve' has no attribute {name!r}")
