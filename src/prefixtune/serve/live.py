"""Continuous batching's decode state: rows join and leave between steps, sharing one KV cache.

The live rows share one left-padded DynamicCache, (B, H_kv, W, D) per layer, and one (B, W)
attention mask that is 0 on each row's padding. A joining group of rows is prefilled on its own
(its own cache, its own prefix batch), takes its first tokens, and is then merged in: both caches
are padded on the left to a common width (zero keys and values, mask 0) and concatenated along the
batch. Rows that finish leave through `batch_select_indices`, and columns that have become padding
for every row are cut from the left, so the cache is as wide as its longest live row.

Why each row still gets its solo result: attention never sees a pad (mask 0); positions come from
each row's own mask (`Engine.forward` counts from the first real token), so padding shifts no
row's positions; the prefix batch is rebuilt for the new row set, so each row keeps its prefix, its
length and its position convention (`shifted` offsets live in the prefix batch). An infix is seen
from the prompt's last column on: during the prefill that is the joiners' own last column, and
every later query is a decode step past it, so decode steps pass `infix_at` 0 (every query sees it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, DynamicLayer

from prefixtune.serve.engine import Engine, Row, left_pad, running


class LiveBatch:
    """The rows decoding now and their cache; driven by one thread (the scheduler's worker)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.rows: list[Row] = []
        self.cache = None
        self.mask: torch.Tensor | None = None
        """(B, W) long, 1 on real tokens."""

    @property
    def width(self) -> int:
        """Columns the cache holds per row (its longest live row, prefix not counted)."""
        return 0 if self.mask is None else self.mask.shape[1]

    @torch.no_grad()
    def join(self, rows: list[Row]) -> None:
        """Prefill `rows` together, give each its first token, and add those still running to the batch."""
        engine, model = self.engine, self.engine.model
        ids, mask = left_pad([r.prompt for r in rows], engine.pad_id, model.device)  # (J, T), (J, T)
        infix_at = torch.tensor(ids.shape[1] - 1, device=model.device)  # the prompts' last column
        model.injector.current = model.prefix_batch([r.prefix for r in rows], len(rows), infix_at)
        try:
            logits, cache = engine.forward(ids, mask, None)
        finally:  # the live rows' prefixes again, whatever happened
            self._set_prefixes()
        for i, row in enumerate(rows):
            engine.step_row(row, logits[i])
        keep = [i for i, row in enumerate(rows) if running(row)]
        if keep:
            cache, mask = _select(cache, mask, keep)
            self._merge([rows[i] for i in keep], cache, mask)

    @torch.no_grad()
    def step(self) -> None:
        """One decode forward for every live row; finished or abandoned rows then leave."""
        if not self.rows:
            return
        engine = self.engine
        ids = torch.tensor([[row.tokens[-1]] for row in self.rows], device=engine.model.device)  # (B, 1)
        mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)  # (B, W + 1)
        logits, self.cache = engine.forward(ids, mask, self.cache)
        self.mask = mask
        for i, row in enumerate(self.rows):
            engine.step_row(row, logits[i])
        self.prune()

    def prune(self) -> None:
        """Drop rows that finished or whose client left, and the columns only they still used."""
        keep = [i for i, row in enumerate(self.rows) if running(row)]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.clear()
            return
        self.cache, self.mask = _select(self.cache, self.mask, keep)
        self.rows = [self.rows[i] for i in keep]
        first = int(self.mask.any(0).long().argmax())  # the first column some row still uses
        if first:
            _trim_left(self.cache, first)
            self.mask = self.mask[:, first:]
        self._set_prefixes()

    def clear(self) -> None:
        """Forget every row and the cache (after a failed forward, or when the last row left)."""
        self.rows, self.cache, self.mask = [], None, None
        self.engine.model.injector.current = None

    def _merge(self, rows: list[Row], cache, mask: torch.Tensor) -> None:
        """Append `rows` (with their own cache and (J, T) mask) to the live batch."""
        if not self.rows:
            self.rows, self.cache, self.mask = rows, cache, mask
        else:
            width = max(self.width, mask.shape[1])
            for mine, theirs in zip(_layers(self.cache), _layers(cache), strict=True):
                mine.keys = torch.cat([_pad_left(mine.keys, width), _pad_left(theirs.keys, width)])
                mine.values = torch.cat([_pad_left(mine.values, width), _pad_left(theirs.values, width)])
            self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(mask, width)])  # (B + J, W)
            self.rows = [*self.rows, *rows]
        self._set_prefixes()

    def _set_prefixes(self) -> None:
        model = self.engine.model
        if not self.rows:
            model.injector.current = None
            return
        # decode steps only: every query is past every infix row's prompt, so all of them see the infix
        infix_at = torch.tensor(0, device=model.device)
        model.injector.current = model.prefix_batch([r.prefix for r in self.rows], len(self.rows), infix_at)


def mergeable(config) -> bool:
    """Whether the caches a model of `config` builds can be merged and trimmed by row: full-attention
    layers only (the server falls back to whole-batch scheduling otherwise)."""
    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=config).layers)


def _layers(cache) -> list[DynamicLayer]:
    """The cache's layers, each a plain DynamicLayer: the only kind merged and trimmed here (a
    sliding-window layer keeps a window of its own that left padding would shift)."""
    layers = list(cache.layers)
    for layer in layers:
        if type(layer) is not DynamicLayer:
            raise NotImplementedError(
                f"continuous batching merges only full-attention caches, not {type(layer).__name__}; "
                "serve this model with --scheduling batch"
            )
    return layers


def _select(cache, mask: torch.Tensor, keep: list[int]):
    """The cache and (B, W) mask of rows `keep` only."""
    if len(keep) == mask.shape[0]:
        return cache, mask
    index = torch.tensor(keep, device=mask.device)
    cache.batch_select_indices(index)
    return cache, mask.index_select(0, index)


def _trim_left(cache, columns: int) -> None:
    for layer in _layers(cache):
        layer.keys = layer.keys[:, :, columns:]  # (B, H_kv, W - columns, D)
        layer.values = layer.values[:, :, columns:]


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zeros on the left of the sequence axis up to `width`: dim 2 of (B, H, W, D), dim 1 of a (B, W) mask."""
    missing = width - (tensor.shape[1] if tensor.dim() == 2 else tensor.shape[2])
    if missing == 0:
        return tensor
    if tensor.dim() == 2:
        return F.pad(tensor, (missing, 0))  # (B, width)
    return F.pad(tensor, (0, 0, missing, 0))  # (B, H, width, D)
