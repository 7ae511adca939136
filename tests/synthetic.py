"""A tiny synthetic task and tokenizer that a prefix on a tiny random model can learn quickly."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

WORDS = ["<pad>", "<unk>", "<eos>"] + [f"w{i}" for i in range(93)]
TARGET = "w10 w11 w12 w13"


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(WORDS)}
    vocab["\n"] = 3  # the prompt separator, sharing an id with w0 (the tiny vocabulary is full)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>"
    )
    fast.padding_side = "left"
    return fast


def write_task(folder: Path, train_rows: int = 120, dev_rows: int = 12, seed: int = 0) -> tuple[Path, Path]:
    """CSV files whose every source (random words) has the same target, TARGET."""
    rng = random.Random(seed)
    paths = []
    for name, rows in (("train", train_rows), ("dev", dev_rows)):
        path = folder / f"{name}.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["source", "target"])
            for _ in range(rows):
                words = " ".join(f"w{rng.randrange(20, 90)}" for _ in range(rng.randrange(2, 6)))
                writer.writerow([words, TARGET])
        paths.append(path)
    return paths[0], paths[1]
