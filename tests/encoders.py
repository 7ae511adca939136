"""Tiny random-init encoders (BERT, RoBERTa, DistilBERT, ELECTRA), bare or with a task head.

Built offline from configs, fp32, eval mode, like the decoders in conftest.py.
"""

from __future__ import annotations

import torch
from conftest import INIT, VOCAB
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    DistilBertConfig,
    ElectraConfig,
    RobertaConfig,
)

HEADS = {
    None: AutoModel,
    "sequence": AutoModelForSequenceClassification,
    "token": AutoModelForTokenClassification,
}
_SHAPE = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 96,
    "max_position_embeddings": 64,
    "initializer_range": INIT,
}


def _config(family: str, attn: str, labels: int):
    common = {"attn_implementation": attn, "num_labels": labels}
    if family == "bert":
        return BertConfig(**_SHAPE, pad_token_id=0, **common)
    if family == "roberta":  # positions start after the padding index (2, 3, ...)
        return RobertaConfig(**_SHAPE, pad_token_id=1, **common)
    if family == "electra":  # embeddings narrower than the hidden size, projected up
        return ElectraConfig(**_SHAPE, embedding_size=32, pad_token_id=0, **common)
    if family == "distilbert":
        return DistilBertConfig(
            vocab_size=VOCAB,
            dim=64,
            n_layers=2,
            n_heads=4,
            hidden_dim=96,
            max_position_embeddings=64,
            initializer_range=INIT,
            pad_token_id=0,
            **common,
        )
    raise ValueError(family)


ENCODERS = ("bert", "distilbert", "electra", "roberta")


def make_encoder(family: str, attn: str = "sdpa", head: str | None = None, labels: int = 3, seed: int = 0):
    """A tiny random encoder of `family`, deterministic for a seed; `head`: None, sequence or token."""
    torch.manual_seed(seed)
    model = HEADS[head].from_config(_config(family, attn, labels))
    return model.eval()


def right_pad(rows: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoders pad on the right: real tokens keep positions 0..n-1."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask
