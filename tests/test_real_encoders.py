"""Classifier prefixes on the real bundled all-MiniLM-L6-v2 (BERT, 6 layers, 12 heads of 32). Slow."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from prefixtune import PrefixConfig, add_prefix, load_base, load_prefix
from prefixtune.cli import main
from prefixtune.train.heads import head_of, train_head

pytestmark = pytest.mark.slow

SST2 = Path(__file__).parent / "resources" / "sst2_sample"  # 96 train, 32 dev rows of GLUE SST-2
TEXTS = ["a gorgeous , witty , seductive movie .", "the plot is nothing but boilerplate clichés"]


def _classifier(attn: str = "sdpa"):
    base, tokenizer = load_base("minilm-l6", task="sequence-classification", attn_implementation=attn)
    model = add_prefix(base, PrefixConfig(length=8, reparam="flat", seed=0))
    train_head(model, seed=0)
    return model, tokenizer


def test_minilm_prefix_slots_masking_and_backends():
    model, tokenizer = _classifier()
    assert [(s.kv_heads, s.head_dim) for s in model.layout.slots] == [(12, 32)] * 6
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    bare, _ = load_base("minilm-l6", task="sequence-classification")
    bare.classifier.load_state_dict(model.base.classifier.state_dict())
    expected = bare(**batch).logits
    torch.testing.assert_close(model(**batch, prefix=[None, None]).logits, expected, rtol=0, atol=1e-5)
    with_prefix = model(**batch).logits
    assert (with_prefix - expected).abs().max() > 1e-3
    eager, _ = _classifier("eager")
    torch.testing.assert_close(eager(**batch).logits, with_prefix, rtol=0, atol=1e-4)


def test_minilm_classifier_round_trips_with_its_head(tmp_path):
    model, tokenizer = _classifier()
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    expected = model(**batch).logits
    model.save(tmp_path / "p")
    base, _ = load_base("minilm-l6", task="sequence-classification")
    torch.testing.assert_close(load_prefix(base, tmp_path / "p")(**batch).logits, expected, rtol=0, atol=1e-6)


def test_cli_trains_evaluates_and_classifies_on_sst2(tmp_path, capsys):
    train, dev = SST2 / "train.tsv", SST2 / "dev.tsv"
    run = tmp_path / "run"
    args = ["train", "--task", "classify", "--train", str(train), "--dev", str(dev), "--output", str(run)]
    assert main([*args, "--steps", "6", "--eval-every", "3", "--batch-size", "16", "--quiet"]) == 0
    capsys.readouterr()
    base, _ = load_base("minilm-l6", task="sequence-classification")
    assert head_of(load_prefix(base, run / "prefix")).pooling == "mean"  # the default, saved with the head
    assert main(["evaluate", "--prefix", str(run / "prefix"), "--data", str(dev)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("accuracy ") and "(32 examples" in out
    assert main(["classify", "--prefix", str(run / "prefix"), *TEXTS]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t", 1)[1] for line in lines] == TEXTS
    assert {line.split("\t", 1)[0] for line in lines} <= {"0", "1"}
    with open(dev, encoding="utf-8") as handle:
        assert len(list(csv.reader(handle, delimiter="\t"))) == 33
