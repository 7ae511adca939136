"""The one training loop: AdamW on what trains (the prefixes, and a classifier's head; or a
baseline's weights), warmup and linear decay, clipping, accumulation, periodic evaluation keeping
the best prefix, early stopping, atomic checkpoints that resume to the same prefix, and Ctrl-C that
saves before it exits.

What differs between kinds of run comes in a `recipe.Task`: its batches and loss, its evaluation,
whether it checkpoints, what trains (`Task.method`, see `methods`). The runs: `generation.train`
(`prefixtune train`) and `classify.train_classifier` (`prefixtune train --task classify`).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from prefixtune.train import distributed, report
from prefixtune.train.checkpoint import load_checkpoint, save_checkpoint
from prefixtune.train.methods import stored_size
from prefixtune.train.recipe import Recipe, Task

_clock = time.perf_counter  # one clock for step times and the run's time (tests replace it)


@dataclass
class TrainResult:
    """What a finished (or interrupted) run left behind."""

    output: Path
    prefix_path: Path
    """What the run kept: OUTPUT/prefix, or a baseline's OUTPUT/model or OUTPUT/adapter (`methods`)."""
    steps: int
    best: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    stopped_early: bool = False
    model: Any = field(default=None, repr=False)
    """The PrefixModel as training left it (its "default" prefix is the last step's, not the best); a
    baseline's model (`Task.method.release` gives its base back)."""
    seconds: float = 0.0
    """Wall-clock time of the training loop (evaluations and checkpoints included) for the steps the
    run kept, summed over the processes that resumed it: what the run cost, not what this call took."""


@dataclass
class Cursor:
    """Where the run is in the data: epoch and batch index. Batches are re-derived from the seed."""

    seed: int
    plan: Callable[[torch.Generator], list[list[int]]]
    """One epoch's batches (`Task.plan`), drawn with a generator seeded by the seed and the epoch."""
    epoch: int = 0
    index: int = 0
    _batches: list[list[int]] | None = None

    def next(self) -> list[int]:
        if self._batches is None:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            self._batches = self.plan(generator)
        batch = self._batches[self.index]
        self.index += 1
        if self.index == len(self._batches):
            self.epoch, self.index, self._batches = self.epoch + 1, 0, None
        return batch

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}


class Settings(Protocol):
    """The loop's settings, as a run's config holds them (`TrainConfig`, `ClassifyConfig`); read only."""

    steps: int
    grad_accum: int
    warmup_steps: int
    weight_decay: float
    max_grad_norm: float
    eval_every: int
    patience: int
    seed: int

    @property
    def learning_rate(self) -> float: ...

    def to_dict(self) -> dict[str, Any]: ...


