"""The heart of prefixtune: every attention layer sees K' = [P_k; K], V' = [P_v; V].

Design (why not `past_key_values`, as PEFT does): the prefix is concatenated *inside* attention,
through one attention function registered with transformers' `AttentionInterface` under the name
`prefixtune`. Every model family that uses the interface calls it with the keys and values already
projected, rotated (RoPE) and merged with the KV cache, so

- the prefix never enters the cache: caches (dynamic or static), beam reordering and position
  counting see only real tokens, and real tokens keep positions 0..n-1 (see `PrefixConfig.positions`);
- each batch row can carry its own prefix, of its own length, or none: the mask gets one column per
  prefix vector, and a row's unused columns are masked out, so it gets exactly its solo result;
- sliding-window layers (Gemma, Mistral) keep the prefix visible to every query: it is the task's
  instruction, not an old token to forget. As P past tokens (PEFT) it would drop out of the window;
- nothing here knows a model family. Shapes (key/value heads, head size) are read off the tensors
  the attention modules pass in, during a probe forward (`probe`);
- encoder-decoder models have three kinds of slot, told apart by sequence lengths in the probe
  (`slot_kind`): the encoder's self-attention, the decoder's, and cross-attention, whose prefix is
  concatenated to the cached encoder keys on every call and so never stored. T5's relative position
  bias, handed over as `position_bias`, gets zero columns for the prefix (`_extend_position_bias`).

The alternative, wrapping each attention module, cannot reach the keys after RoPE without
re-implementing each family's attention; the interface hands them to us, so we use it. The function
then calls the model's own attention (`sdpa`, or the family's `eager_attention_forward`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from prefixtune.engine.errors import PrefixTuneError
from prefixtune.engine.layout import SlotSpec

IMPLEMENTATION = "prefixtune"
SUPPORTED_INNER = ("sdpa", "eager")
_BINDING_ATTR = "_prefixtune_binding"  # a plain attribute on the attention module (not a submodule)


@dataclass
class PrefixBatch:
    """The prefix keys/values each row of the current batch sees, computed once per forward.

    A batch dimension of 1 means every row shares one prefix (broadcast, no copy). Rows beyond the
    stored batch (beam search, several samples per prompt) are the stored rows repeated in order,
    which is how `generate` expands its inputs.
    """

    keys: list[torch.Tensor | None]
    """Per slot, (B or 1, H_kv, P, D); None where no row's prefix covers the slot (it runs bare)."""
    values: list[torch.Tensor | None]
    """Per slot, (B or 1, H_kv, P, D), None like `keys`."""
    visible: torch.Tensor | None = None
    """(B, P) bool: which prefix columns each row may attend to; None: all of them."""
    position_offsets: torch.Tensor | None = None
    """(B or 1,) long: how far each row's real tokens are shifted (`positions="shifted"`); None: no shift."""
    slot_visible: dict[int, torch.Tensor] = field(default_factory=dict)
    """Slot index -> (B, P) bool, replacing `visible` in that slot: a row whose prefix skips the slot
    (`PrefixConfig.layers`) gets zero columns there, masked out, while other rows see theirs."""
    seen_from: torch.Tensor | None = None
    """(B,) long: the first stream index (a column of the padded input, counting the cache) whose
    query sees the row's prefix columns: an infix's `infix_at`, 0 for a prefix. None: every query."""
    _expanded: dict[int, PrefixBatch] = field(default_factory=dict, repr=False)

    @property
    def rows(self) -> int:
        """The stored rows: 1 when every per-row field is shared (broadcast), else the batch's B."""
        return max(t.shape[0] for t in (self._any_key, *self._per_row()))

    def _per_row(self) -> list[torch.Tensor]:
        fields = (self.visible, self.position_offsets, self.seen_from, *self.slot_visible.values())
        return [t for t in fields if t is not None]

    @property
    def length(self) -> int:
        return self._any_key.shape[2]

    @property
    def _any_key(self) -> torch.Tensor:
        return next(k for k in self.keys if k is not None)

    def slot(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
        """Slot `index`'s (keys, values, visible) as described above, or None if it runs bare."""
        if self.keys[index] is None:
            return None
        return self.keys[index], self.values[index], self.slot_visible.get(index, self.visible)  # type: ignore[return-value]

    def for_rows(self, rows: int) -> PrefixBatch:
        """This batch as seen by `rows` query rows (a multiple of the stored rows)."""
        # One row stored for every field (one shared prefix): it broadcasts to any number of rows.
        if rows == self.rows or self.rows == 1:
            return self
        if rows % self.rows:
            raise RuntimeError(f"prefix batch of {self.rows} rows cannot serve {rows} query rows")
        if rows not in self._expanded:
            repeat = rows // self.rows

            def expand(tensor: torch.Tensor | None) -> torch.Tensor | None:
                if tensor is None or tensor.shape[0] == 1:  # shared by every row: broadcast
                    return tensor
                return tensor.repeat_interleave(repeat, dim=0)

            self._expanded[rows] = PrefixBatch(
                keys=[expand(k) for k in self.keys],
                values=[expand(v) for v in self.values],
                visible=expand(self.visible),
                position_offsets=expand(self.position_offsets),
                slot_visible={i: expand(v) for i, v in self.slot_visible.items()},  # type: ignore[misc]
                seen_from=expand(self.seen_from),
            )
        return self._expanded[rows]


@dataclass
class Injector:
    """Owns the state the attention function reads: the current batch's prefixes, or a recorder."""

    slots: list[SlotSpec] = field(default_factory=list)
    current: PrefixBatch | None = None
    """Set before each forward (and kept until the next one, so that gradient checkpointing
    recomputes the same forward during backward)."""
    recording: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
    """When a dict, each slot stores the real keys/values it computed (text initialisation, and an
    embedding prompt's run through the base)."""
    record_graph: bool = False
    """Keep the recorded keys/values in the autograd graph (an embedding prompt trains through them);
    False: detached (initialisation)."""
    modules: list[nn.Module] = field(default_factory=list, repr=False)
    query_start: int = 0
    """Stream index of the current forward's first query: the tokens already in the KV cache (set by
    `positions.PositionHook` before each forward; it decides what an infix's rows see)."""
    bidirectional: bool = False
    """True when no slot is causal (an encoder such as BERT, whose attention modules say
    `is_causal = False`): the model's own position ids are then left alone, as the prefix takes none."""


@dataclass(frozen=True)
class Binding:
    injector: Injector
    index: int
    inner: Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
    eager: bool


@dataclass
class Probe:
    """Put on every not yet bound module of a model while `probe` runs: records each attention call."""

    calls: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    """(module, query, key) per call, in call order."""


def prefix_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The attention function registered as `prefixtune`.

    Args:
        query: (B, H, Q, D) after projection and rotary embedding.
        key, value: (B, H_kv, K, D), real tokens only (cache already merged).
        attention_mask: None, bool (True = attend) or additive float, broadcastable to (B, 1, Q, K).
    """
    binding: Binding | Probe | None = module.__dict__.get(_BINDING_ATTR)
    if not isinstance(binding, Binding):
        return _unbound(binding, module, query, key, value, attention_mask, **kwargs)
    injector = binding.injector
    if injector.recording is not None:
        kept = (key, value) if injector.record_graph else (key.detach(), value.detach())
        injector.recording[binding.index] = kept
    causal = kwargs.get("is_causal", getattr(module, "is_causal", True))
    batch = injector.current
    batch = None if batch is None else batch.for_rows(query.shape[0])
    slot = None if batch is None else batch.slot(binding.index)
    if slot is not None:  # None: no row's prefix covers this layer, which runs bare
        prefix_key, prefix_value, visible = slot
        length = prefix_key.shape[2]
        prefix_key = prefix_key.to(key.dtype).expand(query.shape[0], -1, -1, -1)
        prefix_value = prefix_value.to(value.dtype).expand(query.shape[0], -1, -1, -1)
        sees = _queries_seeing(batch.seen_from, injector.query_start, query)  # type: ignore[union-attr]
        attention_mask = extend_mask(attention_mask, visible, query, key, length, causal, sees)
        kwargs = _extend_position_bias(kwargs, key.shape[2], length)
        key = torch.cat([prefix_key, key], dim=2)  # (B, H_kv, P + K, D)
        value = torch.cat([prefix_value, value], dim=2)  # (B, H_kv, P + K, D)
    if binding.eager:
        attention_mask = _as_additive(attention_mask, query, key, causal)
    return binding.inner(module, query, key, value, attention_mask, **kwargs)


def extend_mask(
    mask: torch.Tensor | None,
    visible: torch.Tensor | None,
    query: torch.Tensor,
    key: torch.Tensor,
    prefix_len: int,
    causal: bool,
    sees: torch.Tensor | None = None,
) -> torch.Tensor:
    """Prepend `prefix_len` columns to the mask: every query sees the prefix its row may see.

    Args:
        mask: None, bool or additive float, broadcastable to (B, 1, Q, K).
        visible: (B, P) bool, or None when every prefix column is visible to every row.
        sees: (B, Q) bool, which queries see their row's prefix at all (an infix); None: all.
    Returns: a mask of the same kind, (B or 1, 1 or H, Q, P + K).
    """
    q_len, k_len = query.shape[2], key.shape[2]
    if mask is None:
        mask = _default_mask(q_len, k_len, causal, query.device)  # (1, 1, Q, K) bool
    mask = mask[..., -q_len:, -k_len:] if mask.shape[-1] >= k_len else mask
    if visible is None:
        prefix_cols = torch.ones(1, 1, 1, prefix_len, dtype=torch.bool, device=query.device)
    else:
        prefix_cols = visible[:, None, None, :].to(query.device)  # (B, 1, 1, P)
    if sees is not None:
        prefix_cols = prefix_cols & sees[:, None, :, None]  # (B, 1, Q, P)
    if mask.dtype != torch.bool:  # additive float mask: 0 where visible, the dtype's minimum elsewhere
        prefix_cols = torch.zeros((), dtype=mask.dtype, device=mask.device).masked_fill(
            ~prefix_cols, torch.finfo(mask.dtype).min
        )
    rows = max(mask.shape[0], prefix_cols.shape[0])
    mask = mask.expand(rows, -1, q_len, -1)
    prefix_cols = prefix_cols.expand(rows, mask.shape[1], q_len, prefix_len)
    return torch.cat([prefix_cols, mask], dim=-1)


def _queries_seeing(seen_from: torch.Tensor | None, start: int, query: torch.Tensor) -> torch.Tensor | None:
    """(B, Q) bool: whether each query, at stream index `start + i`, is past its row's `seen_from`.

    The stream index comes from the cache's length, not from the keys' count: a static cache's keys
    include its empty slots.
    """
    if seen_from is None:
        return None
    stream = torch.arange(start, start + query.shape[2], device=query.device)  # (Q,)
    return stream[None, :] >= seen_from[:, None].to(query.device)  # (B, Q)


def _extend_position_bias(kwargs: dict, k_len: int, prefix_len: int) -> dict:
    """Give the prefix columns a zero additive position bias (T5, mT5 and the families sharing its code).

    These families add a relative position bias (1 or B, H, Q, K) to the scores and hand it to the
    attention function as the `position_bias` keyword, so it is extended here with the mask, in no
    family-specific code. A prefix vector has no position (as with `positions="keep"`): its score is
    the plain q.k, the same for every query whatever its position; real tokens keep their bias.
    Departs from PEFT, whose prefix enters T5 as past keys and so gets the bias of a distance.
    """
    bias = kwargs.get("position_bias")
    if not isinstance(bias, torch.Tensor) or bias.shape[-1] != k_len:
        return kwargs
    zeros = bias.new_zeros(*bias.shape[:-1], prefix_len)  # (1 or B, H, Q, P)
    return {**kwargs, "position_bias": torch.cat([zeros, bias], dim=-1)}  # (1 or B, H, Q, P + K)


def _default_mask(q_len: int, k_len: int, causal: bool, device: torch.device) -> torch.Tensor:
    """The mask a None stands for: transformers passes None only where SDPA's own `is_causal` is right.

    `is_causal` aligns the causal triangle top-left (query i sees keys 0..i). That matters when K > Q
    on a fresh static cache, whose keys beyond the prompt are empty slots, not past tokens.
    """
    if not causal or q_len == 1:
        return torch.ones(1, 1, q_len, k_len, dtype=torch.bool, device=device)
    query_pos = torch.arange(q_len, device=device)[:, None]  # (Q, 1)
    return (torch.arange(k_len, device=device)[None, :] <= query_pos)[None, None]  # (1, 1, Q, K)


def _as_additive(
    mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor, causal: bool
) -> torch.Tensor | None:
    """Eager attention adds its mask to the scores and treats None as 'attend everywhere'."""
    if mask is None:
        if not causal or query.shape[2] == 1:
            return None
        mask = _default_mask(query.shape[2], key.shape[2], causal, query.device)
    if mask.dtype != torch.bool:
        return mask
    zeros = torch.zeros(mask.shape, dtype=query.dtype, device=mask.device)
    return zeros.masked_fill(~mask, torch.finfo(query.dtype).min)


def _unbound(probe: Probe | None, module, query, key, value, attention_mask, **kwargs):
    """A module that calls `prefixtune` without a binding: only expected during `probe`."""
    if probe is None:
        raise RuntimeError(
            f"{type(module).__name__} uses the prefixtune attention but is not bound to a PrefixModel"
        )
    probe.calls.append((module, query, key))
    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)


def register() -> None:
    """Make `prefixtune` a known attention implementation (idempotent).

    Masks are built as for SDPA (bool, or None when plainly causal); `prefix_attention` turns them
    into what the inner implementation wants.
    """
    ALL_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, prefix_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)


def inner_attention(module: nn.Module, implementation: str) -> Callable:
    """The attention the model would have run: SDPA, or its own family's eager function."""
    if implementation == "sdpa":
        return ALL_ATTENTION_FUNCTIONS["sdpa"]
    family_eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if family_eager is None:
        raise PrefixTuneError(
            f"{type(module).__name__} has no eager_attention_forward; "
            "load the model with attn_implementation='sdpa'"
        )
    return family_eager


def attach(model: nn.Module, probe_inputs: dict[str, torch.Tensor]) -> Injector:
    """Switch `model` to the prefixtune attention, find its attention slots by a probe forward, bind them.

    Args:
        probe_inputs: a tiny valid input for the model (a couple of token ids).
    """
    implementation = model.config._attn_implementation
    if implementation == IMPLEMENTATION:
        raise PrefixTuneError("this model already carries prefixes; pass the PrefixModel, not its base")
    if implementation not in SUPPORTED_INNER:
        raise PrefixTuneError(
            f"attention implementation {implementation!r} is not supported; "
            f"load the model with attn_implementation='sdpa' (or 'eager')"
        )
    register()
    model.set_attn_implementation(IMPLEMENTATION)
    try:
        found = probe(model, probe_inputs)
    except Exception:
        model.set_attn_implementation(implementation)
        raise
    if not found:
        model.set_attn_implementation(implementation)
        return _attach_disentangled(model, implementation)
    injector = Injector(slots=[spec for _, spec in found], modules=[m for m, _ in found])
    injector.bidirectional = not any(getattr(m, "is_causal", True) for m in injector.modules)
    injector.original_implementation = implementation  # type: ignore[attr-defined]
    for index, (module, _) in enumerate(found):
        binding = Binding(injector, index, inner_attention(module, implementation), implementation == "eager")
        module.__dict__[_BINDING_ATTR] = binding
    return injector


def _attach_disentangled(model: nn.Module, implementation: str) -> Injector:
    """The one family outside the AttentionInterface that prefixtune supports: DeBERTa-v2/v3, through
    hooks on its attention's own projections (see `prefixtune.engine.disentangled` for how and why)."""
    from prefixtune.engine import disentangled

    found = disentangled.find_slots(model)
    if not found:
        raise PrefixTuneError(
            f"{type(model).__name__} does not route attention through transformers' AttentionInterface, "
            "so prefixtune cannot reach its keys and values"
        )
    if any(_BINDING_ATTR in module.__dict__ for module, _ in found):
        raise PrefixTuneError("this model already carries prefixes; pass the PrefixModel, not its base")
    # DeBERTa is an encoder: bidirectional, its position ids its own
    injector = Injector(slots=[s for _, s in found], modules=[m for m, _ in found], bidirectional=True)
    injector.original_implementation = implementation  # type: ignore[attr-defined]
    for index, (module, _) in enumerate(found):
        binding = Binding(injector, index, _no_inner, eager=False)
        module.__dict__[_BINDING_ATTR] = binding
        disentangled.bind(module, binding)
    return injector


def _no_inner(*args, **kwargs):
    raise RuntimeError("a disentangled-attention slot has no inner attention function")


def detach(model: nn.Module, injector: Injector) -> None:
    """Undo `attach`: the model runs exactly as before."""
    from prefixtune.engine import disentangled

    for module in injector.modules:
        module.__dict__.pop(_BINDING_ATTR, None)
        disentangled.unbind(module)
    model.set_attn_implementation(injector.original_implementation)  # type: ignore[attr-defined]


def probe(model: nn.Module, probe_inputs: dict[str, torch.Tensor]) -> list[tuple[nn.Module, SlotSpec]]:
    """Run one tiny forward and record, in call order, each attention module and its tensor shapes."""
    names = {id(m): n for n, m in model.named_modules()}
    recorder = Probe()
    unbound = [m for m in model.modules() if _BINDING_ATTR not in m.__dict__]
    for module in unbound:  # the attention function finds the recorder where a binding would be
        module.__dict__[_BINDING_ATTR] = recorder
    try:
        with torch.no_grad():
            model(**probe_inputs, use_cache=False)
    finally:
        for module in unbound:
            module.__dict__.pop(_BINDING_ATTR, None)
    found: dict[int, tuple[nn.Module, SlotSpec]] = {}
    for module, query, key in recorder.calls:
        if id(module) not in found:  # a module reused across layers (weight sharing) gets one slot
            spec = SlotSpec(
                names[id(module)],
                kv_heads=key.shape[1],
                head_dim=key.shape[3],
                heads=query.shape[1],
                kind=slot_kind(names[id(module)], query, key, probe_inputs),
            )
            found[id(module)] = (module, spec)
    return list(found.values())


def slot_kind(
    name: str, query: torch.Tensor, key: torch.Tensor, probe_inputs: dict[str, torch.Tensor]
) -> str:
    """Whether a probed attention call is `self`, `decoder` or `cross` attention (see `SlotSpec.kind`).

    Read off the sequence lengths, not off module attributes: the probe gives an encoder-decoder
    model an encoder input and a decoder input of different lengths (`wrap.probe_inputs`), so the
    query comes from the decoder exactly when its length is the decoder's, and the keys from the
    encoder exactly when theirs is the encoder's. This holds for any family (BART's modules know
    `is_decoder` but not whether they are cross-attention; T5's only through its config), and it
    needs nothing a family might name differently.
    """
    decoder = probe_inputs.get("decoder_input_ids")
    if decoder is None:
        return "self"
    source_len, target_len = probe_inputs["input_ids"].shape[1], decoder.shape[1]
    lengths = (query.shape[2], key.shape[2])
    kinds = {
        (source_len, source_len): "self",
        (target_len, target_len): "decoder",
        (target_len, source_len): "cross",
    }
    if source_len == target_len or lengths not in kinds:
        raise PrefixTuneError(
            f"cannot tell what {name} attends over (queries {lengths[0]}, keys {lengths[1]} long, "
            f"encoder input {source_len}, decoder input {target_len}); this model is not supported"
        )
    return kinds[lengths]
