"""A PrefixModel under Hugging Face's Trainer on two CPU processes (torchrun, gloo): the processes
train one prefix together (DistributedDataParallel) and only rank 0 writes the prefix checkpoints; a
run that evaluate() before train() left without DDP is refused instead of drifting apart."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_model
from launch import run_two
from safetensors.torch import load_file

from prefixtune import load_prefix


def _ranks(output) -> list[dict]:
    return [json.loads((output / f"rank-{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.parametrize("mode", ["train", "evaluate-first"])
def test_two_processes_train_one_prefix_or_are_refused(mode, tmp_path):
    done = run_two(["trainer_worker", str(tmp_path), mode], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = _ranks(tmp_path)
    if mode == "evaluate-first":
        assert all("call train() first" in (r["refused"] or "") for r in ranks)
        return
    assert ranks[0]["refused"] is None and ranks[1]["refused"] is None
    torch.testing.assert_close(
        torch.tensor(ranks[1]["prefix"]), torch.tensor(ranks[0]["prefix"]), rtol=0, atol=1e-6
    )
    checkpoint = tmp_path / "out" / "checkpoint-4"
    assert all(k.startswith("prefixes.default.") for k in load_file(checkpoint / "model.safetensors"))
    saved = load_prefix(make_model("llama"), checkpoint / "prefix").prefixes["default"].materialise()
    torch.testing.assert_close(saved.flatten(), torch.tensor(ranks[0]["prefix"]), rtol=0, atol=1e-6)
