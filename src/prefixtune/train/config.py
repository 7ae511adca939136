"""Every setting of a training run, as one frozen dataclass (its docstrings, and `PREFIX_HELP` for the
prefix's options, are the CLI's help)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from prefixtune.engine.config import PrefixConfig
from prefixtune.errors import PrefixTuneError
from prefixtune.train import flat


def _generation_prefix() -> PrefixConfig:
    return PrefixConfig(length=10, init="text", init_text="table-to-text:")


@dataclass(frozen=True)
class TrainConfig:
    """A prefix-tuning run on a source -> target dataset.

    The prefix is a `PrefixConfig` (`prefix`), not a copy of its fields. On the command line, in
    `run.json` and on a sweep's grid its settings are flat, beside the run's (`--length 5`): `from_dict`,
    `to_dict` and `replace` take and give them so (`train.flat`).
    """

    PREFIX_OPTIONS: ClassVar[tuple[str, ...]] = (
        "length", "reparam", "mlp_hidden", "init", "init_text", "positions", "kind", "layers"
    )  # fmt: skip
    """The `PrefixConfig` fields a run takes as options; the prefix's seed is the run's `seed`."""
    PREFIX_HELP: ClassVar[dict[str, str]] = {
        "length": "Prefix length (vectors per layer); with --init text and no length, the text's token "
        "count.",
        "reparam": "mlp (P = MLP(P'), the paper's choice, folded away after training) or flat.",
        "mlp_hidden": "Hidden width of the MLP reparametrisation.",
        "init": "Prefix initialisation: text (from --init-text), random or zero.",
        "init_text": "Words whose keys/values start the prefix when --init text.",
        "positions": "keep: real tokens at positions 0..n-1; shifted: at P..P+n-1 as in PEFT. Default: "
        "shifted for --kind embedding, else keep.",
        "kind": "prefix (keys/values in every attention layer, Li & Liang), embedding (prompt tuning: "
        "trainable input embeddings before the source, the paper's embedding-only ablation) or infix "
        "([x; INFIX; y]: keys/values seen from the source's last token on).",
        "layers": "Only these attention layers get the prefix, e.g. --layers 0,1,2 or --layers=-2,-1 (the "
        "last two); default: every layer.",
    }
    """The `--help` of the prefix's options (their defaults are `prefix`'s)."""

    train: str = ""
    """Training data: E2E CSV, WebNLG/DART JSON, or your own CSV/TSV/JSONL (see --source-column)."""
    dev: str | None = None
    """Development data for evaluation during training (same formats); none: no evaluation."""
    output: str = "runs/prefix"
    """Run folder: the best prefix goes to OUTPUT/prefix (OUTPUT/model for --method finetune,
    OUTPUT/adapter for lora), plus checkpoint.pt, metrics.jsonl, curve.png."""
    base: str = "smollm2-135m"
    """Base model: a Hugging Face folder, a .gguf file, or the alias smollm2-135m."""
    method: str = "prefix"
    """What trains: prefix (prefix-tuning), finetune (every weight of the base) or lora (PEFT's LoRA).
    Each has its own default --lr. The prefix options apply to prefix only."""
    lora_rank: int = 8
    """Rank of the LoRA matrices (--method lora)."""
    lora_targets: str | None = None
    """Modules LoRA adapts, comma-separated, e.g. q_proj,v_proj (--method lora); default: PEFT's for the
    model's family."""
    format: str | None = None
    """Data format (e2e, webnlg, dart, csv, tsv, jsonl); default: guessed from the file."""
    source_column: str = "source"
    """Source column for your own CSV/TSV/JSONL."""
    target_column: str = "target"
    """Target column for your own CSV/TSV/JSONL."""
    categories: str | None = None
    """Train (and evaluate during training) on only these categories of WebNLG data, comma-separated,
    e.g. Airport,Food; default: all."""
    exclude_categories: str | None = None
    """Leave these WebNLG categories out of the training and dev data, comma-separated, e.g.
    City,Monument,University: topics never trained on, to score later with `evaluate --categories`."""
    prefix: PrefixConfig = field(default_factory=_generation_prefix)
    """The prefix: 10 vectors in every attention layer through the MLP, started from the words
    "table-to-text:"; its settings are options of their own (`PREFIX_OPTIONS`, `PREFIX_HELP`)."""
    steps: int = 500
    """Optimizer steps."""
    batch_size: int = 8
    """Examples per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float | None = None
    """Peak learning rate of AdamW; default: the method's, 1e-3 for prefix, 5e-5 for finetune, 2e-4 for
    lora. (On SmolLM2-135M with the MLP, 5e-3 diverged within 100 steps for text-initialised prefixes
    and for PEFT's; 1e-3 trains both smoothly: docs/BENCHMARKS.md.)"""
    warmup_steps: int = 20
    """Linear warmup steps; then linear decay to zero at --steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0: off)."""
    eval_every: int = 100
    """Evaluate on the dev set every N steps (and at the end)."""
    eval_sources: int = 40
    """Distinct dev sources to generate for BLEU during training (0: all)."""
    patience: int = 0
    """Stop after this many evaluations without a better dev BLEU (0: never stop early)."""
    checkpoint_every: int = 50
    """Write a resumable checkpoint every N steps."""
    max_source_tokens: int = 128
    """Longer sources are truncated."""
    max_target_tokens: int = 96
    """Longer targets are truncated."""
    max_new_tokens: int = 80
    """Tokens generated per example at evaluation."""
    num_beams: int = 1
    """Beams for the evaluation during training (the final `evaluate` defaults to 5, as the paper)."""
    max_train_examples: int = 0
    """Train on N examples drawn at random with --seed (0: all), for low-data runs."""
    seed: int = 0
    """Seed for the prefix initialisation and the data order: the same seed gives the same prefix."""

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "grad_accum", "eval_every", "checkpoint_every", "max_new_tokens")
        for name in positive:
            if getattr(self, name) < 1:
                raise PrefixTuneError(
                    f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}"
                )
        check_method(self)
        check_numbers(self)

    @property
    def learning_rate(self) -> float:
        """`lr`, or the method's default (`DEFAULT_LR`) when it is None."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    def prefix_config(self) -> PrefixConfig:
        """The prefix the run trains: `prefix`, seeded with the run's seed (`flat.run_prefix`)."""
        return flat.run_prefix(self)

    @classmethod
    def options(cls) -> list[str]:
        """The flat settings, as the command line, `run.json` and a sweep's grid name them."""
        return flat.options(cls)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """From flat settings (`options`; others are ignored), the prefix's among them."""
        return flat.from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        """The flat settings (`options`), as `run.json` holds them."""
        return flat.to_dict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some flat settings changed, e.g. `replace(length=5, output="runs/b")`."""
        return flat.replace(self, **changes)


def check_numbers(config: Any) -> None:
    """`--lr` a positive number; `--weight-decay` and `--max-grad-norm` numbers from 0 (nan and inf would
    only show up as a run of nan losses, or as a folder left behind by a run that could not start)."""
    lr = getattr(config, "learning_rate", config.lr)  # a TrainConfig's None: its method's default
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise PrefixTuneError(f"--lr must be a positive number, got {lr}")
    for name in ("weight_decay", "max_grad_norm"):
        value = getattr(config, name)
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise PrefixTuneError(f"--{name.replace('_', '-')} must be a number from 0 up, got {value}")


METHOD_NAMES = ("prefix", "finetune", "lora")
"""The keys of `train.methods.METHODS`."""

DEFAULT_LR = {"prefix": 1e-3, "finetune": 5e-5, "lora": 2e-4}
"""Each method's learning rate when --lr is not given. Fine-tuning moves every weight of the model, so
it wants a rate 20 times lower than the prefix's; 2e-4 is the usual LoRA rate (QLoRA's, PEFT's
examples')."""


def check_method(config: TrainConfig) -> None:
    if config.method not in METHOD_NAMES:
        raise PrefixTuneError(f"--method must be one of {', '.join(METHOD_NAMES)}, got {config.method!r}")
    if config.lora_rank < 1:
        raise PrefixTuneError(f"--lora-rank must be at least 1, got {config.lora_rank}")


# Settings that may change when a run is resumed without changing what it computes.
RESUMABLE_CHANGES = frozenset({"output", "checkpoint_every"})
