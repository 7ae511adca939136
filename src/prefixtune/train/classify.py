"""Training and evaluating a classifier prefix (P-Tuning v2): what `prefixtune train --task classify`,
`prefixtune evaluate` (on a prefix folder holding a head) and `prefixtune classify` run.

The encoder is frozen; the prefix (every layer) and the task head are trained with AdamW, one
learning rate, warmup then linear decay, gradient clipping; the dev accuracy is measured every
`eval_every` steps and the best prefix (with its head) is kept. Unlike `train.loop`, a classifier run
does not resume from a checkpoint: runs are short, and a killed run is simply started again (in the
same folder while it has saved no prefix, else in a new one; see `check_folder`).
"""

from __future__ import annotations

import contextlib
import json
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
from prefixtune.train import report, run_folder
from prefixtune.train.checkpoint import CHECKPOINT
from prefixtune.train.classify_config import ClassifyConfig
from prefixtune.train.dropout import dropout_off
from prefixtune.train.heads import train_head
from prefixtune.train.loop import PREFIX_DIR, RUN_FILE, TrainResult, _Interrupt, _warmup_then_decay

TASK = "sequence-classification"


ClassifyResult = TrainResult
"""What a finished (or interrupted) classifier run left behind: a `TrainResult` (it never stops early;
its `model` holds the last step's prefix and head, not the best)."""


def read_labelled(path: str, config: ClassifyConfig) -> list[Example]:
    """(text, label) pairs from a CSV/TSV/JSONL file; the label is kept as written."""
    return read_dataset(
        path,
        fmt=config.format,
        source_column=config.text_column,
        target_column=config.label_column,
        column_options=("--text-column", "--label-column"),  # ClassifyConfig's fields are the flags
    )


def label_names(examples: list[Example]) -> list[str]:
    """The classes, in a stable order: numerically when every label is an integer (SST-2's 0/1)."""
    names = {e.target.strip() for e in examples}
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def label_ids(examples: list[Example], names: list[str], path: str) -> torch.Tensor:
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({e.target.strip() for e in examples} - set(index))
    if unknown:
        raise PrefixTuneError(
            f"{path} has labels {unknown[:5]} that the classifier was not trained on (it knows {names})"
        )
    return torch.tensor([index[e.target.strip()] for e in examples])


@torch.no_grad()
def class_logits(
    model, tokenizer, texts: list[str], batch_size: int = 64, max_tokens: int = 128
) -> torch.Tensor:
    """The class logits of each text: (N, C). `model` is a PrefixModel (or any model) with a sequence head."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        batch = _tokenize(tokenizer, texts[start : start + batch_size], max_tokens)
        out.append(model(**batch).logits.float())
    model.train(was_training)
    return torch.cat(out)


def evaluate_classifier(
    model, tokenizer, examples: list[Example], names: list[str], path: str = "data", **batching
) -> dict[str, float]:
    """Accuracy and mean cross-entropy (`dev_loss`) of the predictions on `examples`."""
    gold = label_ids(examples, names, path)
    logits = class_logits(model, tokenizer, [e.source for e in examples], **batching)
    return {
        "accuracy": (logits.argmax(-1) == gold).float().mean().item(),
        "dev_loss": torch.nn.functional.cross_entropy(logits, gold).item(),
    }


def _tokenize(tokenizer, texts: list[str], max_tokens: int) -> dict[str, torch.Tensor]:
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def check_folder(config: ClassifyConfig) -> None:
    """The run folder is new or empty, or holds a run that saved nothing (it is started again).

    A classifier run does not resume, so one that saved a prefix is kept and refused as a target.
    """
    folder = Path(config.output)
    run_folder.check_folder(folder)
    if (folder / PREFIX_DIR).exists() or (folder / CHECKPOINT).exists():
        raise PrefixTuneError(
            f"--output {folder} already holds a run that saved a prefix; a classifier run does not "
            "resume: choose another --output folder"
        )


def open_folder(config: ClassifyConfig) -> run_folder.RunLock:
    """Take the run folder (a lock held until `release`), clear what a start that saved nothing left,
    and write this run's settings."""
    folder = Path(config.output)
    lock = run_folder.RunLock(folder, "train --task classify").acquire()
    try:
        check_folder(config)  # again: the folder may have changed before the lock
        run_folder.clear_dead_start(folder)
        record = {"task": "classify", **config.to_dict()}
        (folder / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        lock.release()
        raise
    return lock


def load_classifier_base(base: str, labels: list[str]):
    """The base encoder with a fresh sequence-classification head for `labels`, and its tokenizer."""
    from prefixtune.loading import load_base

    model, tokenizer = load_base(base, task=TASK, num_labels=len(labels))
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {n: i for i, n in enumerate(labels)}
    return model, tokenizer


def train_classifier(
    config: ClassifyConfig, *, model_and_tokenizer=None, progress: bool = True
) -> ClassifyResult:
    """Run a classifier prefix training as `config` says (see `ClassifyConfig`).

    Args:
        model_and_tokenizer: a loaded (base with a sequence head, tokenizer) instead of `config.base`.
    """
    # Everything that can fail on a user's mistake fails before the run folder is created or changed:
    train_set, dev_set, names = _read_data(config)  # bad data
    targets = label_ids(train_set, names, config.train)
    check_folder(config)  # a folder holding something else
    base, tokenizer = model_and_tokenizer or load_classifier_base(config.base, names)  # a bad base
    base.config.id2label = dict(enumerate(names))
    model = wrap(base)
    model.add(DEFAULT_NAME, config.prefix_config(), tokenizer)  # bad layers
    lock = open_folder(config)
    try:
        return _run(config, model, tokenizer, (train_set, targets, dev_set, names), progress)
    finally:
        lock.release()


def _run(config: ClassifyConfig, model, tokenizer, data, progress: bool) -> ClassifyResult:
    """The training loop proper, in a run folder this process holds."""
    train_set, targets, dev_set, names = data
    folder = Path(config.output)
    train_head(model, seed=config.seed, pooling=config.pooling)  # a fresh head, seeded
    params = model.prefix_parameters()  # the prefix, then the head
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_then_decay(config.warmup_steps, config.steps)
    )
    run = _Run(config, folder, model, tokenizer, dev_set, names)
    order = _Order(len(train_set), config.batch_size, config.seed)
    torch.manual_seed(config.seed)
    stopper = _Interrupt()
    bar = tqdm(total=config.steps, disable=not progress, unit="step", dynamic_ncols=True)
    model.train()
    dropout = dropout_off(model) if config.dropout == "off" else contextlib.nullcontext()
    try:
        with dropout:
            while run.step < config.steps and not stopper.requested:
                rows = order.next()
                texts = [train_set[i].source for i in rows]
                record = _step(model, tokenizer, texts, targets[rows], params, optimizer, scheduler, config)
                run.step += 1
                report.append_log(folder, {**record, "step": run.step})
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}")
                if dev_set and (run.step % config.eval_every == 0 or run.step == config.steps):
                    run.evaluate()
    finally:
        bar.close()
        stopper.restore()
    if not dev_set and not stopper.requested:
        model.save(folder / PREFIX_DIR)
    report.plot_curve(folder)
    return ClassifyResult(
        folder, folder / PREFIX_DIR, run.step, run.best, interrupted=stopper.requested, model=model
    )


