"""`train --task classify`, `evaluate` on a classifier prefix and `classify`, on a tiny BERT folder."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
from encoders import make_encoder
from synthetic import word_tokenizer

from prefixtune.cli import main
from prefixtune.train.heads import HEAD_FILE


def _write(path: Path, rows: list[tuple[str, str]], delimiter: str = "\t") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(["sentence", "label"])
        writer.writerows(rows)
    return path


def _sentiment(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """The label is told by the first word: w10..w12 'good', w50..w52 'bad'; the rest is noise."""
    rows = []
    for _ in range(count):
        good = rng.random() < 0.5
        first = rng.randrange(10, 13) if good else rng.randrange(50, 53)
        noise = " ".join(f"w{rng.randrange(30, 50)}" for _ in range(rng.randrange(1, 5)))
        rows.append((f"w{first} {noise}", "good" if good else "bad"))
    return rows


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A tiny BERT encoder folder (no head, like MiniLM), a labelled task and one trained classifier."""
    root = tmp_path_factory.mktemp("classify")
    base = root / "tiny-bert"
    make_encoder("bert", labels=2).save_pretrained(base)
    word_tokenizer().save_pretrained(base)
    rng = random.Random(0)
    train, dev = (
        _write(root / "train.tsv", _sentiment(rng, 96)),
        _write(root / "dev.tsv", _sentiment(rng, 24)),
    )
    run = root / "run"
    args = ["train", "--task", "classify", "--train", str(train), "--dev", str(dev), "--output", str(run)]
    args += ["--base", str(base), "--steps", "40", "--eval-every", "20", "--batch-size", "16"]
    args += ["--length", "4", "--lr", "0.03", "--warmup-steps", "5", "--quiet"]
    args += ["--pooling", "first"]  # the label is the first word: a task for the first token's head
    assert main(args) == 0
    return {"root": root, "base": base, "train": train, "dev": dev, "run": run, "prefix": run / "prefix"}


