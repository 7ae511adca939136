"""A run folder's life: checked before anything is written, held by one run at a time, and started
afresh while it holds nothing worth resuming.

- One run at a time: `RunLock` takes an exclusive `flock` on `run.lock` for the run's whole life. The
  kernel drops it when the process ends, however it ends (`kill -9` included), so a lock is never
  stale; the file itself stays behind, holding nothing once released. The lock is advisory and
  local: on a network filesystem whose `flock` does not reach other machines, two runs on two
  machines are not kept apart.
- Afresh: a run that ended before it wrote anything to continue from (failed or killed before its
  first checkpoint) left only its settings and a partial log. Starting it again, with or without
  `--resume`, clears those and starts at step 0, instead of leaving a folder that can neither resume
  nor start.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import IO

from prefixtune.errors import PrefixTuneError
from prefixtune.train.checkpoint import CHECKPOINT
from prefixtune.train.report import CURVE, LOG

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are then not kept apart (everything else works)
    fcntl = None  # type: ignore[assignment]

RUN_FILE = "run.json"
LOCK_FILE = "run.lock"
PREFIX_DIR = "prefix"
MODEL_DIR = "model"
ADAPTER_DIR = "adapter"
RESULT_DIRS = (PREFIX_DIR, MODEL_DIR, ADAPTER_DIR)
"""Where a run keeps what it trained: a prefix, a fine-tuned model, a LoRA adapter (`train.methods`)."""
RUN_FILES = frozenset({RUN_FILE, LOCK_FILE, LOG, CURVE, CHECKPOINT, *RESULT_DIRS})
"""What a run writes into its folder (besides hidden temporaries, see `_written_by_a_run`)."""


class RunLock:
    """An exclusive lock on `folder` (created if missing) for as long as a run trains in it.

    Args:
        what: the kind of run, named in the owner record a refused run reports ("train", "sweep").
    """

    def __init__(self, folder: Path, what: str) -> None:
        self.folder = Path(folder)
        self.what = what
        self._handle: IO[str] | None = None

    def acquire(self) -> RunLock:
        """Take the lock, or raise a PrefixTuneError naming the folder and the run that holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 (held for the run)
        try:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = _describe(handle.read())
            handle.close()
            raise PrefixTuneError(
                f"{self.folder} is in use by another run ({owner}); wait for it to end, "
                "or choose another --output folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        owner = {
            "what": self.what,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        }
        handle.write(json.dumps(owner) + "\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        """Let the folder go (the owner record is cleared first, so nobody reads a stale one)."""
        if self._handle is None:
            return
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.flush()
        self._handle.close()  # closing the file drops the flock
        self._handle = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _describe(record: str) -> str:
    try:
        owner = json.loads(record)
        return (
            f"prefixtune {owner['what']}, process {owner['pid']} on {owner['host']} since {owner['since']}: "
            f"{owner['command']}"
        )
    except (ValueError, KeyError, TypeError):  # caught between taking the lock and writing the record
        return "a prefixtune run that is just starting"


def check_folder(folder: Path) -> None:
    """`--output` is a folder (or does not exist yet), holding nothing but a run's own files."""
    if folder.exists() and not folder.is_dir():
        raise PrefixTuneError(f"--output {folder} exists and is not a folder")
    if folder.is_dir():
        foreign = sorted(p.name for p in folder.iterdir() if not _written_by_a_run(p.name))
        if foreign:
            raise PrefixTuneError(
                f"--output {folder} holds other files ({', '.join(foreign[:3])}); "
                "choose a new or empty folder"
            )


def _written_by_a_run(name: str) -> bool:
    # hidden temporaries: a checkpoint or log being replaced, a result folder being swapped in
    return name in RUN_FILES or name.startswith(tuple(f".{n}." for n in (CHECKPOINT, LOG, *RESULT_DIRS)))


def clear_dead_start(folder: Path) -> None:
    """Remove what a run that never reached a checkpoint left: its settings, log, plot and result."""
    for name in (RUN_FILE, LOG, CURVE):
        (folder / name).unlink(missing_ok=True)
    for name in RESULT_DIRS:
        shutil.rmtree(folder / name, ignore_errors=True)
    for stale in folder.glob(
        ".*.tmp"
    ):  # temporaries of a checkpoint, log or result being written when it died
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
