"""Every CLI command on a tiny model saved as a Hugging Face folder, and the errors users meet."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_model
from synthetic import word_tokenizer, write_task

from prefixtune.cli import build_parser, main

COMMANDS = ["train", "evaluate", "generate", "fold", "info", "demo"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A tiny base model folder, a task, and one trained run (shared by the tests below)."""
    root = tmp_path_factory.mktemp("cli")
    base = root / "tiny-llama"
    make_model("llama").save_pretrained(base)
    word_tokenizer().save_pretrained(base)
    train_csv, dev_csv = write_task(root)
    run = root / "run"
    code = main(
        [
            "train",
            "--train",
            str(train_csv),
            "--dev",
            str(dev_csv),
            "--output",
            str(run),
            "--base",
            str(base),
            "--steps",
            "30",
            "--eval-every",
            "15",
            "--init",
            "random",
            "--lr",
            "0.03",
            "--length",
            "4",
            "--mlp-hidden",
            "32",
            "--max-new-tokens",
            "6",
            "--quiet",
        ]
    )
    assert code == 0
    return {
        "root": root,
        "base": base,
        "train": train_csv,
        "dev": dev_csv,
        "run": run,
        "prefix": run / "prefix",
    }


def test_train_writes_the_run_folder(workspace, capsys):
    run = workspace["run"]
    assert {"run.json", "checkpoint.pt", "metrics.jsonl", "curve.png", "prefix"} <= {
        p.name for p in run.iterdir()
    }
    assert json.loads((run / "run.json").read_text())["steps"] == 30


def test_train_refuses_a_folder_holding_a_run_and_overwrites_nothing(workspace, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in workspace["run"].iterdir()}
    code = main(
        [
            "train",
            "--train",
            str(workspace["train"]),
            "--output",
            str(workspace["run"]),
            "--base",
            str(workspace["base"]),
            "--quiet",
        ]
    )
    assert code == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in workspace["run"].iterdir()} == before