def test_train_keeps_the_best_prefix_with_its_head(workspace, capsys):
    prefix = workspace["prefix"]
    assert {HEAD_FILE, "prefix_config.json", "prefix.safetensors"} <= {p.name for p in prefix.iterdir()}
    records = [json.loads(line) for line in (workspace["run"] / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [20, 40]
    assert max(r["accuracy"] for r in evals) >= 0.9
    assert json.loads((workspace["run"] / "run.json").read_text())["task"] == "classify"
    assert _pooling(prefix / HEAD_FILE) == "first"  # saved with the head; evaluate below restores it


def _pooling(file: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(file), "pt") as handle:
        return handle.metadata()["pooling"]


def test_evaluate_reports_the_accuracy_training_saw(workspace, capsys):
    records = [json.loads(line) for line in (workspace["run"] / "metrics.jsonl").read_text().splitlines()]
    best = max(r["accuracy"] for r in records if r["kind"] == "eval")
    args = ["evaluate", "--prefix", str(workspace["prefix"]), "--base", str(workspace["base"])]
    assert main([*args, "--data", str(workspace["dev"])]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"accuracy {100 * best:.2f}") and "24 examples" in line


@pytest.mark.parametrize("option", [["--instruction", "Label it."], ["--categories", "City"]])
def test_evaluate_refuses_text_options_for_a_classifier(workspace, capsys, option):
    args = ["evaluate", "--prefix", str(workspace["prefix"]), "--base", str(workspace["base"])]
    assert main([*args, "--data", str(workspace["dev"]), *option]) == 2
    assert f"{option[0]}: for generated text; a classifier is scored on labels" in capsys.readouterr().err


def test_classify_labels_new_sentences(workspace, capsys, tmp_path):
    texts = ["w12 w33 w40", "w51 w31", "w10", "w52 w45 w46"]
    (tmp_path / "in.txt").write_text("\n".join(texts[2:]) + "\n")
    args = ["classify", "--prefix", str(workspace["prefix"]), "--base", str(workspace["base"])]
    assert main([*args, *texts[:2], "--input", str(tmp_path / "in.txt")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [
        f"{label}\t{text}" for label, text in zip(["good", "bad", "good", "bad"], texts, strict=True)
    ]


def test_no_command_reports_the_head_missing_where_prefixtune_supplies_it(workspace, tmp_path, recwarn):
    """transformers reports a head missing from the encoder's checkpoint as "MISSING ... newly
    initialized ... Consider training"; but `train` trains that head, and `evaluate` and `classify`
    restore the trained one from head.safetensors: none of them may say it is missing."""
    import logging

    reports: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: reports.append(record.getMessage())
    log = logging.getLogger("transformers.modeling_utils")
    log.addHandler(handler)
    try:
        model = ["--prefix", str(workspace["prefix"]), "--base", str(workspace["base"])]
        assert main(["evaluate", *model, "--data", str(workspace["dev"])]) == 0
        assert main(["classify", *model, "w12 w33"]) == 0
        train = ["train", "--task", "classify", "--train", str(workspace["train"]), "--steps", "1"]
        assert (
            main([*train, "--output", str(tmp_path / "run"), "--base", str(workspace["base"]), "--quiet"])
            == 0
        )
    finally:
        log.removeHandler(handler)
    assert not [r for r in reports if "LOAD REPORT" in r or "MISSING" in r]
    assert not [str(w.message) for w in recwarn if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--grad-accum", "2"], "--grad-accum do(es) not apply to --task classify"),
        (["--resume"], "--resume is not supported"),
        (["--init", "text"], "a classifier starts random or zero"),
        (["--pooling", "max"], "--pooling must be one of first, mean"),
        (["--dropout", "maybe"], "--dropout must be off or on"),
    ],
)
def test_bad_classifier_options_are_one_line_errors(workspace, capsys, tmp_path, extra, message):
    args = [
        "train",
        "--task",
        "classify",
        "--train",
        str(workspace["train"]),
        "--output",
        str(tmp_path / "r"),
    ]
    assert main([*args, "--base", str(workspace["base"]), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_missing_column_names_the_option_that_picks_it(workspace, capsys, tmp_path):
    data = tmp_path / "texts.tsv"
    data.write_text("text\tlabel\nw10 w11\tgood\n", encoding="utf-8")
    args = ["train", "--task", "classify", "--base", str(workspace["base"]), "--output", str(tmp_path / "r")]
    assert main([*args, "--train", str(data)]) == 2
    assert (
        "no column 'sentence'; its columns are 'text', 'label'. Pass --text-column="
        in capsys.readouterr().err
    )
    assert not (tmp_path / "r").exists()
    evaluate = ["evaluate", "--prefix", str(workspace["prefix"]), "--base", str(workspace["base"])]
    assert main([*evaluate, "--data", str(data)]) == 2
    assert "Pass --source-column=" in capsys.readouterr().err


def test_single_label_data_and_unknown_dev_labels_are_refused(workspace, capsys, tmp_path):
    one = _write(tmp_path / "one.tsv", [("w10 w11", "good"), ("w12", "good")])
    args = ["train", "--task", "classify", "--base", str(workspace["base"]), "--output", str(tmp_path / "r")]
    assert main([*args, "--train", str(one)]) == 2
    assert "single label" in capsys.readouterr().err
    odd = _write(tmp_path / "odd.tsv", [("w10", "meh")])
    assert main([*args, "--train", str(workspace["train"]), "--dev", str(odd)]) == 2
    assert "labels ['meh'] that the classifier was not trained on" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_classify_needs_a_classifier_prefix(workspace, capsys, tmp_path):
    (tmp_path / "plain").mkdir()
    args = ["classify", "--prefix", str(workspace["prefix"]), "--base", str(workspace["base"])]
    assert main(args) == 2
    assert "nothing to classify" in capsys.readouterr().err
    assert main(["classify", "--prefix", str(tmp_path / "plain"), "w10"]) == 2
    assert "not a prefix folder" in capsys.readouterr().err
