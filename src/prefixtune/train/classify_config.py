"""Every setting of a classifier run (P-Tuning v2 on an encoder), as one frozen dataclass.

The prefix is a `PrefixConfig` (`prefix`), not a copy of its fields. On the command line and in
`run.json` the settings are flat, as for a generation run: `--length 16 --reparam flat ...` name the
prefix's fields (`PREFIX_OPTIONS`); `from_dict` and `to_dict` convert (`train.flat`). The other
attribute docstrings are the `--help` of `prefixtune train --task classify`'s own options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from prefixtune.engine.config import PrefixConfig
from prefixtune.errors import PrefixTuneError
from prefixtune.train import flat
from prefixtune.train.config import check_numbers
from prefixtune.train.heads import POOLINGS

DROPOUT_CHOICES = ("off", "on")


def _classifier_prefix() -> PrefixConfig:
    return PrefixConfig(length=16, reparam="flat")


@dataclass(frozen=True)
class ClassifyConfig:
    """A P-Tuning v2 run: a prefix in every encoder layer plus a linear head, the encoder frozen."""

    PREFIX_OPTIONS: ClassVar[tuple[str, ...]] = ("length", "reparam", "mlp_hidden", "init", "layers")
    """The `PrefixConfig` fields a classifier run takes as options (`--length`, ...); the prefix's seed is
    the run's `seed`, and its other fields keep `PrefixConfig`'s defaults (a prefix in keys/values)."""

    train: str = ""
    """Training data: CSV or TSV (or JSONL) with a text column and a label column, e.g. SST-2's train.tsv."""
    dev: str | None = None
    """Development data (same format) for accuracy during training; the best prefix is kept."""
    output: str = "runs/classifier"
    """Run folder: the best prefix and head go to OUTPUT/prefix, plus metrics.jsonl and curve.png."""
    base: str = "minilm-l6"
    """Base encoder: a Hugging Face folder (BERT, RoBERTa, DistilBERT, ELECTRA) or the alias minilm-l6."""
    format: str | None = None
    """Data format (csv, tsv, jsonl); default: guessed from the file's extension."""
    text_column: str = "sentence"
    """Column holding the text to classify."""
    label_column: str = "label"
    """Column holding the label (any strings or integers; the classes are the labels seen in training)."""
    prefix: PrefixConfig = field(default_factory=_classifier_prefix)
    """The prefix: 16 vectors in every layer (`length`, `layers` for P-Tuning v2's depth ablation),
    `reparam` flat (P-Tuning v2's default for classification; mlp is Li & Liang's P = MLP(P')),
    `init` random (at the scale of the model's own keys/values) or zero."""
    pooling: str = "mean"
    """What the head reads: mean (the mean over the text's tokens, best for sentence-embedding models
    such as minilm-l6) or first (the first token, P-Tuning v2's and the model's own choice)."""
    dropout: str = "on"
    """The frozen model's dropout while training: on (its own rates, as P-Tuning v2 and PEFT train) or
    off (steps about 16 % faster on MiniLM-L6 and ahead early in a run, but on SST-2 it stalled lower
    over 2,000 steps)."""
    steps: int = 1000
    """Optimizer steps."""
    batch_size: int = 32
    """Examples per step."""
    lr: float = 3e-2
    """Peak learning rate of AdamW, for the prefix and the head (P-Tuning v2 uses 5e-3 to 1e-2; on
    MiniLM-L6 and SST-2, 3e-2 learned faster than 1e-2 and 1e-1)."""
    warmup_steps: int = 50
    """Linear warmup steps; then linear decay to zero at --steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0: off)."""
    eval_every: int = 200
    """Measure dev accuracy every N steps (and at the end)."""
    max_tokens: int = 128
    """Longer texts are truncated."""
    max_train_examples: int = 0
    """Use only the first N training examples (0: all)."""
    seed: int = 0
    """Seed for the prefix and head initialisation and the data order."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "max_tokens"):
            if getattr(self, name) < 1:
                raise PrefixTuneError(
                    f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}"
                )
        check_numbers(self)
        if self.pooling not in POOLINGS:
            raise PrefixTuneError(f"--pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.dropout not in DROPOUT_CHOICES:
            raise PrefixTuneError(f"--dropout must be off or on, got {self.dropout!r}")
        _check_init(self.prefix.init)

    @property
    def grad_accum(self) -> int:
        """One batch per step (the loop's `Settings`)."""
        return 1

    @property
    def patience(self) -> int:
        """A classifier run never stops early (the loop's `Settings`)."""
        return 0

    @property
    def learning_rate(self) -> float:
        """`lr` (the loop's `Settings`; a classifier's rate does not depend on a method)."""
        return self.lr

    def prefix_config(self) -> PrefixConfig:
        """The prefix the run trains: `prefix`, seeded with the run's seed."""
        return flat.run_prefix(self)

    @classmethod
    def options(cls) -> list[str]:
        """The flat settings, as the command line and `run.json` name them."""
        return flat.options(cls)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifyConfig:
        """From flat settings (`options`; others are ignored), the prefix's among them."""
        _check_init(data.get("init"))  # before PrefixConfig, which would ask for an init_text
        return flat.from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        """The flat settings (`options`), as `run.json` holds them."""
        return flat.to_dict(self)


def _check_init(init: str | None) -> None:
    if init == "text":
        raise PrefixTuneError("--init text is for generation; a classifier starts random or zero")
