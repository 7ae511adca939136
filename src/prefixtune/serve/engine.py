"""Step-wise batched decoding over a prefix bank: one KV cache, each row with its own prefix.

`PrefixModel.generate` already runs a batch whose rows name different prefixes; the server decodes
step by step instead, because it must stream text as it comes, stop each row at its own stop
strings, sample each row with its own temperature, top-p and random generator, and drop a row
whose client went away. The rows share one forward per step: the frozen model is run once for the
whole batch, whatever mix of prefixes it holds.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from prefixtune.engine.compat import cache_kwargs, cache_out
from prefixtune.engine.model import PrefixModel


@dataclass(frozen=True)
class Sampling:
    """How one request's choices are generated (the OpenAI completion parameters)."""

    max_tokens: int = 16
    """New tokens at most per choice."""
    temperature: float = 1.0
    """0 picks the most likely token (greedy); above 0 samples from softmax(logits / temperature)."""
    top_p: float = 1.0
    """Nucleus sampling: draw only from the smallest set of tokens whose probability reaches top_p."""
    stop: tuple[str, ...] = ()
    """Texts that end a choice; the stop text itself is not returned."""
    seed: int | None = None
    """Seed of the request's own random generator; None draws one at random."""


@dataclass(eq=False)
class Row:
    """One choice being generated: a prompt, its prefix and what it has produced so far."""

    prompt: list[int]
    prefix: str | None
    sampling: Sampling
    generator: torch.Generator | None
    on_text: Callable[[Row, str], None]
    """Called with each new piece of text (never a piece that may still become a stop string)."""
    on_finish: Callable[[Row], None]
    """Called once, when `finish` is set ("stop" or "length")."""
    on_error: Callable[[Row, Exception], None] = lambda row, err: None
    """Called once if choosing or handing out this row's next token raised; the row then leaves the
    batch with `finish` "error" and the other rows go on."""
    is_cancelled: Callable[[], bool] = lambda: False
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0
    """Characters of `text` already handed to `on_text`."""
    finish: str | None = None


