"""`train_classifier`: with `dropout="off"` the prefix trains on the eval-mode loss; by default the
frozen model's dropout runs, as in P-Tuning v2 and PEFT."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from encoders import make_encoder
from synthetic import word_tokenizer

from prefixtune import add_prefix
from prefixtune.train.classify import _Order, _tokenize, train_classifier
from prefixtune.train.classify_config import ClassifyConfig
from prefixtune.train.heads import train_head

ROWS = [(f"w{10 + i % 3} w{30 + i} w{40 + i % 7}", "good" if i % 2 else "bad") for i in range(16)]


def _data(folder: Path) -> Path:
    path = folder / "train.tsv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["sentence", "label"])
        writer.writerows(ROWS)
    return path


def _first_loss(config: ClassifyConfig) -> float:
    """The first batch's loss of the untrained prefix and head, computed in eval mode (no dropout)."""
    model = add_prefix(make_encoder("bert", head="sequence", labels=2), config.prefix_config())
    train_head(model, seed=config.seed, pooling=config.pooling)
    rows = _Order(len(ROWS), config.batch_size, config.seed).next()
    batch = _tokenize(word_tokenizer(), [ROWS[i][0] for i in rows], config.max_tokens)
    labels = torch.tensor([int(ROWS[i][1] == "good") for i in rows])  # classes sorted: bad, good
    with torch.no_grad():
        return model.eval()(**batch, labels=labels).loss.item()


@pytest.mark.parametrize("dropout", ["off", None])  # None: the default
def test_dropout_off_trains_on_the_eval_mode_loss_and_the_default_does_not(tmp_path, dropout):
    config = ClassifyConfig(
        train=str(_data(tmp_path)),
        output=str(tmp_path / "run"),
        steps=2,
        batch_size=8,
        length=3,
        **({"dropout": dropout} if dropout else {}),
    )
    base = make_encoder("bert", head="sequence", labels=2)
    rates = [m.p for m in base.modules() if isinstance(m, torch.nn.Dropout)]
    result = train_classifier(config, model_and_tokenizer=(base, word_tokenizer()), progress=False)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = next(r["loss"] for r in logged if r["kind"] == "train")
    if dropout == "off":
        assert first == pytest.approx(_first_loss(config), abs=1e-6)
    else:
        assert abs(first - _first_loss(config)) > 1e-4
    assert [m.p for m in result.model.modules() if isinstance(m, torch.nn.Dropout)] == rates
