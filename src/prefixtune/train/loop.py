"""One training run: AdamW on the prefix only, warmup and linear decay, clipping, accumulation,
length-bucketed batches, periodic evaluation keeping the best prefix, early stopping, atomic
checkpoints that resume to the same prefix, and Ctrl-C that saves before it exits.
"""

from __future__ import annotations

import json
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from prefixtune.data import Example, read_dataset
from prefixtune.engine.model import DEFAULT_NAME
from prefixtune.engine.wrap import wrap
from prefixtune.errors import PrefixTuneError
from prefixtune.train import distributed, report
from prefixtune.train.checkpoint import CHECKPOINT, load_checkpoint, remove_stale_temporaries, save_checkpoint
from prefixtune.train.config import RESUMABLE_CHANGES, TrainConfig
from prefixtune.train.encode import bucketed_batches
from prefixtune.train.evaluate import dev_loss, evaluate_prefix
from prefixtune.train.run_folder import PREFIX_DIR, RUN_FILE, RunLock, check_folder, clear_dead_start
from prefixtune.train.seq2seq import guess_task, recipe_for

DEV_LOSS_EXAMPLES = 64


@dataclass
class TrainResult:
    """What a finished (or interrupted) run left behind."""

    output: Path
    prefix_path: Path
    steps: int
    best: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    stopped_early: bool = False
    model: Any = field(default=None, repr=False)
    """The PrefixModel as training left it (its "default" prefix is the last step's, not the best)."""


@dataclass
class Cursor:
    """Where the run is in the data: epoch and batch index. Batches are re-derived from the seed."""

    seed: int
    batch_size: int
    lengths: list[int]
    epoch: int = 0
    index: int = 0
    _batches: list[list[int]] | None = None

    def next(self) -> list[int]:
        if self._batches is None:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            self._batches = bucketed_batches(self.lengths, self.batch_size, generator)
        batch = self._batches[self.index]
        self.index += 1
        if self.index == len(self._batches):
            self.epoch, self.index, self._batches = self.epoch + 1, 0, None
        return batch

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}


def train(
    config: TrainConfig, *, resume: bool = False, model_and_tokenizer=None, progress: bool = True
) -> TrainResult:
    """Run (or resume) training as `config` says; see `TrainConfig` for every setting.

    Under `torchrun` / `accelerate launch` the processes split each global batch (see `distributed`);
    the run ends with the prefix one process would reach, and only rank 0 writes.

    Args:
        model_and_tokenizer: an already loaded (base model, tokenizer), instead of loading `config.base`.
    """
    started = distributed.join()
    try:
        return _train(config, resume, model_and_tokenizer, progress)
    finally:
        distributed.leave(started)


def _train(config: TrainConfig, resume: bool, model_and_tokenizer, progress: bool) -> TrainResult:
    # Everything that can fail on a user's mistake fails before the run folder is created or changed:
    train_set, dev_set = load_data(config)  # bad data
    distributed.on_main(check_output, config, resume)  # a folder holding another run, or nothing to resume
    base, tokenizer = model_and_tokenizer or _load_base(config.base)  # a bad base model
    model = wrap(distributed.place(base))
    model.add(DEFAULT_NAME, config.prefix_config(), tokenizer)  # bad layers
    opened = distributed.on_main(open_output, config, resume)
    lock, continuing = opened or (None, False)
    try:
        data = (train_set, dev_set)
        return _run(config, model, tokenizer, data, distributed.from_main(continuing), progress)
    finally:
        if lock is not None:
            lock.release()


