"""Prefixes for DeBERTa-v2/v3, whose disentangled attention does not use transformers' AttentionInterface.

`DisentangledSelfAttention` computes its scores itself: content-to-content `q k^T`, plus
relative-position terms (content-to-position `c2p`, position-to-content `p2c`) built from the
relative distance between each query and each key. `inject.py` cannot reach its keys, so here, and
only here, the prefix enters through hooks on the module's own parts:

- forward hooks on `key_proj` and `value_proj` put the prefix rows in front of the projected real
  tokens, (B, N, H*D) -> (B, P + N, H*D), so the rest of the module runs unchanged on P + N keys;
- a forward pre-hook on the attention module prepends the prefix columns to its mask (B, 1, N, P + N);
- `disentangled_attention_bias` (per instance) runs on the real keys only, and its (B*H, N, N) result
  is padded with zeros for the prefix columns.

Choice (P-Tuning v2 ships its own modified copy of the DeBERTa code; this is not a reproduction of
it): **prefix columns get no relative-position terms**, only the content score `q . P_k`. A prefix
vector has no position, so there is no distance to a query to look up; inventing one (e.g. "P tokens
before the first") would tie the learned prefix to the model's position buckets. With this choice a
masked-out prefix gives the bare model exactly, and the real tokens' c2p/p2c terms are untouched.
The scores keep DeBERTa's own scale, 1/sqrt(D * (1 + number of position terms)), for the prefix too.

Nothing here names a model class: the hooks attach to any module that has `query_proj`, `key_proj`,
`value_proj` linear layers, `num_attention_heads` and a `disentangled_attention_bias` method.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from prefixtune.engine.layout import SlotSpec

_HOOKS_ATTR = "_prefixtune_hooks"


def find_slots(model: nn.Module) -> list[tuple[nn.Module, SlotSpec]]:
    """Every disentangled attention module, in order, with shapes read off its projections."""
    found = []
    for name, module in model.named_modules():
        projections = [getattr(module, n, None) for n in ("query_proj", "key_proj", "value_proj")]
        bias = getattr(module, "disentangled_attention_bias", None)
        if callable(bias) and all(isinstance(p, nn.Linear) for p in projections):
            heads = module.num_attention_heads
            head_dim = module.key_proj.out_features // heads
            found.append((module, SlotSpec(name, kv_heads=heads, head_dim=head_dim, heads=heads)))
    return found


def bind(module: nn.Module, binding: Any) -> None:
    """Install the hooks that give `module` the prefix `binding` names (see the module docstring)."""
    state: dict[str, Any] = {"prefix": None, "in_bias": False, "key": None}
    handles = [
        module.register_forward_pre_hook(partial(_before, binding, state), with_kwargs=True),
        module.register_forward_hook(lambda *_: state.update(prefix=None, key=None)),
        module.key_proj.register_forward_hook(partial(_projected, binding, state, 0)),
        module.value_proj.register_forward_hook(partial(_projected, binding, state, 1)),
    ]
    own_bias = module.disentangled_attention_bias
    module.disentangled_attention_bias = partial(_bias_on_real_keys, own_bias, state)  # this instance only
    module.__dict__[_HOOKS_ATTR] = handles


def unbind(module: nn.Module) -> None:
    """Remove the hooks; the module runs exactly as before."""
    for handle in module.__dict__.pop(_HOOKS_ATTR, []):
        handle.remove()
    module.__dict__.pop("disentangled_attention_bias", None)  # the class's own method shows again


def _before(binding, state: dict, module: nn.Module, args: tuple, kwargs: dict):
    """Materialise this slot's prefix for the batch and widen the mask by its columns."""
    batch = binding.injector.current
    hidden = args[0] if args else kwargs["hidden_states"]
    rows, heads = hidden.shape[0], module.num_attention_heads
    slot = None if batch is None else batch.for_rows(rows).slot(binding.index)
    if slot is None:  # no prefix in this batch, or none covers this layer
        state["prefix"] = None
        return None
    keys, values, visible = slot
    length = keys.shape[2]
    flat = []
    for tensor in (keys, values):
        tensor = tensor.to(hidden.dtype).expand(rows, heads, -1, -1)  # (B, H, P, D)
        flat.append(tensor.transpose(1, 2).reshape(rows, length, -1))  # (B, P, H*D)
    state["prefix"] = tuple(flat)
    in_args = len(args) > 1
    mask = (args[1] if in_args else kwargs["attention_mask"]).bool()  # (B, 1, N, N)
    if visible is None:
        columns = torch.ones(1, 1, 1, length, dtype=torch.bool, device=mask.device)
    else:
        columns = visible[:, None, None, :].to(mask.device)  # (B, 1, 1, P)
    columns = columns.expand(mask.shape[0], 1, mask.shape[2], length)
    mask = torch.cat([columns, mask], dim=-1)  # (B, 1, N, P + N)
    if in_args:
        return (args[0], mask, *args[2:]), kwargs
    return args, {**kwargs, "attention_mask": mask}


def _projected(binding, state: dict, which: int, module: nn.Module, inputs: tuple, output: torch.Tensor):
    """(B, N, H*D) real keys (which=0) or values (1) -> (B, P + N, H*D) with the prefix in front."""
    if state["in_bias"]:  # the relative-position embeddings also go through key_proj: leave them alone
        return None
    injector = binding.injector
    if injector.recording is not None:  # text/scale initialisation: the real keys/values, (1, H, N, D)
        heads = binding.injector.slots[binding.index].kv_heads
        per_head = output.detach().view(*output.shape[:2], heads, -1).transpose(1, 2)
        if which == 0:
            state["key"] = per_head
        else:
            injector.recording[binding.index] = (state["key"], per_head)
    prefix = state["prefix"]
    if prefix is None:
        return None
    return torch.cat([prefix[which], output], dim=1)


def _bias_on_real_keys(original, state: dict, query_layer, key_layer, relative_pos, rel_embeddings, scale):
    """The relative-position terms for the real keys; zeros for the prefix columns (B*H, N, P + N)."""
    prefix = state["prefix"]
    if prefix is None:
        return original(query_layer, key_layer, relative_pos, rel_embeddings, scale)
    length = prefix[0].shape[1]
    state["in_bias"] = True
    try:
        score = original(query_layer, key_layer[:, length:], relative_pos, rel_embeddings, scale)
    finally:
        state["in_bias"] = False
    if not torch.is_tensor(score):  # no c2p/p2c terms configured: the module adds nothing
        return score
    return nn.functional.pad(score, (length, 0))
