"""Task heads trained together with the prefix, as in P-Tuning v2 (Liu et al., 2022).

A classifier is a Hugging Face `...ForSequenceClassification` or `...ForTokenClassification` model
(see `loading.load_base(..., task=...)`): a frozen backbone plus a small head (BERT: dropout and a
linear layer on the pooled first token; RoBERTa/ELECTRA: dense, tanh, linear on the first token;
token classification: a linear layer on every token). The prefix and the head are trained; the
backbone, pooler included, stays frozen, as P-Tuning v2 does.

`add_prefix` makes a classifier's head trainable by default (its parameters join
`prefix_parameters()`; `train_head=False` keeps it frozen), so that training what `prefix_parameters()`
returns never trains a prefix against a random frozen head. The head is saved with the prefix as
`head.safetensors` and restored by `load_prefix`: a `Head` kept in `PrefixModel.attachments["head"]`,
which the engine trains and saves with every prefix without knowing what it is. It belongs to the
base model, so a PrefixModel has one head, shared by all its prefixes: rows of one batch can carry
different prefixes but not different heads.

Where this departs from P-Tuning v2: its code applies dropout to the prefix keys/values while
training; here the prefix gets none (only the frozen model's own dropout runs, unless the classifier
recipe's `--dropout off` switches it off too). Its heads are
always a linear layer on BERT's pooler output; here each family keeps its own Hugging Face head.

Pooling (`pooling="mean"`, the classifier recipe's default): every family's sequence head reads the
first token of the backbone's output. With the backbone frozen, that one vector is what the model
was pretrained to put there, which for a sentence-embedding model such as all-MiniLM-L6-v2 is not
the sentence's summary: it was trained to be read as the mean over the tokens. Mean pooling writes,
before the head, the mean over each row's real tokens into the first token's place (and runs the
backbone's own pooler again on it, as BERT's sits inside the backbone). `pooling="first"` is P-Tuning
v2's choice. On SST-2 with MiniLM-L6 the mean gave about one point more (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from prefixtune.engine.model import PrefixModel
from prefixtune.engine.storage import Extra, read_extra
from prefixtune.errors import PrefixTuneError
from prefixtune.loading import NEW_HEAD

HEAD = "head"
"""The head's name among `PrefixModel.attachments`, and so its file's: `head.safetensors`."""
HEAD_FILE = f"{HEAD}.safetensors"
POOLINGS = ("first", "mean")
CLASSIFIERS = ("ForSequenceClassification", "ForTokenClassification")
"""Class-name endings of the Hugging Face models whose head trains with the prefix by default."""


def is_classifier(base: nn.Module) -> bool:
    """A Hugging Face classifier: a backbone plus a task head (`...ForSequenceClassification`,
    `...ForTokenClassification`), unlike a language model whose LM head is part of the pretrained model."""
    return type(base).__name__.endswith(CLASSIFIERS)


def default_head(model: PrefixModel, train: bool) -> None:
    """What `add_prefix` does with a classifier's head: make it trainable with the prefixes (`train`,
    the default, as P-Tuning v2 and PEFT do), or leave it frozen, warning if it is new and so random."""
    if not is_classifier(model.base):
        return
    if train:
        head = head_of(model)
        train_head(model, reset=False, pooling=head.pooling if head is not None else "first")
    else:
        warn_if_untrained(model, "add_prefix(..., train_head=False) keeps it frozen", stacklevel=4)


def warn_if_untrained(model: PrefixModel, why: str, stacklevel: int = 3) -> None:
    """Warn when the base's head is new (missing from its checkpoint) and neither trained nor restored.

    Args:
        stacklevel: the warning points at the caller this many frames up (the user's call).
    """
    new = getattr(model.base, NEW_HEAD, ())
    head = head_of(model)
    if new and not (head is not None and head.names):
        warnings.warn(
            f"the task head of {type(model.base).__name__} ({', '.join(new)}) was newly initialised, as "
            f"its checkpoint has none, and {why}: its outputs are random until it is trained "
            "(prefixtune.train.heads.train_head) or restored (load_prefix of a prefix saved with its head)",
            UserWarning,
            stacklevel=stacklevel,
        )


@dataclass
class Head:
    """The task head a PrefixModel trains with its prefixes (an `engine.model.Attachment`)."""

    base: nn.Module
    names: tuple[str, ...] = ()
    """The base's top-level modules that form the head, saved with every prefix. Empty: no head is
    trained (the whole base is frozen)."""
    pooling: str = "first"
    """What the sequence head reads: the first token, or the mean of the real tokens (`mean`)."""
    handle: RemovableHandle | None = None
    """The mean pooling's forward hook on the backbone, if any."""

    def parameters(self) -> list[nn.Parameter]:
        modules = dict(self.base.named_children())
        return [p for name in self.names for p in modules[name].parameters()]

    def extra(self) -> Extra | None:
        """The trained head's weights, keyed as in the base's state dict (None when no head is trained)."""
        modules = dict(self.base.named_children())
        state = {
            f"{name}.{key}": value.detach().float().cpu().contiguous()
            for name in self.names
            for key, value in modules[name].state_dict().items()
        }
        return Extra(state, self.metadata()) if state else None

    def metadata(self) -> dict[str, str]:
        labels = {str(k): v for k, v in (getattr(self.base.config, "id2label", None) or {}).items()}
        return {
            "architecture": type(self.base).__name__,
            "id2label": json.dumps(labels),
            "pooling": self.pooling,
        }

    def release(self) -> None:
        """Remove the pooling hook (`PrefixModel.unload` calls this)."""
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


def head_of(model: PrefixModel) -> Head | None:
    """The head `train_head`, `set_pooling` or `load_prefix` put on `model`, or None."""
    return model.attachments.get(HEAD)  # type: ignore[return-value]


def _head(model: PrefixModel) -> Head:
    head = head_of(model)
    if head is None:
        head = model.attachments[HEAD] = Head(model.base)
    return head


def head_modules(base: nn.Module) -> dict[str, nn.Module]:
    """The base model's top-level modules outside its backbone: the task head (e.g. `classifier`)."""
    backbone = getattr(base, "base_model_prefix", "")
    children = dict(base.named_children())
    if backbone not in children:
        raise PrefixTuneError(
            f"{type(base).__name__} has no task head around a backbone; load the base with "
            "task='sequence-classification' or task='token-classification'"
        )
    head = {name: module for name, module in children.items() if name != backbone}
    if not any(p.numel() for m in head.values() for p in m.parameters()):
        raise PrefixTuneError(f"{type(base).__name__} has no trainable head outside {backbone!r}")
    return head


def head_parameters(model: PrefixModel) -> list[nn.Parameter]:
    """The parameters of the head this PrefixModel trains (none before `train_head`)."""
    head = head_of(model)
    return head.parameters() if head is not None else []


def train_head(
    model: PrefixModel, seed: int | None = None, reset: bool = True, pooling: str = "first"
) -> list[nn.Parameter]:
    """Make the base's task head trainable (and saved with every prefix); returns its parameters.

    Args:
        seed: seed for the fresh head's initialisation (the model's own init scheme).
        reset: start the head afresh; False keeps its current weights (e.g. one just loaded).
        pooling: what a sequence head reads: `first` (the first token, as the model's own head does)
            or `mean` (the mean over each row's real tokens; see the module docstring).
    """
    head = head_modules(model.base)
    set_pooling(model, pooling)
    if reset:
        rng = torch.random.fork_rng() if seed is not None else contextlib.nullcontext()
        with rng:
            if seed is not None:
                torch.manual_seed(seed)
            for module in head.values():
                module.apply(model.base._init_weights)
    _head(model).names = tuple(head)
    params = head_parameters(model)
    for param in params:
        param.requires_grad_(True)
    return params


def set_pooling(model: PrefixModel, pooling: str) -> None:
    """Make the sequence head read the first token (`first`) or the mean of the real tokens (`mean`)."""
    if pooling not in POOLINGS:
        raise PrefixTuneError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if pooling == "mean" and "ForSequenceClassification" not in type(model.base).__name__:
        raise PrefixTuneError(
            f"pooling='mean' is for sequence classification; {type(model.base).__name__} labels every "
            "token, so use pooling='first'"
        )
    head = _head(model)
    head.release()
    head.pooling = pooling
    if pooling == "mean":
        backbone = getattr(model.base, model.base.base_model_prefix)
        head.handle = backbone.register_forward_hook(_mean_into_first, with_kwargs=True)


def _mean_into_first(backbone: nn.Module, args: tuple, kwargs: dict, output):
    """Forward hook on the backbone: its first token's output becomes the mean over the real tokens,
    and a pooler inside the backbone (BERT's) pools that mean instead of the first token."""
    hidden = output[0]  # (B, L, H)
    mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
    weights = (hidden.new_ones(hidden.shape[:2]) if mask is None else mask.to(hidden))[..., None]  # (B, L, 1)
    mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, H)
    hidden = torch.cat([mean[:, None], hidden[:, 1:]], dim=1)
    pooler = getattr(backbone, "pooler", None)
    pooled = pooler is not None and len(output) > 1 and output[1] is not None
    if isinstance(output, tuple):
        return (hidden, pooler(hidden), *output[2:]) if pooled else (hidden, *output[1:])
    output["last_hidden_state"] = hidden
    if pooled:
        output["pooler_output"] = pooler(hidden)
    return output