def test_resume_of_a_finished_run_changes_nothing(workspace, capsys):
    state = torch.load(workspace["run"] / "checkpoint.pt", weights_only=False)
    code = main(["train", "--resume", "--output", str(workspace["run"]), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    # the time is the run's, carried in its checkpoint, not this call's
    took = re.search(r"trained 30 steps in ([\d.]+) s", out)
    assert took and float(took.group(1)) >= round(state["seconds"], 1) > 0


@pytest.mark.parametrize(
    ("seconds", "shown"), [(4.31, "4.3 s"), (59.96, "1 min 00 s"), (185, "3 min 05 s"), (7620, "2 h 07 min")]
)
def test_a_run_s_time_reads_as_a_person_would_say_it(seconds, shown):
    from prefixtune.cli.commands import _took

    assert _took(seconds) == shown


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("missing", "not found"),
        ("column", "no column 'target'; its columns are 'source', 'text'. Pass --target-column="),
        ("empty", "empty"),
        ("latin1", "UTF-8"),
    ],
)
def test_train_rejects_bad_data_with_a_clear_message(workspace, tmp_path, capsys, problem, message):
    data = tmp_path / "data.csv"
    if problem == "column":
        data.write_text("source,text\na,b\n", encoding="utf-8")
    elif problem == "empty":
        data.write_text("source,target\n", encoding="utf-8")
    elif problem == "latin1":
        data.write_bytes("source,target\ncaf\xe9,b\n".encode("latin-1"))
    code = main(
        ["train", "--train", str(data), "--output", str(tmp_path / "out"), "--base", str(workspace["base"])]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing created, so a corrected retry is not blocked


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--base", "/nonexistent/model"], "/nonexistent/model does not exist"),
        (["--layers=9"], "layer"),
        (["--lr", "nan"], "--lr must be a positive number, got nan"),
    ],
    ids=["base", "layers", "lr"],
)
def test_a_train_that_cannot_start_creates_nothing_and_the_fixed_command_runs(
    workspace, tmp_path, capsys, option, message
):
    out = tmp_path / "out"
    args = _train_args(workspace, out)
    args += ["--steps", "2", "--init", "random", "--length", "2", "--mlp-hidden", "8", "--quiet"]
    assert main([*args, *option]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()
    assert main(args) == 0


def test_a_second_train_into_a_folder_in_use_is_refused(workspace, tmp_path, capsys):
    from prefixtune.train.run_folder import RunLock

    out = tmp_path / "busy"
    args = _train_args(workspace, out)
    with RunLock(out, "train"):  # as a `prefixtune train` still running there holds it
        assert main([*args, "--steps", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{out} is in use by another run (prefixtune train, process " in err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["run.lock"]


def test_evaluate_prints_and_writes_scores(workspace, tmp_path, capsys):
    out = tmp_path / "scores.json"
    code = main(
        [
            "evaluate",
            "--prefix",
            str(workspace["prefix"]),
            "--base",
            str(workspace["base"]),
            "--data",
            str(workspace["dev"]),
            "--metrics",
            "BLEU,ROUGE_L",
            "--num-beams",
            "2",
            "--max-new-tokens",
            "6",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "BLEU" in printed and "ROUGE_L" in printed
    saved = json.loads(out.read_text())
    assert set(saved["scores"]) == {"BLEU", "ROUGE_L"} and saved["outputs"][0]["references"]
    assert (
        main(
            [
                "evaluate",
                "--prefix",
                str(workspace["prefix"]),
                "--base",
                str(workspace["base"]),
                "--data",
                str(workspace["dev"]),
                "--output",
                str(out),
            ]
        )
        == 2
    )  # never overwrites


def test_evaluate_without_a_prefix_scores_the_bare_model(workspace, capsys):
    code = main(
        [
            "evaluate",
            "--no-prefix",
            "--base",
            str(workspace["base"]),
            "--data",
            str(workspace["dev"]),
            "--metrics",
            "BLEU",
            "--num-beams",
            "1",
            "--max-new-tokens",
            "6",
        ]
    )
    assert code == 0
    assert "BLEU" in capsys.readouterr().out


def test_generate_prints_one_line_per_source(workspace, capsys):
    code = main(
        [
            "generate",
            "--prefix",
            str(workspace["prefix"]),
            "--base",
            str(workspace["base"]),
            "--max-new-tokens",
            "6",
            "--num-beams",
            "1",
            "w20 w30",
            "w40",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("w") for line in lines)


def test_a_prefix_for_another_model_is_refused(workspace, tmp_path, capsys):
    other = tmp_path / "tiny-gemma"
    make_model("gemma3").save_pretrained(other)
    word_tokenizer().save_pretrained(other)
    code = main(["generate", "--prefix", str(workspace["prefix"]), "--base", str(other), "w20"])
    assert code == 2
    assert "attention layers" in capsys.readouterr().err


def test_a_prefix_for_other_weights_names_the_flag_that_loads_it_anyway(workspace, tmp_path, capsys):
    other = tmp_path / "tiny-llama-seed1"  # the same shapes, other weights
    make_model("llama", seed=1).save_pretrained(other)
    word_tokenizer().save_pretrained(other)
    generate = ["generate", "--prefix", str(workspace["prefix"]), "--base", str(other), "--num-beams", "1"]
    assert main([*generate, "w20"]) == 2
    err = capsys.readouterr().err
    assert "weights differ" in err and "--no-check-weights" in err and "check_weights=False" not in err
    assert main([*generate, "--max-new-tokens", "2", "--no-check-weights", "w20"]) == 0
    evaluate = ["evaluate", "--prefix", str(workspace["prefix"]), "--base", str(other), "--data"]
    assert main([*evaluate, str(workspace["dev"]), "--metrics", "BLEU", "--max-sources", "1"]) == 2
    assert "--no-check-weights" in capsys.readouterr().err


def test_fold_drops_the_trainable_state_and_info_describes_both(workspace, tmp_path, capsys):
    folded = tmp_path / "folded"
    assert main(["fold", str(workspace["prefix"]), str(folded)]) == 0
    assert sorted(p.name for p in folded.iterdir()) == ["prefix.safetensors", "prefix_config.json"]
    assert main(["info", str(workspace["prefix"])]) == 0
    full = capsys.readouterr().out
    assert "kept (prefixtune fold drops it)" in full and "LlamaForCausalLM" in full and "2 layers" in full
    assert main(["info", str(folded)]) == 0
    assert "none (folded)" in capsys.readouterr().out
    # the folded prefix gives the same generations
    outputs = []
    for prefix in (workspace["prefix"], folded):
        main(
            [
                "generate",
                "--prefix",
                str(prefix),
                "--base",
                str(workspace["base"]),
                "--max-new-tokens",
                "5",
                "--num-beams",
                "1",
                "w21 w33",
            ]
        )
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]


def test_info_on_a_folder_that_is_not_a_prefix(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    assert "not a prefix folder" in capsys.readouterr().err


def test_a_prefix_config_with_a_wrong_type_is_one_line_naming_the_field(workspace, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(workspace["prefix"], broken)
    meta = json.loads((broken / "prefix_config.json").read_text())
    meta["slots"][1]["kv_heads"] = "2"
    (broken / "prefix_config.json").write_text(json.dumps(meta))
    for command in (["info", str(broken)], ["generate", "--prefix", str(broken), "w20"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert 'slots[1].kv_heads holds "2" (text); it should hold a whole number from 1 up' in err
        assert "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("command", COMMANDS)
def test_help_explains_every_option(command):
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and len(action.help) > 10, (command, action.dest)
    rendered = sub.format_help()  # argparse %-formats every help string here
    assert all(opt in rendered for a in sub._actions for opt in a.option_strings)
    # a default shows once, and only where it says something
    flat = " ".join(rendered.split())
    for empty in ("(default: None)", "(default: )", "(default: False)", "(default: True)"):
        assert empty not in flat, (command, empty)
    assert not re.search(r"default:[^)]*\)\s*\(default:", flat), command


def test_help_shows_a_default_that_says_something():
    sub = build_parser()._subparsers._group_actions[0].choices["evaluate"]
    flat = " ".join(sub.format_help().split())
    assert "beam search width (1: greedy) (default: 5)" in flat
    assert "score only the first N distinct sources (0: all of them) --output" in flat
    train = " ".join(build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    assert "Optimizer steps. (default: 500)" in train
    assert "default: the method's, 1e-3 for prefix" in train and "(default: None)" not in train


def test_the_module_entry_point_runs():
    done = subprocess.run(
        [sys.executable, "-m", "prefixtune", "info", "--help"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    )
    assert done.returncode == 0 and "prefix folder" in done.stdout


def test_demo_trains_scores_and_shows_generations(tmp_path, capsys):
    """The demo end to end, on the tiny model: bare BLEU, training, BLEU with the prefix, samples."""
    base = tmp_path / "tiny-llama-long"  # E2E prompts plus 60 new tokens exceed the usual 64 positions
    model = make_model("llama")
    model.config.max_position_embeddings = 512
    model.save_pretrained(base)
    word_tokenizer().save_pretrained(base)
    output = tmp_path / "demo"
    code = main(
        ["demo", "--base", str(base), "--steps", "4", "--eval-sources", "3", "--show", "2"]
        + ["--output", str(output), "--quiet"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("\ninput      : ") == 2 and out.count("with prefix: ") == 2
    assert "E2E dev BLEU (3 inputs, greedy): base model " in out
    assert f"prefix saved to {output / 'prefix'}" in out
    assert (output / "prefix" / "prefix.safetensors").is_file() and (output / "curve.png").is_file()


def _train_args(workspace, out) -> list[str]:
    """`prefixtune train` on the workspace's data and tiny base, into `out`."""
    return [
        "train",
        "--train",
        str(workspace["train"]),
        "--output",
        str(out),
        "--base",
        str(workspace["base"]),
    ]
