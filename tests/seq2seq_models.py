"""Tiny random-init encoder-decoder models built from configs, one per family prefixtune supports.

Like `conftest.make_model`, everything is fp32, eval mode and deterministic for a seed; the ids
match the word tokenizer of `synthetic` (pad 0, unk 1, eos 2).
"""

from __future__ import annotations

import torch
from conftest import INIT, VOCAB
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    MarianConfig,
    MarianMTModel,
    MBartConfig,
    MBartForConditionalGeneration,
    MT5Config,
    MT5ForConditionalGeneration,
    PegasusConfig,
    PegasusForConditionalGeneration,
    T5Config,
    T5ForConditionalGeneration,
)

PAD, EOS = 0, 2
_BART_LIKE = {
    "vocab_size": VOCAB,
    "d_model": 64,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 96,
    "decoder_ffn_dim": 96,
    "max_position_embeddings": 64,
    "pad_token_id": PAD,
    "bos_token_id": 1,
    "eos_token_id": EOS,
    "decoder_start_token_id": EOS,
    "forced_eos_token_id": None,
    "init_std": INIT,
    "dropout": 0.0,
}
_T5_LIKE = {
    "vocab_size": VOCAB,
    "d_model": 64,
    "d_kv": 8,  # heads * d_kv = 32 != d_model: shapes must come from the tensors
    "d_ff": 96,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 16,
    "dropout_rate": 0.0,
    "pad_token_id": PAD,
    "eos_token_id": EOS,
    "decoder_start_token_id": PAD,
    "initializer_factor": 1.0,
}

SEQ2SEQ = {
    "bart": (BartConfig, BartForConditionalGeneration, _BART_LIKE),
    "t5": (T5Config, T5ForConditionalGeneration, _T5_LIKE),
    "mbart": (MBartConfig, MBartForConditionalGeneration, _BART_LIKE),
    "mt5": (
        MT5Config,
        MT5ForConditionalGeneration,
        {**_T5_LIKE, "initializer_factor": 0.5},
    ),  # untied head: large logits
    "marian": (MarianConfig, MarianMTModel, {**_BART_LIKE, "decoder_start_token_id": PAD}),
    "pegasus": (
        PegasusConfig,
        PegasusForConditionalGeneration,
        {**_BART_LIKE, "decoder_start_token_id": PAD},
    ),
}
"""family -> (config class, model class, config values)."""


def make_seq2seq(family: str, attn: str = "sdpa", seed: int = 0, **changes):
    """A tiny random encoder-decoder of `family` (2 encoder and 2 decoder layers)."""
    config_class, model_class, values = SEQ2SEQ[family]
    torch.manual_seed(seed)
    config = config_class(**{**values, **changes}, attn_implementation=attn)
    model = model_class(config).eval()
    model.generation_config.pad_token_id = PAD
    return model


def right_padded(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder inputs padded on the right, as seq2seq tokenizers do: (ids, mask), each (B, L)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


def write_copy_task(folder, train_rows: int = 160, dev_rows: int = 8, words: int = 8, seed: int = 0):
    """CSV files whose target repeats the source (2 to 4 of `words` words): a task only a prefix
    that reaches the encoder and the cross-attention can learn on a frozen random model."""
    import csv
    import random

    rng = random.Random(seed)
    paths = []
    for name, rows in (("train", train_rows), ("dev", dev_rows)):
        path = folder / f"{name}.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["source", "target"])
            for _ in range(rows):
                text = " ".join(f"w{20 + rng.randrange(words)}" for _ in range(rng.randrange(2, 5)))
                writer.writerow([text, text])
        paths.append(path)
    return paths[0], paths[1]
