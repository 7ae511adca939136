"""A real uvicorn server on 127.0.0.1 in a thread, serving a tiny random model with two prefixes."""

from __future__ import annotations

import socket
import threading
import time

import torch
from synthetic import word_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from prefixtune import PrefixConfig, add_prefix
from prefixtune.model import PrefixModel

BASE = "tiny"
WINDOW = 2048  # long enough for a stream that is still running when its client leaves


def tiny_bank(seed: int = 0) -> PrefixModel:
    """A tiny LLaMA (grouped-query attention) with prefixes "a" (4 vectors) and "b" (2, folded MLP).

    It has no end-of-sequence token, so every choice runs to max_tokens unless a stop text ends it.
    """
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=WINDOW,
        initializer_range=0.15,
        attn_implementation="sdpa",
    )
    base = LlamaForCausalLM(config).eval()
    base.generation_config.pad_token_id = 0
    base.generation_config.eos_token_id = None
    model = add_prefix(base, PrefixConfig(length=4, reparam="flat", seed=1), name="a")
    model.add("b", PrefixConfig(length=2, reparam="mlp", mlp_hidden=16, seed=2))
    return model.fold()


def solo_text(model: PrefixModel, tokenizer, prefix: str | None, prompt: str, max_tokens: int) -> str:
    """The greedy continuation of `prompt` run alone through `PrefixModel.generate`."""
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    rows = [prefix] if prefix is not None else [None]
    out = model.generate(ids, prefix=rows, max_new_tokens=max_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


class ServerThread:
    """`create_app` under uvicorn on a free loopback port, started and stopped within bounded waits."""

    def __init__(self, model: PrefixModel, **config) -> None:
        import uvicorn

        from prefixtune.serve import ServeConfig, create_app

        self.model, self.tokenizer = model, word_tokenizer()
        app = create_app(model, self.tokenizer, ServeConfig(**config), BASE)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.socket.close()
