"""A real uvicorn server on 127.0.0.1 in a thread, serving a tiny random model with two prefixes."""

from __future__ import annotations

import torch
from synthetic import word_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from prefixtune import PrefixConfig, add_prefix
from prefixtune.engine.model import PrefixModel

BASE = "tiny"
WINDOW = 2048  # long enough for a stream that is still running when its client leaves


def tiny_bank(seed: int = 0) -> PrefixModel:
    """A tiny LLaMA (grouped-query attention) with prefixes "a" (4 vectors, positions kept) and "b"
    (2 vectors, folded MLP, shifted positions).

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
    model.add("b", PrefixConfig(length=2, reparam="mlp", mlp_hidden=16, positions="shifted", seed=2))
    return model.fold()


def solo_text(model: PrefixModel, tokenizer, prefix: str | None, prompt: str, max_tokens: int) -> str:
    """The greedy continuation of `prompt` run alone through `PrefixModel.generate`."""
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    rows = [prefix] if prefix is not None else [None]
    out = model.generate(ids, prefix=rows, max_new_tokens=max_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


class ServerThread:
    """`create_app` on the tiny bank, served on a free loopback port for the length of a `with` block.

    `reference` is an identical bank for the solo runs the answers are compared with: the served
    model belongs to the server's worker thread, and running it from the test at the same time would
    race with the worker over which prefixes the attention sees.
    """

    def __init__(self, seed: int = 0, **config) -> None:
        from prefixtune.serve import ServeConfig, create_app
        from prefixtune.serve.background import BackgroundServer

        self.model, self.reference, self.tokenizer = tiny_bank(seed), tiny_bank(seed), word_tokenizer()
        self.app = create_app(self.model, self.tokenizer, ServeConfig(**config), BASE)
        self.scheduler = self.app.state.scheduler
        self.background = BackgroundServer(self.app)
        self.url = self.background.url

    def __enter__(self) -> ServerThread:
        self.background.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.background.__exit__(*exc)