def load_head(model: PrefixModel, folder: Path, trainable: bool = False) -> None:
    """Restore the head saved in `folder` into the base model, or fail naming the mismatch."""
    file = folder / HEAD_FILE
    saved = read_extra(folder, HEAD)
    if saved is None:
        raise PrefixTuneError(f"{file} is missing")
    state = saved.tensors
    head = head_modules(model.base)
    names = sorted({key.split(".", 1)[0] for key in state})
    if not set(names) <= set(head):
        raise PrefixTuneError(
            f"{file} holds a head ({', '.join(names)}) that {type(model.base).__name__} does not have "
            f"(its head: {', '.join(head)}); load the base with the task the prefix was trained for"
        )
    own = {f"{n}.{k}": v for n in names for k, v in head[n].state_dict().items()}
    for key, value in state.items():
        if key not in own or own[key].shape != value.shape:
            shape = tuple(own[key].shape) if key in own else None
            raise PrefixTuneError(
                f"{file}: {key} is {tuple(value.shape)} but the model's is {shape}; "
                "load the base with the same number of labels (num_labels) as in training"
            )
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value)
    set_pooling(model, saved.metadata.get("pooling", "first"))  # heads saved before: first token
    _head(model).names = tuple(names)
    for param in head_parameters(model):
        param.requires_grad_(trainable)


def saved_labels(folder: Path) -> dict[int, str] | None:
    """The label names stored with a saved head, or None when the folder holds no head."""
    saved = read_extra(folder, HEAD)
    if saved is None:
        return None
    labels = json.loads(saved.metadata.get("id2label", "{}"))
    return {int(k): v for k, v in labels.items()}