def _read_data(config: ClassifyConfig) -> tuple[list[Example], list[Example], list[str]]:
    train_set = read_labelled(config.train, config)
    if config.max_train_examples:
        train_set = train_set[: config.max_train_examples]
    dev_set = read_labelled(config.dev, config) if config.dev else []
    names = label_names(train_set)
    if len(names) < 2:
        raise PrefixTuneError(f"{config.train} has a single label {names}; a classifier needs two or more")
    if dev_set:
        label_ids(dev_set, names, str(config.dev))  # unknown dev labels fail before training
    return train_set, dev_set, names


def _step(model, tokenizer, texts, labels, params, optimizer, scheduler, config) -> dict[str, Any]:
    """One optimizer step on one batch (mean cross-entropy), gradients clipped."""
    start = time.perf_counter()
    batch = _tokenize(tokenizer, texts, config.max_tokens)
    loss = model(**batch, labels=labels).loss
    loss.backward()
    if config.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    return {"kind": "train", "loss": loss.item(), "lr": scheduler.get_last_lr()[0], "seconds": seconds}


class _Order:
    """Shuffled batches of example indices, a new permutation each epoch, fixed by the seed."""

    def __init__(self, count: int, batch_size: int, seed: int) -> None:
        self.count, self.batch_size, self.seed = count, batch_size, seed
        self.epoch, self.position = 0, 0
        self.permutation = self._permute()

    def _permute(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.count, generator=generator)

    def next(self) -> torch.Tensor:
        if self.position >= self.count:  # a new epoch (the last batch of the previous one may be short)
            self.epoch, self.position = self.epoch + 1, 0
            self.permutation = self._permute()
        rows = self.permutation[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return rows


@dataclass
class _Run:
    config: ClassifyConfig
    folder: Path
    model: Any
    tokenizer: Any
    dev_set: list[Example]
    names: list[str]
    step: int = 0
    best: dict[str, float] = field(default_factory=dict)

    def evaluate(self) -> None:
        """Dev accuracy; the best prefix and head so far are saved to OUTPUT/prefix."""
        scores = evaluate_classifier(
            self.model, self.tokenizer, self.dev_set, self.names, str(self.config.dev),
            batch_size=2 * self.config.batch_size, max_tokens=self.config.max_tokens,
        )  # fmt: skip
        report.append_log(self.folder, {"kind": "eval", "step": self.step, **scores})
        tqdm.write(f"step {self.step}: dev accuracy {100 * scores['accuracy']:.2f}")
        if scores["accuracy"] > self.best.get("accuracy", -1.0):
            self.best = {**scores, "step": self.step}
            self.model.save(self.folder / PREFIX_DIR)


__all__ = [
    "ClassifyResult",
    "class_logits",
    "evaluate_classifier",
    "label_names",
    "load_classifier_base",
    "train_classifier",
]