def _run(config: TrainConfig, model, tokenizer, data, continuing: bool, progress: bool) -> TrainResult:
    """The training loop proper, in a run folder this process holds; `continuing`: from its checkpoint."""
    main = distributed.current().main
    folder = Path(config.output)
    train_set, dev_set = data
    # decoder-only: [x; y] in one stream; encoder-decoder: x to the encoder, y as labels (train/seq2seq.py)
    recipe = recipe_for(model)
    encoded = recipe.encode(train_set, tokenizer, config.max_source_tokens, config.max_target_tokens)
    params = model.prefix_parameters()
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_then_decay(config.warmup_steps, config.steps)
    )
    cursor = Cursor(config.seed, config.batch_size, [len(e.input_ids) for e in encoded])
    run = {"step": 0, "best": {}, "bad_evals": 0}
    torch.manual_seed(config.seed)
    if continuing:
        _restore(folder, model, optimizer, scheduler, cursor, run)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    context = _RunContext(config, folder, model, tokenizer, dev_set, optimizer, scheduler, cursor, run)
    stopper = _Interrupt()
    shown = progress and main
    bar = tqdm(total=config.steps, initial=run["step"], disable=not shown, unit="step", dynamic_ncols=True)
    model.train()
    try:
        while run["step"] < config.steps and not run.get("stopped_early"):
            if distributed.any_rank(stopper.requested, model.device):  # every rank stops at the same step
                stopper.requested = True
                break
            record = _step(model, encoded, cursor, pad, params, optimizer, scheduler, config)
            run["step"] += 1
            record["step"] = run["step"]
            if main:
                report.append_log(folder, record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
            _after_step(context)
    finally:
        bar.close()
        stopper.restore()
    if main and stopper.requested:
        context.checkpoint()
    elif main and not dev_set:
        model.save(folder / PREFIX_DIR, include_trainable=True)
    if main:
        report.plot_curve(folder)
    return TrainResult(
        folder,
        folder / PREFIX_DIR,
        run["step"],
        run["best"],
        stopper.requested,
        bool(run.get("stopped_early")),
        model,
    )


@dataclass
class _RunContext:
    config: TrainConfig
    folder: Path
    model: Any
    tokenizer: Any
    dev_set: list[Example]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    cursor: Cursor
    run: dict[str, Any]

    def checkpoint(self) -> None:
        prefix = self.model.prefixes["default"]
        save_checkpoint(
            self.folder,
            {
                "step": self.run["step"],
                "best": self.run["best"],
                "bad_evals": self.run["bad_evals"],
                "stopped_early": self.run.get("stopped_early", False),
                "cursor": self.cursor.state(),
                "prefix": prefix.reparam.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "config": self.config.to_dict(),
            },
        )


def _step(model, encoded, cursor, pad, params, optimizer, scheduler, config) -> dict[str, Any]:
    """One optimizer step over `grad_accum` micro-batches; the loss is averaged over target tokens.

    With several processes each runs its share of every micro-batch's rows; the normaliser is still
    the global batch's target count, so the summed gradients equal one process's.
    """
    start = time.perf_counter()
    recipe = recipe_for(model)
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
    seconds = time.perf_counter() - start
    return {
        "kind": "train",
        "loss": total / targets,
        "lr": scheduler.get_last_lr()[0],
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "seconds": seconds,
    }


def _after_step(ctx: _RunContext) -> None:
    """Evaluate, keep the best prefix, stop early, checkpoint: whatever this step is due for."""
    step, config = ctx.run["step"], ctx.config
    evaluated = False
    main = distributed.current().main
    if ctx.dev_set and (step % config.eval_every == 0 or step == config.steps):
        if main:  # the other processes wait for its verdict on early stopping
            _evaluate(ctx)
        ctx.run["stopped_early"] = distributed.from_main(ctx.run.get("stopped_early", False))
        evaluated = True
    if main and (evaluated or step % config.checkpoint_every == 0 or step == config.steps):
        ctx.checkpoint()


def _evaluate(ctx: _RunContext) -> None:
    config, run = ctx.config, ctx.run
    loss = dev_loss(
        ctx.model,
        ctx.tokenizer,
        ctx.dev_set[:DEV_LOSS_EXAMPLES],
        config.batch_size,
        (config.max_source_tokens, config.max_target_tokens),
    )
    scores, _ = evaluate_prefix(
        ctx.model,
        ctx.tokenizer,
        ctx.dev_set,
        metrics=("BLEU",),
        max_sources=config.eval_sources,
        batch_size=config.batch_size,
        max_new_tokens=config.max_new_tokens,
        num_beams=config.num_beams,
        max_source_tokens=config.max_source_tokens,
    )
    report.append_log(ctx.folder, {"kind": "eval", "step": run["step"], "dev_loss": loss, **scores})
    tqdm.write(f"step {run['step']}: dev loss {loss:.3f}, dev BLEU {scores['BLEU']:.2f}")
    if scores["BLEU"] > run["best"].get("BLEU", -1.0):
        run["best"] = {"BLEU": scores["BLEU"], "dev_loss": loss, "step": run["step"]}
        run["bad_evals"] = 0
        ctx.model.save(ctx.folder / PREFIX_DIR, include_trainable=True)
    else:
        run["bad_evals"] += 1
        if config.patience and run["bad_evals"] >= config.patience:
            run["stopped_early"] = True
            tqdm.write(f"stopping early: no better dev BLEU in {config.patience} evaluations")


def _restore(folder, model, optimizer, scheduler, cursor, run) -> None:
    state = load_checkpoint(folder)
    model.prefixes["default"].reparam.load_state_dict(state["prefix"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    cursor.epoch, cursor.index = state["cursor"]["epoch"], state["cursor"]["index"]
    for key in ("step", "best", "bad_evals", "stopped_early"):
        run[key] = state.get(key, run.get(key))
    if distributed.current().main:
        report.truncate_log(folder, state["step"])


def check_output(config: TrainConfig, resume: bool) -> bool:
    """Check the run folder without changing it: new, or holding this same run (with resume), or a run
    that never reached a checkpoint (it starts afresh). Nothing is overwritten.

    Returns whether the run continues from a checkpoint.
    """
    folder = Path(config.output)
    check_folder(folder)
    run_file = folder / RUN_FILE
    has_checkpoint = (folder / CHECKPOINT).is_file()
    if resume:
        if not run_file.exists():
            raise PrefixTuneError(f"nothing to resume in {folder}: it holds no {RUN_FILE}")
        stored = TrainConfig.from_dict(json.loads(run_file.read_text(encoding="utf-8")))
        changed = sorted(
            k for k, v in stored.to_dict().items() if config.to_dict()[k] != v and k not in RESUMABLE_CHANGES
        )
        if changed:
            raise PrefixTuneError(
                f"{folder} holds a run with other settings ({', '.join(changed)}); "
                "resume it with its own settings or train into a new --output folder"
            )
        return has_checkpoint
    if has_checkpoint:
        raise PrefixTuneError(
            f"{folder} already holds a run; pass --resume to continue it, or choose another --output folder"
        )
    return False


def open_output(config: TrainConfig, resume: bool) -> tuple[RunLock, bool]:
    """Take the run folder for this run (a lock held until `release`) and set it up.

    Returns the lock and whether the run continues from a checkpoint. Without one, whatever an earlier
    start left (settings, a partial log) is cleared and this run's settings are written.
    """
    folder = Path(config.output)
    lock = RunLock(folder, "train").acquire()
    try:
        continuing = check_output(config, resume)  # again: the folder may have changed before the lock
        if continuing:
            remove_stale_temporaries(folder)
        else:
            if resume:
                tqdm.write(f"{folder} holds no checkpoint yet: the run starts afresh")
            clear_dead_start(folder)
            (folder / RUN_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    except BaseException:
        lock.release()
        raise
    return lock, continuing


def load_data(config: TrainConfig) -> tuple[list[Example], list[Example]]:
    """Read the training and dev sets; refuse an empty training set."""
    if not config.train:
        raise PrefixTuneError("no training data: pass --train PATH")
    columns = {
        "fmt": config.format,
        "source_column": config.source_column,
        "target_column": config.target_column,
        "column_options": ("--source-column", "--target-column"),  # TrainConfig's fields are the flags
    }
    train_set = read_dataset(config.train, **columns)
    if 0 < config.max_train_examples < len(train_set):
        # A low-data run trains on a random subsample drawn with the run's seed, as Li & Liang's
        # low-data experiments do: several seeds then also spread over which examples were seen.
        train_set = random.Random(config.seed).sample(train_set, config.max_train_examples)
    dev_set = read_dataset(config.dev, **columns) if config.dev else []
    return train_set, dev_set


def _load_base(name: str):
    from prefixtune.loading import load_base

    return load_base(name, task=guess_task(name))


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
