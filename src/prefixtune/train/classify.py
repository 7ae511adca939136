"""Training and evaluating a classifier prefix (P-Tuning v2): what `prefixtune train --task classify`,
`prefixtune evaluate` (on a prefix folder holding a head) and `prefixtune classify` run.

The encoder is frozen; the prefix (every layer) and the task head are trained on the one loop
(`loop.run`: AdamW, one learning rate, warmup then linear decay, gradient clipping) with this
recipe: shuffled batches of texts, the summed cross-entropy of their labels, the dev accuracy every
`eval_every` steps, the best prefix (with its head) kept. Unlike a generation run, a classifier run
writes no checkpoint and does not resume: runs are short, and a killed run is simply started again
(in the same folder while it has saved no prefix, else in a new one; see `check_folder`).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch.nn import functional

from prefixtune.data import Example, read_dataset
from prefixtune.engine.model import DEFAULT_NAME
from prefixtune.engine.wrap import wrap
from prefixtune.errors import PrefixTuneError
from prefixtune.train import run_folder
from prefixtune.train.checkpoint import CHECKPOINT
from prefixtune.train.classify_config import ClassifyConfig
from prefixtune.train.dropout import dropout_off
from prefixtune.train.heads import train_head
from prefixtune.train.loop import TrainResult, run
from prefixtune.train.recipe import Recipe, Task
from prefixtune.train.run_folder import PREFIX_DIR, RUN_FILE

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
    """The run on the one loop, in a run folder this process holds."""
    train_set, targets, dev_set, names = data
    train_head(model, seed=config.seed, pooling=config.pooling)  # a fresh head, seeded
    batching = {"batch_size": 2 * config.batch_size, "max_tokens": config.max_tokens}
    scores = partial(evaluate_classifier, model, tokenizer, dev_set, names, str(config.dev), **batching)
    task = Task(
        recipe=classifier_recipe(tokenizer, config.max_tokens),
        items=[Labelled(e.source, int(t)) for e, t in zip(train_set, targets, strict=True)],
        plan=partial(shuffled_batches, len(train_set), config.batch_size),
        evaluate=scores if dev_set else None,
        best="accuracy",
        describe=lambda step, s: f"step {step}: dev accuracy {100 * s['accuracy']:.2f}",
        counts_tokens=False,
    )
    with dropout_off(model) if config.dropout == "off" else contextlib.nullcontext():
        return run(config, task, model, tokenizer, Path(config.output), progress=progress)


@dataclass(frozen=True)
class Labelled:
    """One training example of a classifier: its text and its class index."""

    text: str
    label: int


def classifier_recipe(tokenizer, max_tokens: int) -> Recipe:
    """Texts tokenised per batch (padded, cut at `max_tokens`), the loss summed over the batch's rows."""

    def collate(items: list[Labelled], pad: int) -> dict[str, torch.Tensor]:
        batch = _tokenize(tokenizer, [item.text for item in items], max_tokens)
        return {**batch, "labels": torch.tensor([item.label for item in items])}

    return Recipe(collate=collate, loss=_summed_cross_entropy, targets=_rows)


def _summed_cross_entropy(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """The cross-entropy of the rows' labels, summed (the loop divides by the rows: the mean)."""
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits  # (B, C)
    labels = batch["labels"]
    return functional.cross_entropy(logits, labels, reduction="sum"), labels.shape[0]


def _rows(batch: dict[str, torch.Tensor]) -> int:
    return batch["labels"].shape[0]


def shuffled_batches(count: int, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """One epoch of batches: a permutation of the examples in consecutive slices (the last may be short)."""
    order = torch.randperm(count, generator=generator).tolist()
    return [order[start : start + batch_size] for start in range(0, count, batch_size)]


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


__all__ = [
    "ClassifyResult",
    "class_logits",
    "evaluate_classifier",
    "label_names",
    "load_classifier_base",
    "train_classifier",
]
