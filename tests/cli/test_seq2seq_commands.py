"""`prefixtune train | evaluate | generate` on a tiny BART saved as a Hugging Face folder."""

from __future__ import annotations

import json

from seq2seq_models import make_seq2seq, write_copy_task
from synthetic import word_tokenizer

from prefixtune.cli import main


def test_train_evaluate_and_generate_a_seq2seq_model(tmp_path, capsys):
    base = tmp_path / "tiny-bart"
    make_seq2seq("bart").save_pretrained(base)
    word_tokenizer().save_pretrained(base)
    train_csv, dev_csv = write_copy_task(tmp_path)
    run = tmp_path / "run"
    options = ["--base", str(base), "--max-new-tokens", "6"]
    code = main(
        ["train", "--train", str(train_csv), "--dev", str(dev_csv), "--output", str(run), "--steps", "20"]
        + ["--eval-every", "20", "--init", "text", "--init-text", "w20 w21", "--lr", "0.03"]
        + ["--length", "4", "--mlp-hidden", "32", "--quiet", *options]
    )
    assert code == 0
    meta = json.loads((run / "prefix" / "prefix_config.json").read_text())
    assert meta["base"]["architecture"] == "BartForConditionalGeneration"
    assert [s["kind"] for s in meta["slots"]] == ["self", "self", "decoder", "cross", "decoder", "cross"]
    capsys.readouterr()

    scores = tmp_path / "scores.json"
    code = main(
        ["evaluate", "--prefix", str(run / "prefix"), "--data", str(dev_csv), "--metrics", "BLEU"]
        + ["--num-beams", "2", "--output", str(scores), *options]
    )
    assert code == 0
    saved = json.loads(scores.read_text())
    assert "BLEU" in saved["scores"] and all(o["output"] for o in saved["outputs"])
    capsys.readouterr()

    assert main(["generate", "--prefix", str(run / "prefix"), "w20 w21", "w22", *options]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(w.startswith("w") for line in lines for w in line.split())

    assert main(["evaluate", "--no-prefix", "--data", str(dev_csv), "--metrics", "BLEU", *options]) == 0
