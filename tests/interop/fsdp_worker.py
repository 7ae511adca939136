"""Started on two processes by test_fsdp: FSDP2 (`fully_shard`) shards a tiny LLaMA under a PrefixModel
on CPU (gloo), the prefix trains, and rank 0 writes the gathered prefix bank.

    python -m fsdp_worker OUTPUT
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch
from conftest import make_model, random_ids
from launch import exit_together
from torch import distributed as dist

from prefixtune import PrefixConfig, PrefixTuneError, add_prefix
from prefixtune.engine.model import PrefixModel
from prefixtune.interop.trainer import PrefixCheckpointCallback

STEPS, ROWS = 4, 4


def build() -> PrefixModel:
    return add_prefix(make_model("llama"), PrefixConfig(length=3, mlp_hidden=16, seed=0))


def train(model: PrefixModel, rank: int = 0, world: int = 1) -> None:
    """STEPS steps on one global batch of ROWS equal-length rows, each process taking every world-th row.

    Each process's loss is its rows' mean and FSDP averages the gradients over the processes, which
    with equal row lengths is the global batch's mean: the one-process gradient.
    """
    optimizer = torch.optim.AdamW(model.prefix_parameters(), lr=3e-2)
    ids = random_ids(ROWS, 8, seed=5)[rank::world]  # (ROWS / world, 8)
    model.train()
    for _ in range(STEPS):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def main(output: Path) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build()
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.base.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)  # the root: embeddings, head, and the prefix bank
    q_proj = model.base.model.layers[0].self_attn.q_proj.weight
    assert q_proj.to_local().shape[0] == q_proj.shape[0] // world  # really sharded
    train(model, rank, world)
    try:
        model.save(output / f"direct-{rank}")
        refused = ""
    except PrefixTuneError as err:
        refused = str(err)
    progress = SimpleNamespace(is_world_process_zero=rank == 0, global_step=STEPS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PrefixCheckpointCallback().on_save(
            SimpleNamespace(output_dir=str(output)), progress, None, model=model
        )
    callback = {"warned": [str(w.message) for w in caught], "wrote": (output / "checkpoint-4").exists()}
    # every process takes part in the gather; the result holds the prefix bank only
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        torch.save({"state": state, "refused": refused, "callback": callback}, output / "gathered.pt")
    exit_together()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
