"""Run every point of a sweep as a normal training run, and reduce each to one result row.

Runs live in `OUTPUT/runs/NAME/`, each an ordinary run folder (`prefixtune train --resume` works on
it). A run that finished has `row.json` beside its files and is skipped when the sweep is started
again; a run that was interrupted is resumed. Base models are loaded once and shared across runs.
One sweep at a time holds a sweep folder (`open_sweep`), as one run at a time holds a run folder.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from prefixtune.errors import PrefixTuneError
from prefixtune.sweep.grid import Point
from prefixtune.train import flat
from prefixtune.train.config import TrainConfig
from prefixtune.train.generation import train
from prefixtune.train.methods import METHODS
from prefixtune.train.report import read_log
from prefixtune.train.run_folder import LOCK_FILE, RUN_FILE, RunLock

ROW_FILE = "row.json"
PLAN_FILE = "sweep.json"
RUNS_DIR = "runs"
LOSS_WINDOW = 0.1
"""The last fraction of training steps whose loss is averaged as the run's final training loss."""


def run_points(points: list[Point], folder: Path, *, progress: bool = True, log=print) -> list[dict]:
    """Train every point not yet finished; returns the rows of all points, in grid order."""
    bases: dict[str, Any] = {}
    rows = []
    for number, point in enumerate(points, 1):
        run_folder = folder / RUNS_DIR / point.name
        done = run_folder / ROW_FILE
        if done.is_file():
            log(f"[{number}/{len(points)}] {point.name}: finished earlier, kept")
            rows.append(json.loads(done.read_text(encoding="utf-8")))
            continue
        resume = (run_folder / RUN_FILE).is_file()
        log(f"[{number}/{len(points)}] {point.name}: {'resuming' if resume else 'training'}")
        row = _run_one(point, run_folder, resume, bases, progress)
        if row is None:  # interrupted: the run checkpointed; the sweep stops and can be restarted
            raise KeyboardInterrupt
        done.write_text(json.dumps(row, indent=1) + "\n", encoding="utf-8")
        rows.append(row)
    return rows


def _run_one(point: Point, folder: Path, resume: bool, bases: dict, progress: bool) -> dict | None:
    config = point.config.replace(output=str(folder))
    if config.base not in bases:
        from prefixtune.loading import load_base
        from prefixtune.train.seq2seq import guess_task

        bases[config.base] = load_base(config.base, task=guess_task(config.base))
    result = train(config, resume=resume, model_and_tokenizer=bases[config.base], progress=progress)
    method = METHODS[config.method]
    try:
        if result.interrupted:
            return None
        trainable = sum(p.numel() for p in method.parameters(result.model))
    finally:
        method.release(result.model)  # the shared base model as it was (plain attention, no LoRA)
    return summarise(point, folder, result.steps, trainable, result.seconds)


def summarise(point: Point, folder: Path, steps: int, trainable: int, seconds: float) -> dict:
    """One row: the point's values, what the run reached, its size and cost."""
    records = read_log(folder)
    trains = [r for r in records if r.get("kind") == "train"]
    losses = [r["loss"] for r in trains]
    saved = [r for r in records if r.get("kind") == "saved"]
    peaks = [r["peak_mem_mb"] for r in trains if r.get("peak_mem_mb") is not None]
    evals = [r for r in records if r.get("kind") == "eval"]
    window = losses[-max(1, int(len(losses) * LOSS_WINDOW)) :]
    row: dict[str, Any] = {
        "run": point.name,
        # as JSON gives them back (layers: a list), so that kept and new rows group alike
        **{k: list(v) if isinstance(v, tuple) else v for k, v in point.values.items()},
        "steps": steps,
        "train_loss": statistics.fmean(window) if window else None,
        "train_loss_std": statistics.pstdev(window) if len(window) > 1 else 0.0,
        "trainable_params": trainable,
        "stored_params": saved[-1]["stored_params"] if saved else None,
        "stored_bytes": saved[-1]["stored_bytes"] if saved else None,
        "prefix_bytes": _stored_bytes(folder / "prefix"),
        # the median: the first steps (allocation, warm-up) and evaluations do not count
        "step_time_s": round(statistics.median(r["seconds"] for r in trains), 4) if trains else None,
        "peak_mem_mb": max(peaks) if peaks else None,
        "seconds": round(seconds, 1),
        "loss_curve": losses,
    }
    if evals:
        best = max(evals, key=lambda r: r.get("BLEU", float("-inf")))
        row.update(
            best_BLEU=best.get("BLEU"),
            best_step=best["step"],
            final_BLEU=evals[-1].get("BLEU"),
            final_dev_loss=evals[-1].get("dev_loss"),
        )
    return row


def _stored_bytes(prefix_folder: Path) -> int | None:
    """What a user ships: the folded prefix tensors and its config (not the trainable extras)."""
    from prefixtune.engine.storage import CONFIG_FILE, TENSORS_FILE

    files = [prefix_folder / CONFIG_FILE, prefix_folder / TENSORS_FILE]
    if not all(f.is_file() for f in files):
        return None
    return sum(f.stat().st_size for f in files)


def check_folder(folder: Path, axes: dict[str, list], fixed: dict[str, Any]) -> None:
    """A sweep folder is new, or holds this same sweep (same axes and fixed settings); nothing is written."""
    plan = folder / PLAN_FILE
    wanted = {"axes": axes, "fixed": fixed}
    if plan.is_file():
        stored = json.loads(plan.read_text(encoding="utf-8"))
        # a setting added to prefixtune after the sweep began is missing from its plan: at its default,
        # it changes nothing the runs compute, so the sweep still continues
        stored["fixed"] = {
            **_new_settings_at_default(stored.get("fixed", {}), fixed),
            **stored.get("fixed", {}),
        }
        if stored != json.loads(json.dumps(wanted)):
            raise PrefixTuneError(
                f"{folder} holds a sweep with other settings; run that one again or choose a new --output"
            )
        return
    if folder.exists() and (not folder.is_dir() or any(p.name != LOCK_FILE for p in folder.iterdir())):
        raise PrefixTuneError(f"--output {folder} holds other files; choose a new or empty folder")


def _new_settings_at_default(stored: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    """The settings `wanted` has, `stored` lacks, and that are at their default in `wanted`."""
    defaults = flat.defaults(TrainConfig)
    return {
        name: value
        for name, value in wanted.items()
        if name not in stored and name in defaults and value == defaults[name]
    }


def open_sweep(folder: Path, axes: dict[str, list], fixed: dict[str, Any]) -> RunLock:
    """Take the sweep folder for this sweep (a lock held until `release`) and record its plan."""
    lock = RunLock(folder, "sweep").acquire()
    try:
        check_folder(folder, axes, fixed)  # again: the folder may have changed before the lock
        plan = folder / PLAN_FILE
        if not plan.is_file():
            plan.write_text(json.dumps({"axes": axes, "fixed": fixed}, indent=1) + "\n", encoding="utf-8")
    except BaseException:
        lock.release()
        raise
    return lock
