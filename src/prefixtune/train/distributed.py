"""Data parallelism for `prefixtune train` under `torchrun` or `accelerate launch`.

The launcher sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; `join` then starts the process group
(NCCL when CUDA is there, else gloo). Every rank holds the whole frozen model and the same prefix,
and derives the same global batches from the seed; each rank runs the rows `rank::world` of every
micro-batch, and the prefix gradients are summed across ranks before the (identical) optimizer step.
The loss is normalised by the target tokens of the whole global batch, so the gradient, and thus the
prefix, equals the one-process run's.

Why a manual all-reduce and not `DistributedDataParallel`: the trainable state is the prefix bank,
a few hundred KB, so overlapping communication with the backward pass (what DDP buys) saves nothing
measurable; DDP's wrapper would also hide `PrefixModel`'s methods (`save`, `prefixes`) behind
`.module`, and it needs `find_unused_parameters` for banks where a step does not use every prefix.
One flat all-reduce per optimizer step keeps the loop the same code with one process or many.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import distributed as dist
from torch import nn

from prefixtune.errors import PrefixTuneError

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group (rank 0 of 1 without a launcher)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Only the main process writes checkpoints, logs, prefixes and plots, and evaluates."""
        return self.rank == 0


def current() -> Ranks:
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def join() -> bool:
    """Start the process group a launcher describes; True if this call started it (and must end it)."""
    if not dist.is_available() or dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return True


def leave(started: bool) -> None:
    if started and dist.is_initialized():
        dist.destroy_process_group()


def place(model: nn.Module) -> nn.Module:
    """Under NCCL each rank computes on its own GPU (cuda:LOCAL_RANK); otherwise the model stays put."""
    if current().world > 1 and dist.get_backend() == "nccl":
        return model.to(torch.device("cuda", torch.cuda.current_device()))
    return model


def shard(rows: list[int]) -> list[int]:
    """This rank's rows of a global (micro-)batch: every world-th row, starting at its rank."""
    ranks = current()
    return rows[ranks.rank :: ranks.world]


def sum_gradients(params: list[nn.Parameter]) -> None:
    """Sum the gradients of `params` over all ranks, in one flat all-reduce (a no-op on one process)."""
    if current().world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])  # (N,) every prefix parameter
    dist.all_reduce(flat)
    for param, chunk in zip(params, flat.split([p.numel() for p in params]), strict=True):
        param.grad = chunk.view_as(param)


def total(value: float, device: torch.device) -> float:
    """The sum of `value` over all ranks (for the logged loss and token counts)."""
    if current().world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item())


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is True on any (e.g. a Ctrl-C seen by one process)."""
    return total(float(flag), device) > 0


def from_main(value: T) -> T:
    """The main process's `value`, on every rank."""
    if current().world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(work: Callable[..., T], *args: Any) -> T | None:
    """Run `work` on the main process only; a PrefixTuneError it raises is raised on every rank.

    Returns its result on the main process and None elsewhere.
    """
    result, error = None, None
    if current().main:
        try:
            result = work(*args)
        except PrefixTuneError as err:
            error = str(err)
    error = from_main(error)
    if error is not None:
        raise PrefixTuneError(error)
    return result
