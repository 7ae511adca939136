"""Resumable state, written atomically: a run killed at any moment (even `kill -9`) resumes exactly.

One file, `checkpoint.pt`, written to a temporary name, flushed to disk, then renamed over the old
one: a reader sees either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

from prefixtune.errors import PrefixTuneError

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    """Write `state` (plus the RNG states) atomically to folder/checkpoint.pt."""
    state = {**state, "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}
    path = folder / CHECKPOINT
    temporary = folder / f".{CHECKPOINT}.{os.getpid()}.tmp"
    with open(temporary, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def load_checkpoint(folder: Path) -> dict[str, Any]:
    """Read folder/checkpoint.pt and restore the RNG states it holds."""
    path = folder / CHECKPOINT
    if not path.is_file():
        raise PrefixTuneError(f"nothing to resume: {path} does not exist (start the run without --resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a torn file cannot happen through save_checkpoint, but disks fail
        raise PrefixTuneError(f"{path} is unreadable ({err}); start the run again in a new folder") from err
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    return state


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary checkpoint files left by a killed run are incomplete: drop them."""
    for stale in folder.glob(f".{CHECKPOINT}.*.tmp"):
        stale.unlink(missing_ok=True)
