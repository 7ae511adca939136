"""`prefixtune train --method finetune|lora`, then `evaluate` and `generate` on what each run kept, and
`prefixtune sweep --grid method=...` with the cost columns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import make_model
from synthetic import TARGET, word_tokenizer, write_task

from prefixtune.cli import main

BASELINES = {"finetune": ("model", "0.001"), "lora": ("adapter", "0.01")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("methods")
    base = root / "tiny-llama"
    make_model("llama").save_pretrained(base)
    word_tokenizer().save_pretrained(base)
    train_csv, dev_csv = write_task(root)
    paths = {"root": root, "base": base, "train": train_csv, "dev": dev_csv}
    for method, (_, lr) in BASELINES.items():
        argv = [
            "train", "--method", method, "--train", str(train_csv), "--dev", str(dev_csv),
            "--output", str(root / method), "--base", str(base), "--steps", "30", "--eval-every", "15",
            "--lr", lr, "--max-new-tokens", "6", "--quiet",
        ]  # fmt: skip
        assert main(argv) == 0
        paths[method] = root / method
    return paths


@pytest.mark.parametrize("method", sorted(BASELINES))
def test_train_keeps_the_baselines_result(runs, method, capsys):
    folder = runs[method] / BASELINES[method][0]
    assert (
        folder / "model.safetensors" if method == "finetune" else folder / "adapter_model.safetensors"
    ).is_file()
    assert not (runs[method] / "prefix").exists()
    assert json.loads((runs[method] / "run.json").read_text())["method"] == method


@pytest.mark.parametrize("method", sorted(BASELINES))
def test_evaluate_and_generate_take_what_a_baseline_kept(runs, method, capsys, tmp_path):
    folder = runs[method] / BASELINES[method][0]
    # a LoRA adapter finds its base where it was trained; a fine-tuned model is its own base
    scores = tmp_path / "scores.json"
    common = ["--max-new-tokens", "6", "--num-beams", "1"]
    argv = ["evaluate", "--prefix", str(folder), "--data", str(runs["dev"]), "--metrics", "BLEU"]
    assert main([*argv, *common, "--output", str(scores)]) == 0
    evaluated = json.loads(scores.read_text())["scores"]["BLEU"]
    best = max(
        r["BLEU"] for r in map(json.loads, (runs[method] / "metrics.jsonl").open()) if r["kind"] == "eval"
    )
    assert evaluated == pytest.approx(best)  # the kept result is the best evaluation's
    capsys.readouterr()
    assert main(["generate", "--prefix", str(folder), "w20 w21", "w30", *common]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    if evaluated > 90:
        assert lines == [TARGET, TARGET]


def test_a_lora_adapter_takes_a_base_and_a_fine_tuned_model_refuses_one(runs, capsys):
    adapter = runs["lora"] / "adapter"
    argv = ["generate", "--prefix", str(adapter), "--base", str(runs["base"]), "w20", "--max-new-tokens", "4"]
    assert main(argv) == 0
    model = runs["finetune"] / "model"
    assert main(["generate", "--prefix", str(model), "--base", str(runs["base"]), "w20"]) == 2
    assert "is a whole fine-tuned model: drop --base" in capsys.readouterr().err


def test_sweep_over_methods_reports_their_cost(runs):
    out = runs["root"] / "sweep"
    argv = [
        "sweep", "--train", str(runs["train"]), "--dev", str(runs["dev"]), "--base", str(runs["base"]),
        "--output", str(out), "--steps", "4", "--eval-every", "4", "--lr", "0.001", "--length", "2",
        "--mlp-hidden", "16", "--max-new-tokens", "4", "--quiet", "--grid", "method=finetune,prefix,lora",
    ]  # fmt: skip
    assert main(argv) == 0
    rows = {r["method"]: r for r in csv.DictReader((out / "results.csv").open())}
    for column in ("trainable_params", "stored_params", "stored_bytes", "step_time_s", "peak_mem_mb"):
        assert all(rows[m][column] for m in rows), column
    assert (out / "runs" / "method=finetune" / "model" / "model.safetensors").is_file()
    assert (out / "runs" / "method=lora" / "adapter" / "adapter_model.safetensors").is_file()
    trainable = {m: int(rows[m]["trainable_params"]) for m in rows}
    assert trainable["finetune"] > 10 * max(trainable["prefix"], trainable["lora"])
    assert int(rows["finetune"]["stored_params"]) == trainable["finetune"]
    # the prefix run after fine-tuning trained on the shared base as loaded, not the fine-tuned weights
    alone = runs["root"] / "prefix-alone"
    settings = argv[1 : argv.index("--output")] + argv[argv.index("--output") + 2 : argv.index("--grid")]
    assert main(["train", *settings, "--output", str(alone)]) == 0
    loss = [json.loads(line)["loss"] for line in (alone / "metrics.jsonl").open() if '"train"' in line]
    swept = json.loads((out / "results.json").read_text())["runs"]
    assert next(r for r in swept if r["method"] == "prefix")["loss_curve"] == loss
    summary = (out / "summary.md").read_text()
    assert "| method | runs |" in summary and "stored_params" in summary and "peak_mem_mb" in summary
