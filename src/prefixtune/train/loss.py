"""The training loss, computing vocabulary logits only where a target token is predicted.

The vocabulary projection is the largest single matrix product in a small model's step (SmolLM2:
576 x 49,152 per position); prompt positions take no loss, so their logits are never computed.
"""

from __future__ import annotations

import torch
from torch.nn import functional

from prefixtune.train.encode import IGNORE


def target_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over target tokens, and how many there were.

    Args:
        batch: input_ids, attention_mask, labels, each (B, L); labels are IGNORE off-target.
    """
    labels = batch["labels"]
    next_labels = labels[:, 1:]  # (B, L-1): position t predicts token t+1
    keep = (next_labels != IGNORE).any(dim=0).nonzero().squeeze(1)  # (K,) positions any row needs
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        logits_to_keep=keep,
        use_cache=False,
    )
    logits = out.logits  # (B, K, V)
    targets = next_labels[:, keep]  # (B, K)
    loss = functional.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum"
    )
    return loss, int((targets != IGNORE).sum())
