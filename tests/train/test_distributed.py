"""`prefixtune train` under torchrun and under accelerate launch: two CPU processes (gloo) end with
the one-process prefix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_model
from launch import run_two
from synthetic import word_tokenizer, write_task

from prefixtune import load_prefix
from prefixtune.cli import main
from prefixtune.train.report import read_log


def _options(tmp_path: Path) -> list[str]:
    train_csv, dev_csv = write_task(tmp_path, train_rows=40, dev_rows=4)
    base = tmp_path / "tiny-llama"
    make_model("llama").save_pretrained(base)
    word_tokenizer().save_pretrained(base)
    settings = {
        "train": train_csv,
        "dev": dev_csv,
        "base": base,
        "steps": 4,
        "batch-size": 5,  # an odd batch: the two processes take 3 and 2 rows of it
        "grad-accum": 2,
        "eval-every": 4,
        "eval-sources": 2,
        "max-new-tokens": 3,
        "init": "random",
        "lr": 3e-2,
        "warmup-steps": 1,
        "length": 3,
        "mlp-hidden": 16,
    }
    return [part for key, value in settings.items() for part in (f"--{key}", str(value))] + ["--quiet"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> tuple[list[str], Path]:
    """The task's options and the folder of its one-process run."""
    folder = tmp_path_factory.mktemp("one")
    options = _options(folder)
    assert main(["train", *options, "--output", str(folder / "run1")]) == 0
    return options, folder / "run1"


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_end_with_the_one_process_prefix(one_process, launcher, tmp_path):
    options, run1 = one_process
    runs = {1: run1, 2: tmp_path / "run2"}
    done = run_two(["prefixtune", "train", *options, "--output", str(runs[2])], tmp_path, launcher)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 4 steps") == 2  # both ranks ran every step
    one, two = (load_prefix(make_model("llama"), runs[n] / "prefix") for n in (1, 2))
    torch.testing.assert_close(
        two.prefixes["default"].materialise(), one.prefixes["default"].materialise(), rtol=0, atol=1e-5
    )
    logs = {n: read_log(runs[n]) for n in (1, 2)}
    assert [r["kind"] for r in logs[2]] == [r["kind"] for r in logs[1]]  # rank 0 alone wrote the log
    for a, b in zip(logs[1], logs[2], strict=True):
        if a["kind"] == "train":
            assert abs(a["loss"] - b["loss"]) < 1e-5 and a["tokens"] == b["tokens"]
    state = [torch.load(runs[n] / "checkpoint.pt", weights_only=False)["trained"] for n in (1, 2)]
    for key, value in state[0].items():
        torch.testing.assert_close(state[1][key], value, rtol=0, atol=1e-5)
