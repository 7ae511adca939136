"""The generation run: what `prefixtune train` runs (decoder-only `[x; y]` or encoder-decoder, see
`recipe.recipe_for`), on the one loop (`loop.run`): length-bucketed batches, dev loss and BLEU, the
best prefix by BLEU, early stopping, checkpoints that resume exactly. `--method` trains a baseline
instead of a prefix on all of it (`methods`).
"""

from __future__ import annotations

import json
import random
from functools import partial
from pathlib import Path

from tqdm.auto import tqdm

from prefixtune.data import Example, read_dataset, select_categories
from prefixtune.errors import PrefixTuneError
from prefixtune.train import distributed
from prefixtune.train.checkpoint import CHECKPOINT, remove_stale_temporaries
from prefixtune.train.config import RESUMABLE_CHANGES, TrainConfig
from prefixtune.train.encode import bucketed_batches
from prefixtune.train.evaluate import dev_loss, evaluate_prefix
from prefixtune.train.loop import TrainResult, run
from prefixtune.train.methods import METHODS
from prefixtune.train.recipe import Task, recipe_for
from prefixtune.train.run_folder import RUN_FILE, RunLock, check_folder, clear_dead_start
from prefixtune.train.seq2seq import guess_task

DEV_LOSS_EXAMPLES = 64


def train(
    config: TrainConfig, *, resume: bool = False, model_and_tokenizer=None, progress: bool = True
) -> TrainResult:
    """Run (or resume) training as `config` says; see `TrainConfig` for every setting.

    Under `torchrun` / `accelerate launch` the processes split each global batch (see `distributed`);
    the run ends with the prefix one process would reach, and only rank 0 writes.

    Args:
        model_and_tokenizer: an already loaded (base model, tokenizer), instead of loading `config.base`.
            Its weights are not changed: `--method finetune` trains a copy, and the result's model
            gives the base back with `METHODS[config.method].release`.
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
    method = METHODS[config.method]
    # bad layers, a family LoRA knows no targets for
    model = method.build(config, distributed.place(base), tokenizer, model_and_tokenizer is not None)
    opened = distributed.on_main(open_output, config, resume)
    lock, continuing = opened or (None, False)
    try:
        task = generation_task(config, model, tokenizer, train_set, dev_set, method)
        folder, continuing = Path(config.output), distributed.from_main(continuing)
        return run(config, task, model, tokenizer, folder, continuing=continuing, progress=progress)
    finally:
        if lock is not None:
            lock.release()


def generation_task(
    config: TrainConfig, model, tokenizer, train_set: list[Example], dev_set, method=METHODS["prefix"]
) -> Task:
    """What a generation run brings to the loop (see `recipe.Task`)."""
    # decoder-only: [x; y] in one stream; encoder-decoder: x to the encoder, y as labels (train/seq2seq.py)
    recipe = recipe_for(model)
    encoded = recipe.encode(train_set, tokenizer, config.max_source_tokens, config.max_target_tokens)
    return Task(
        recipe=recipe,
        items=encoded,
        plan=partial(bucketed_batches, [len(e.input_ids) for e in encoded], config.batch_size),
        evaluate=partial(_dev_scores, config, model, tokenizer, dev_set) if dev_set else None,
        best="BLEU",
        describe=lambda step, s: f"step {step}: dev loss {s['dev_loss']:.3f}, dev BLEU {s['BLEU']:.2f}",
        checkpoint_every=config.checkpoint_every,
        method=method,
    )


def _dev_scores(config: TrainConfig, model, tokenizer, dev_set: list[Example]) -> dict[str, float]:
    """The dev loss (on the first examples) and the BLEU of decoding the dev set's sources."""
    loss = dev_loss(
        model,
        tokenizer,
        dev_set[:DEV_LOSS_EXAMPLES],
        config.batch_size,
        (config.max_source_tokens, config.max_target_tokens),
    )
    scores, _ = evaluate_prefix(
        model,
        tokenizer,
        dev_set,
        metrics=("BLEU",),
        max_sources=config.eval_sources,
        batch_size=config.batch_size,
        max_new_tokens=config.max_new_tokens,
        num_beams=config.num_beams,
        max_source_tokens=config.max_source_tokens,
    )
    return {"dev_loss": loss, "BLEU": scores["BLEU"]}


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
    topics = {"keep": config.categories, "drop": config.exclude_categories}
    train_set = select_categories(read_dataset(config.train, **columns), config.train, **topics)
    if 0 < config.max_train_examples < len(train_set):
        # A low-data run trains on a random subsample drawn with the run's seed, as Li & Liang's
        # low-data experiments do: several seeds then also spread over which examples were seen.
        train_set = random.Random(config.seed).sample(train_set, config.max_train_examples)
    dev_set = (
        select_categories(read_dataset(config.dev, **columns), config.dev, **topics) if config.dev else []
    )
    return train_set, dev_set


def _load_base(name: str):
    from prefixtune.loading import load_base

    return load_base(name, task=guess_task(name))