class Engine:
    """Decodes batches of rows on a `PrefixModel`; call it from one thread only."""

    def __init__(self, model: PrefixModel, tokenizer) -> None:
        self.model = model
        self.tokenizer = tokenizer
        eos = model.base.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.window: int | None = getattr(model.config, "max_position_embeddings", None)
        self.vocab: int = model.base.get_input_embeddings().num_embeddings
        """Token ids the model embeds; a tokenizer with added tokens may make larger ones."""
        # Logits for the last position only: a prompt's full (T, vocab) logits are costly on a 49k vocab.
        accepts = inspect.signature(model.base.forward).parameters
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in accepts else {}

    def positions_needed(self, prompt: Sequence[int], prefix: str | None, max_tokens: int) -> int:
        """Positions a request occupies: prefix, prompt and new tokens (compare with `window`)."""
        length = self.model.prefixes[prefix].length if prefix is not None else 0
        return length + len(prompt) + max_tokens

    @torch.no_grad()
    def run(self, rows: list[Row]) -> None:
        """Decode `rows` together until each one has finished or was cancelled."""
        device = self.model.device
        ids, mask = left_pad([r.prompt for r in rows], self.pad_id, device)  # (B, T), (B, T)
        live = list(rows)
        # an infix is seen from the prompts' last column on (the cache keeps the column numbers)
        infix_at = torch.tensor(ids.shape[1] - 1, device=device)
        self.model.injector.current = self.model.prefix_batch([r.prefix for r in live], len(live), infix_at)
        try:
            self._decode(live, ids, mask, infix_at)
        finally:  # also after a failed forward: no stale prefix batch stays set on the model
            self.model.injector.current = None

    def _decode(self, live: list[Row], ids: torch.Tensor, mask: torch.Tensor, infix_at: torch.Tensor) -> None:
        """The step loop of `run`: one forward for all live rows, then each row's next token."""
        device, cache = self.model.device, None
        while live:
            logits, cache = self.forward(ids, mask, cache)
            for i, row in enumerate(live):
                self.step_row(row, logits[i])
            keep = [i for i, row in enumerate(live) if running(row)]
            if not keep:
                break
            if len(keep) < len(live):  # finished or abandoned rows leave the batch and the cache
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask = mask.index_select(0, index)
                live = [live[i] for i in keep]
                self.model.injector.current = self.model.prefix_batch(
                    [r.prefix for r in live], len(live), infix_at
                )
            ids = torch.tensor([[row.tokens[-1]] for row in live], device=device)  # (B, 1)
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)  # (B, T + 1)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, cache) -> tuple[torch.Tensor, object]:
        """One forward with the prefixes already set on the injector: last-position logits and the cache.

        Args:
            ids: (B, Q) new tokens; mask: (B, K + Q), 0 on left padding; cache: None or K past columns.
        Returns: (B, V) float logits and the updated cache.
        """
        # Positions counted from each row's first real token, given explicitly: left to itself the
        # model numbers a padded row from its first pad, and once no row of the batch has a prefix
        # (the prefix hook then stays out) later steps would be numbered unlike the earlier ones.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]  # (B, Q)
        out = self.model.base(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **cache_kwargs(cache),
            **self._last_only,
        )
        return out.logits[:, -1].float(), cache_out(out)  # (B, V)

    def step_row(self, row: Row, logits: torch.Tensor) -> None:
        """Give `row` its next token; whatever this raises fails `row` alone, never its neighbours."""
        try:
            self._advance(row, self._choose(row, logits))
        except Exception as err:  # its numerics, its stop texts, or a callback of its client
            row.finish = "error"
            row.on_error(row, err)

    def _choose(self, row: Row, logits: torch.Tensor) -> int:
        """The next token for `row` from its (V,) logits."""
        if torch.isnan(logits).any() or not torch.isfinite(logits.max()):  # -inf alone is a banned token
            raise ValueError("the model's logits for this row hold NaN or infinity")
        if row.sampling.temperature == 0:
            return int(logits.argmax())
        probs = probabilities(logits, row.sampling.temperature, row.sampling.top_p)
        return int(torch.multinomial(probs, 1, generator=row.generator))

    def _advance(self, row: Row, token: int) -> None:
        """Append `token` to `row`, cut at a stop string, finish the row if it is done, send new text."""
        if token in self.eos:
            row.finish = "stop"
        else:
            row.tokens.append(token)
            row.text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
            cut = min((i for i in (row.text.find(s) for s in row.sampling.stop) if i >= 0), default=-1)
            if cut >= 0:
                row.text, row.finish = row.text[:cut], "stop"
            elif len(row.tokens) >= row.sampling.max_tokens:
                row.finish = "length"
        ready = len(row.text) if row.finish else _safe_length(row.text, row.sampling.stop)
        if ready > row.sent:
            row.on_text(row, row.text[row.sent : ready])
            row.sent = ready
        if row.finish:
            row.on_finish(row)


def running(row: Row) -> bool:
    """Whether `row` stays for another step: not finished, and its client still there."""
    return row.finish is None and not row.is_cancelled()


def probabilities(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """softmax(logits / temperature) over the nucleus: the most likely tokens whose mass reaches top_p.

    Args:
        logits: (V,), finite or -inf. Returns (V,), zero outside the nucleus (multinomial renormalises).
    """
    # The largest logit is subtracted before dividing, so that a tiny temperature (the schema allows
    # 5e-324) sends the others to -inf and the best to 0 instead of overflowing to inf - inf = NaN:
    # the distribution tends to greedy's, as it should. Float64 keeps small temperatures exact longer.
    shifted = logits.double() - logits.max().double()  # (V,), <= 0
    probs = torch.softmax(shifted / temperature, dim=-1).to(logits.dtype)
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(descending=True)
    # keep a token while the mass before it is below top_p: the most likely one always stays
    dropped = sorted_probs.cumsum(0) - sorted_probs >= top_p
    return probs.scatter(0, order, sorted_probs.masked_fill(dropped, 0.0))


def _safe_length(text: str, stop: tuple[str, ...]) -> int:
    """How much of an unfinished row's text can be sent: not a tail that may begin a stop string,
    nor a half-decoded character (the tokenizer shows an incomplete UTF-8 sequence as U+FFFD)."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    if stop:
        end = min(end, len(text) - max(len(s) for s in stop) + 1)
    return max(end, 0)


def left_pad(
    prompts: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, (B, T) each, every prompt right-aligned so that all continue together."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[i, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)
