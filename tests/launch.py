"""Run a Python module on two CPU processes (gloo), under torchrun or accelerate launch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch.distributed as dist

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launcher(name: str) -> list[str]:
    """The launcher's command line for 2 CPU processes. accelerate's `--multi_gpu` is its torchrun
    mode (no GPU needed: the process group falls back to gloo); its `--cpu` would start a single
    process unless given an MPI hostfile."""
    if name == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2"]
    quiet = ["--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no"]  # its defaults, said aloud
    return [*accelerate, *quiet, f"--main_process_port={_free_port()}"]


def run_two(module_and_args: list[str], home: Path, name: str = "torchrun") -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS...` on two processes; the tests' helpers (tests/, tests/interop/) importable."""
    paths = [SRC, TESTS, TESTS / "interop", os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in paths)}
    env["HF_HOME"] = str(home / "hf")  # no accelerate config of the user's reaches the test
    return subprocess.run(
        [*launcher(name), "-m", *module_and_args], capture_output=True, text=True, timeout=300, env=env
    )


def exit_together() -> None:
    """A worker's last call, after it has written its results: wait for the other rank, then leave
    without tearing the gloo group down. torch's teardown can hang or abort at exit (a DDP reducer
    freeing the group while gloo's worker thread waits for the GIL; "terminate called without an
    active exception"), which fresh-clone CI runs hit twice."""
    sys.stdout.flush()
    sys.stderr.flush()
    if dist.is_initialized():
        dist.barrier()
    os._exit(0)
