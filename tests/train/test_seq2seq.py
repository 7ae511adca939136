"""Training encoder-decoder prefixes: batches, the loss on the labels only, and a run that learns."""

from __future__ import annotations

import torch
from seq2seq_models import EOS, PAD, make_seq2seq, write_copy_task
from synthetic import word_tokenizer

from prefixtune import PrefixConfig, add_prefix, load_prefix
from prefixtune.data import Example
from prefixtune.train import TrainConfig, train
from prefixtune.train.encode import IGNORE
from prefixtune.train.evaluate import dev_loss, generate_texts
from prefixtune.train.report import read_log
from prefixtune.train.seq2seq import collate_pairs, encode_pairs, guess_task, pair_loss


def test_pairs_keep_source_and_target_apart_and_end_the_target_with_eos():
    tokenizer = word_tokenizer()
    pairs = encode_pairs([Example("w5 w6 w7", "w8 w9"), Example("w5", "w8 w9 w10 w11")], tokenizer, 2, 3)
    assert pairs[0].input_ids == [8, 9] and pairs[0].labels == [11, 12, EOS]  # cut to 2 and 2 + eos
    assert pairs[1].labels == [11, 12, EOS]
    batch = collate_pairs(pairs, PAD)
    assert batch["input_ids"].tolist() == [[8, 9], [8, PAD]]  # right-padded
    assert batch["attention_mask"].tolist() == [[1, 1], [1, 0]]
    assert batch["labels"].tolist() == [[11, 12, EOS], [11, 12, EOS]]


def test_the_loss_is_the_summed_cross_entropy_of_the_labels_alone():
    tokenizer = word_tokenizer()
    model = add_prefix(make_seq2seq("bart"), PrefixConfig(length=2, mlp_hidden=16, seed=0))
    pairs = encode_pairs([Example("w5 w6 w7", "w8 w9"), Example("w5", "w8 w9 w10")], tokenizer, 8, 8)
    batch = collate_pairs(pairs, PAD)
    loss, count = pair_loss(model, batch)
    assert count == 3 + 4
    assert int((batch["labels"] == IGNORE).sum()) == 1
    mean = model(**batch).loss  # transformers' own mean over the labels
    torch.testing.assert_close(loss / count, mean, rtol=1e-5, atol=1e-6)


def test_a_run_on_a_copy_task_learns_and_only_the_prefix_changes(tmp_path):
    train_csv, dev_csv = write_copy_task(tmp_path)
    base = make_seq2seq("bart")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    config = TrainConfig.from_dict(
        dict(
            train=str(train_csv),
            dev=str(dev_csv),
            output=str(tmp_path / "run"),
            steps=60,
            eval_every=60,
            checkpoint_every=60,
            init="random",
            lr=3e-2,
            batch_size=16,
            warmup_steps=2,
            length=8,
            mlp_hidden=64,
            max_new_tokens=6,
        )
    )
    result = train(config, model_and_tokenizer=(base, word_tokenizer()), progress=False)
    losses = [r["loss"] for r in read_log(result.output) if r["kind"] == "train"]
    assert sum(losses[-10:]) / 10 < 0.75 * sum(losses[:10]) / 10
    assert result.best["BLEU"] > 10  # the bare random model copies nothing
    for key, value in base.state_dict().items():
        assert torch.equal(value, before[key]), key
    trained = load_prefix(make_seq2seq("bart"), result.prefix_path)
    texts = generate_texts(trained, word_tokenizer(), ["w21 w22 w23"], max_new_tokens=6)
    assert len(texts) == 1 and all(word.startswith("w") for word in texts[0].split())


def test_dev_loss_and_generation_dispatch_to_the_encoder_decoder_path():
    tokenizer = word_tokenizer()
    model = add_prefix(make_seq2seq("t5"), PrefixConfig(length=2, mlp_hidden=16, seed=0))
    examples = [Example("w5 w6", "w7 w8"), Example("w9", "w10")]
    loss, count = pair_loss(model, collate_pairs(encode_pairs(examples, tokenizer, 8, 8), PAD))
    assert abs(dev_loss(model, tokenizer, examples) - loss.item() / count) < 1e-5
    sources = ["w5 w6 w7", "w9"]
    together = generate_texts(model, tokenizer, sources, max_new_tokens=4, num_beams=2)
    alone = [generate_texts(model, tokenizer, [s], max_new_tokens=4, num_beams=2)[0] for s in sources]
    assert together == alone


def test_the_task_is_read_off_the_folders_config(tmp_path):
    make_seq2seq("bart").save_pretrained(tmp_path / "bart")
    assert guess_task(str(tmp_path / "bart")) == "seq2seq"
    assert guess_task("smollm2-135m") == "causal-lm"
