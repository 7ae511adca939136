"""The training loss, computing vocabulary logits only where a target token is predicted.

The vocabulary projection is the largest single matrix product in a small model's step (SmolLM2:
576 x 49,152 per position); prompt and padding positions take no loss, so their logits are never
computed. Two steps get there:

1. `logits_to_keep` (a 1-D tensor of positions, shared by the batch's rows) trims the columns that
   no row needs, inside the model.
2. A forward pre-hook on the output layer gathers, from what is left, only each row's own target
   positions, so the projection sees (1, N, H) with N the batch's target token count. Rows of
   different prompt lengths would otherwise pay for each other's prompts. The hook changes only the
   input of the output layer, so whatever a model family does after it (Gemma's logit soft-capping)
   still applies.
3. The same gathering is done for the feed-forward block of the model's last layer: its output
   reaches nothing but the output layer, so at positions without a target it is wasted work. The
   last layer's attention still runs everywhere (keys and values of every position are needed by
   the targets' queries), but the block after it sees only (1, N, H), and zeros are scattered back
   elsewhere. On SmolLM2 that saves about 1.3 % of a step; a family whose layer keeps its feed-forward
   under another name than `mlp` or `feed_forward` simply runs it in full.
"""

from __future__ import annotations

import torch
from torch.nn import functional

from prefixtune.train.encode import IGNORE


def target_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over target tokens, and how many there were.

    Args:
        model: a PrefixModel (or a Hugging Face causal LM).
        batch: input_ids, attention_mask, labels, each (B, L); labels are IGNORE off-target.
    """
    next_labels = batch["labels"][:, 1:]  # (B, L-1): position t predicts token t+1
    wanted = next_labels != IGNORE  # (B, L-1)
    keep = wanted.any(dim=0).nonzero().squeeze(1)  # (K,) positions some row needs
    rows_wanted = wanted[:, keep]  # (B, K)
    head = _output_layer(model)
    handles = []
    if head is not None:
        handles.append(head.register_forward_pre_hook(lambda _m, args: _gather(args, rows_wanted)))
    feed_forward = _last_feed_forward(model)
    if feed_forward is not None:
        # position t predicts token t+1: the last column never has a target
        handles += _trim_to_targets(feed_forward, functional.pad(wanted, (0, 1)))
    extra = {}
    if hasattr(model, "prefix_batch"):  # a PrefixModel: an infix is seen from where the targets start
        extra["infix_at"] = infix_columns(batch["labels"])
    try:
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            logits_to_keep=keep,
            use_cache=False,
            **extra,
        )
    finally:
        for handle in handles:
            handle.remove()
    targets = next_labels[:, keep][rows_wanted]  # (N,)
    logits = out.logits.reshape(-1, out.logits.shape[-1])  # (N, V) gathered, or (B*K, V) without a head
    if head is None:
        targets = next_labels[:, keep].flatten()
    loss = functional.cross_entropy(logits.float(), targets, ignore_index=IGNORE, reduction="sum")
    return loss, int(rows_wanted.sum())


def infix_columns(labels: torch.Tensor) -> torch.Tensor:
    """(B, L) labels -> (B,) per row the column before its first target token: the source's last
    token, whose query predicts the target's first token and so must see an infix (`kind="infix"`)."""
    first_target = (labels != IGNORE).long().argmax(dim=1)  # (B,)
    return (first_target - 1).clamp(min=0)


def _gather(args: tuple, rows_wanted: torch.Tensor) -> tuple:
    """(B, K, H) hidden states -> (1, N, H): only each row's own target positions."""
    hidden = args[0]
    if hidden.shape[:2] != rows_wanted.shape:  # not the call this loss made (e.g. a nested model)
        return args
    return (hidden[rows_wanted][None], *args[1:])


def _trim_to_targets(module: torch.nn.Module, wanted: torch.Tensor) -> list:
    """Hooks making a position-wise `module` run only where `wanted` (B, L) is True: its (B, L, H)
    input is gathered to (1, N, H) and its output scattered back to (B, L, H), zeros elsewhere."""
    gathered = []

    def before(_module, args):
        if args[0].shape[:2] != wanted.shape:  # another length (e.g. `kind="embedding"`): run in full
            return args
        gathered.append(args[0].shape)
        return (args[0][wanted][None], *args[1:])

    def after(_module, _args, output):
        if not gathered:
            return output
        shape = gathered.pop()
        first = output if isinstance(output, torch.Tensor) else output[0]
        full = first.new_zeros(shape[:2] + first.shape[2:])
        full[wanted] = first[0]
        return full if isinstance(output, torch.Tensor) else (full, *output[1:])

    return [module.register_forward_pre_hook(before), module.register_forward_hook(after)]


def _last_feed_forward(model) -> torch.nn.Module | None:
    """The feed-forward block of the decoder's last layer: the sibling, named `mlp` or
    `feed_forward`, of the last attention module a forward calls (the injector's last slot)."""
    layout = getattr(model, "layout", None)
    if layout is None or not layout.slots or layout.slots[-1].kind != "self" or _checkpointed(model.base):
        return None
    try:
        layer = model.base.get_submodule(layout.slots[-1].name.rpartition(".")[0])
    except AttributeError:  # the module tree changed since the probe (e.g. wrapped by FSDP)
        return None
    for name in ("mlp", "feed_forward"):
        module = getattr(layer, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    return None


def _checkpointed(base: torch.nn.Module) -> bool:
    """Whether layers are recomputed in the backward pass. The recomputation runs after `target_loss`
    has removed its hooks, so a trimmed block would save other tensors than the first run did."""
    return any(
        getattr(module, "gradient_checkpointing", False) is True  # transformers' checkpointed layers
        or "Checkpoint" in type(module).__name__  # torch's CheckpointWrapper (FSDP's route)
        for module in base.modules()
    )


def _output_layer(model) -> torch.nn.Module | None:
    base = getattr(model, "base", model)
    getter = getattr(base, "get_output_embeddings", None)
    return getter() if getter is not None else None
