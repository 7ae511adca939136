"""Run folders: nothing is created before a run is known to start, a run without a checkpoint starts
afresh, and a folder is trained into by one run at a time (an OS lock that dies with its process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import make_model
from synthetic import word_tokenizer, write_task

from prefixtune import PrefixTuneError
from prefixtune.train import TrainConfig, train
from prefixtune.train import loop as training
from prefixtune.train.report import read_log
from prefixtune.train.run_folder import LOCK_FILE, RunLock

SRC = Path(__file__).resolve().parents[2] / "src"


def _config(tmp_path: Path, **changes) -> TrainConfig:
    train_csv, _ = write_task(tmp_path)
    settings = {
        "train": str(train_csv),
        "output": str(tmp_path / "run"),
        "steps": 6,
        "checkpoint_every": 100,
        "init": "random",
        "length": 2,
        "mlp_hidden": 8,
        "warmup_steps": 1,
    }
    return TrainConfig.from_dict({**settings, **changes})


def _tiny():
    return make_model("llama"), word_tokenizer()


def _train_steps(folder: Path) -> list[int]:
    return [r["step"] for r in read_log(folder) if r["kind"] == "train"]


@pytest.mark.parametrize(
    ("change", "message"),
    [({"base": "/nonexistent/model"}, "does not exist"), ({"layers": (7,)}, "layer")],
    ids=["base", "layers"],
)
def test_a_start_that_fails_creates_no_run_folder(tmp_path, change, message):
    config = _config(tmp_path, **change)
    tiny = None if "base" in change else _tiny()
    with pytest.raises(PrefixTuneError, match=message):
        train(config, model_and_tokenizer=tiny, progress=False)
    assert not Path(config.output).exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_learning_rate_that_is_not_a_number_is_refused(tmp_path, value):
    with pytest.raises(PrefixTuneError, match="--lr must be a positive number"):
        _config(tmp_path, lr=value)


def _die_at_step(monkeypatch, dying: int) -> None:
    """The run's process dies (here: raises) during step `dying`, before any checkpoint."""
    real = training._step
    calls = {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == dying:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "_step", step)


@pytest.mark.parametrize("again", ["same command", "resume"])
def test_a_run_that_died_before_its_first_checkpoint_starts_afresh(tmp_path, monkeypatch, again):
    config = _config(tmp_path)
    with monkeypatch.context() as patch:
        _die_at_step(patch, 4)
        with pytest.raises(RuntimeError, match="killed"):
            train(config, model_and_tokenizer=_tiny(), progress=False)
    folder = Path(config.output)
    assert (folder / "run.json").is_file() and not (folder / "checkpoint.pt").exists()
    assert _train_steps(folder) == [1, 2, 3]
    result = train(config, resume=again == "resume", model_and_tokenizer=_tiny(), progress=False)
    assert result.steps == 6
    assert _train_steps(folder) == [1, 2, 3, 4, 5, 6]  # the dead start's records are gone
    straight = train(
        config.replace(output=str(tmp_path / "straight")), model_and_tokenizer=_tiny(), progress=False
    )

    def losses(run: Path) -> list[float]:
        return [r["loss"] for r in read_log(run) if r["kind"] == "train"]

    assert losses(folder) == losses(straight.output)


def test_a_folder_holding_a_checkpoint_still_needs_resume(tmp_path):
    config = _config(tmp_path, steps=2)
    train(config, model_and_tokenizer=_tiny(), progress=False)
    with pytest.raises(PrefixTuneError, match="already holds a run; pass --resume"):
        train(config, model_and_tokenizer=_tiny(), progress=False)


def test_a_second_run_into_a_locked_folder_is_refused_and_changes_nothing(tmp_path):
    config = _config(tmp_path, steps=2)
    folder = Path(config.output)
    with RunLock(folder, "train"):  # another run holds the folder
        before = sorted(p.name for p in folder.iterdir())
        with pytest.raises(PrefixTuneError) as caught:
            train(config, model_and_tokenizer=_tiny(), progress=False)
        assert sorted(p.name for p in folder.iterdir()) == before
    message = str(caught.value)
    assert str(folder) in message and f"process {os.getpid()}" in message and "another --output" in message
    assert train(config, model_and_tokenizer=_tiny(), progress=False).steps == 2  # released


HOLDER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {src!r})
    from pathlib import Path
    from prefixtune.train.run_folder import RunLock
    lock = RunLock(Path(sys.argv[1]), "train").acquire()
    print("locked", flush=True)
    time.sleep(600)
    """
)


def test_a_lock_dies_with_its_process(tmp_path):
    """kill -9 leaves no stale lock: the OS drops it with the process."""
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(src=str(SRC)), str(folder)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(PrefixTuneError, match=f"process {holder.pid}"):
            RunLock(folder, "train").acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    deadline = time.time() + 10
    while True:  # the kernel releases the lock as the process goes
        try:
            RunLock(folder, "train").acquire().release()
            break
        except PrefixTuneError:
            assert time.time() < deadline
            time.sleep(0.05)
    assert (folder / LOCK_FILE).exists()
    assert json.loads((folder / LOCK_FILE).read_text() or "{}") == {}  # released: no owner recorded