def run(
    config: Settings,
    task: Task,
    model,
    tokenizer,
    folder: Path,
    *,
    continuing: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train what `task.method` trains (`model.prefix_parameters()`: the prefixes, and a classifier's
    head; or a baseline's weights) for `config.steps` steps, in a run folder this process holds.

    Args:
        config: the run's settings (see `Settings`).
        task: what the kind of run brings (see `recipe.Task`).
        model: as `task.method.build` made it (a PrefixModel for the prefix).
        continuing: from the folder's checkpoint (a task with checkpoints only).
    """
    params = task.method.parameters(model)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_then_decay(config.warmup_steps, config.steps)
    )
    cursor = Cursor(config.seed, task.plan)
    state = _Run(config, task, folder, model, tokenizer, optimizer, scheduler, cursor)
    torch.manual_seed(config.seed)
    report.reset_peak_memory(model.device)
    if continuing:
        state.restore()
    elif distributed.current().main:  # what the run costs, beside what it reaches
        report.append_log(folder, _sizes(task, model, params))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stopper = _Interrupt()
    try:
        _loop(state, params, pad, progress, stopper)
    finally:
        stopper.restore()
    main = distributed.current().main
    if main and stopper.requested and state.resumable:
        state.checkpoint()
    elif main and not stopper.requested and task.evaluate is None:
        state.save()
    if main:
        report.plot_curve(folder)
    return TrainResult(
        folder,
        folder / task.method.folder,
        state.step,
        state.best,
        stopper.requested,
        state.stopped_early,
        model,
        state.seconds(),
    )


def _sizes(task: Task, model, params: list) -> dict[str, Any]:
    """The log's first record: the method, and how many values train out of the model's."""
    return {
        "kind": "params",
        "step": 0,
        "method": task.method.name,
        "trainable_params": sum(p.numel() for p in params),
        "total_params": sum(p.numel() for p in model.parameters()),
    }


def _loop(state: _Run, params, pad: int, progress: bool, stopper: _Interrupt) -> None:
    config, model, task = state.config, state.model, state.task
    optimizer, scheduler, cursor = state.optimizer, state.scheduler, state.cursor
    main = distributed.current().main
    shown = progress and main
    bar = tqdm(total=config.steps, initial=state.step, disable=not shown, unit="step", dynamic_ncols=True)
    model.train()
    try:
        while state.step < config.steps and not state.stopped_early:
            if distributed.any_rank(stopper.requested, model.device):  # every rank stops at the same step
                stopper.requested = True
                break
            record = _step(model, task.items, cursor, pad, params, optimizer, scheduler, config, task.recipe)
            state.step += 1
            if not task.counts_tokens:
                record = {k: v for k, v in record.items() if k not in ("tokens", "tokens_per_s")}
            record["step"] = state.step
            record["peak_mem_mb"] = report.peak_memory_mb(model.device)
            if main:
                report.append_log(state.folder, record)
            bar.update(1)
            postfix = {"loss": f"{record['loss']:.3f}"}
            if task.counts_tokens:
                postfix["tok_s"] = f"{record['tokens_per_s']:.0f}"
            bar.set_postfix(**postfix)
            _after_step(state)
    finally:
        bar.close()


@dataclass
class _Run:
    """A run as the loop drives it: what it trains with, and where it is."""

    config: Settings
    task: Task
    folder: Path
    model: Any
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    cursor: Cursor
    step: int = 0
    best: dict[str, float] = field(default_factory=dict)
    bad_evals: int = 0
    stopped_early: bool = False
    seconds_before: float = 0.0
    """Training time of the steps a resumed run took in earlier processes, from its checkpoint."""
    started: float = field(default_factory=lambda: _clock())

    @property
    def resumable(self) -> bool:
        return self.task.checkpoint_every is not None

    def seconds(self) -> float:
        """The run's training time so far, across resumptions (`TrainResult.seconds`)."""
        return self.seconds_before + _clock() - self.started

    def save(self) -> None:
        """Keep what trains as the run's result (OUTPUT/prefix, /model or /adapter); log its size."""
        result = self.folder / self.task.method.folder
        self.task.method.save(self.model, self.tokenizer, result, self.resumable)
        values, size = stored_size(result)
        report.append_log(
            self.folder, {"kind": "saved", "step": self.step, "stored_params": values, "stored_bytes": size}
        )

    def checkpoint(self) -> None:
        save_checkpoint(
            self.folder,
            {
                "step": self.step,
                "best": self.best,
                "bad_evals": self.bad_evals,
                "stopped_early": self.stopped_early,
                "cursor": self.cursor.state(),
                "trained": self.task.method.state(self.model),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "config": self.config.to_dict(),
                "seconds": self.seconds(),
            },
        )

    def restore(self) -> None:
        state = load_checkpoint(self.folder)
        # "prefix": a checkpoint written before the baselines, always a prefix's
        self.task.method.restore(self.model, state["trained"] if "trained" in state else state["prefix"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.cursor.epoch, self.cursor.index = state["cursor"]["epoch"], state["cursor"]["index"]
        self.step, self.best = state["step"], state["best"]
        self.bad_evals = state.get("bad_evals", self.bad_evals)
        self.stopped_early = state.get("stopped_early", self.stopped_early)
        if distributed.current().main:
            report.truncate_log(self.folder, state["step"])
        # time spent after the checkpoint was lost with the steps it made; a checkpoint written before
        # runs kept their time has only its steps' own times, a lower bound (no evaluations)
        seconds = state.get("seconds")
        if seconds is None and distributed.current().main:
            seconds = _logged_step_seconds(self.folder)
        self.seconds_before = seconds or 0.0
        self.started = _clock()


def _logged_step_seconds(folder: Path) -> float:
    return sum(r.get("seconds", 0.0) for r in report.read_log(folder) if r.get("kind") == "train")


def _step(model, encoded, cursor, pad, params, optimizer, scheduler, config, recipe: Recipe) -> dict:
    """One optimizer step over `grad_accum` micro-batches; the loss is averaged over the targets
    (target tokens; a classifier's rows).

    With several processes each runs its share of every micro-batch's rows; the normaliser is still
    the global batch's target count, so the summed gradients equal one process's.
    """
    start = _clock()
    global_rows = [cursor.next() for _ in range(config.grad_accum)]
    global_batches = [recipe.collate([encoded[i] for i in rows], pad) for rows in global_rows]
    targets = sum(recipe.targets(b) for b in global_batches)
    batches = global_batches
    if distributed.current().world > 1:
        shards = [distributed.shard(rows) for rows in global_rows]
        # a micro-batch smaller than the process count leaves some processes no rows
        batches = [recipe.collate([encoded[i] for i in rows], pad) for rows in shards if rows]
    total, tokens = 0.0, 0
    for batch in batches:
        loss, _ = recipe.loss(model, {k: v.to(model.device) for k, v in batch.items()})
        (loss / targets).backward()
        total += loss.item()
        tokens += int(batch["attention_mask"].sum())
    distributed.sum_gradients(params)
    total, tokens = distributed.total(total, model.device), int(distributed.total(tokens, model.device))
    if config.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    seconds = _clock() - start
    return {
        "kind": "train",
        "loss": total / targets,
        "lr": scheduler.get_last_lr()[0],
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "seconds": seconds,
    }


def _after_step(state: _Run) -> None:
    """Evaluate, keep the best prefix, stop early, checkpoint: whatever this step is due for."""
    step, config = state.step, state.config
    evaluated = False
    main = distributed.current().main
    if state.task.evaluate is not None and (step % config.eval_every == 0 or step == config.steps):
        if main:  # the other processes wait for its verdict on early stopping
            _evaluate(state)
        state.stopped_early = distributed.from_main(state.stopped_early)
        evaluated = True
    every = state.task.checkpoint_every
    if main and every is not None and (evaluated or step % every == 0 or step == config.steps):
        state.checkpoint()


def _evaluate(state: _Run) -> None:
    """Score the dev set; keep the prefix if it is the best so far, or count towards patience."""
    task, step = state.task, state.step
    scores = task.evaluate()
    report.append_log(state.folder, {"kind": "eval", "step": step, **scores})
    tqdm.write(task.describe(step, scores))
    if scores[task.best] > state.best.get(task.best, -1.0):
        others = {k: v for k, v in scores.items() if k != task.best}
        state.best = {task.best: scores[task.best], **others, "step": step}
        state.bad_evals = 0
        state.save()
    else:
        state.bad_evals += 1
        patience = state.config.patience
        if patience and state.bad_evals >= patience:
            state.stopped_early = True
            tqdm.write(f"stopping early: no better dev {task.best} in {patience} evaluations")


def _warmup_then_decay(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


class _Interrupt:
    """The first Ctrl-C asks the run to checkpoint and stop after the current step; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("interrupted: saving a checkpoint after this step (Ctrl-C again to abort)")

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
