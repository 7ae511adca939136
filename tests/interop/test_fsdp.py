"""FSDP2 (`fully_shard`) on two CPU processes: the prefix injection works on a sharded base, the run
ends with the one-process prefix, the gathered state dict is the prefix bank only, and `save` on the
sharded model is refused with the way out (the Trainer callback skips its prefix folders)."""

from __future__ import annotations

import torch
from conftest import make_model
from fsdp_worker import build, train
from launch import run_two

from prefixtune import load_prefix


def test_fsdp2_on_cpu_ends_with_the_one_process_prefix(tmp_path):
    done = run_two(["fsdp_worker", str(tmp_path)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    gathered = torch.load(tmp_path / "gathered.pt", weights_only=False)
    assert "get_model_state_dict" in gathered["refused"]
    assert not gathered["callback"]["wrote"] and "FSDP" in gathered["callback"]["warned"][0]
    one = build()
    start = one.prefixes["default"].materialise().detach().clone()
    train(one)
    state = gathered["state"]
    assert state and all(k.startswith("prefixes.default.") for k in state)
    unsharded = build()
    unsharded.load_state_dict(state)  # strict: exactly the bank's keys
    unsharded.save(tmp_path / "prefix")
    two = load_prefix(make_model("llama"), tmp_path / "prefix").prefixes["default"].materialise()
    expected = one.prefixes["default"].materialise().detach()
    assert (expected - start).abs().max() > 1e-2  # the prefix did train
    torch.testing.assert_close(two, expected, rtol=0, atol=1e-5)
