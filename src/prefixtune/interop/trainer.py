"""Hugging Face `Trainer` with a `PrefixModel`: pass it as the model, add `PrefixCheckpointCallback`.

    trainer = Trainer(model=prefix_model, args=args, train_dataset=..., data_collator=...,
                      callbacks=[PrefixCheckpointCallback()])

What makes this work without subclassing the Trainer:
- `PrefixModel.state_dict()` holds only the prefix bank, so the `model.safetensors` the Trainer writes
  into each checkpoint is the prefixes' few KB, not a copy of the base model, and the Trainer's own
  `load_state_dict` on resume and for `load_best_model_at_end` restores exactly the prefixes;
- `PrefixModel.forward` names `labels`, so the Trainer reports an evaluation loss;
- this callback writes each checkpoint's prefix as a prefix folder (`checkpoint-N/prefix`), loadable
  with `load_prefix` or `prefixtune evaluate --prefix`, and stops a multi-process run that would
  silently train without data parallelism (see `on_train_begin`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from torch import distributed as dist
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from prefixtune.engine.model import is_sharded
from prefixtune.errors import PrefixTuneError

PREFIX_FOLDER = "prefix"


class PrefixCheckpointCallback(TrainerCallback):
    """Save every prefix of the bank into each checkpoint: the default one as `checkpoint-N/prefix`,
    any other as `checkpoint-N/prefix-NAME`. Only the main process writes."""

    def __init__(self, include_trainable: bool = True) -> None:
        self.include_trainable = include_trainable
        """Keep the MLP reparametrisation too, so `load_prefix(..., trainable=True)` can go on training."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        """Refuse a multi-process run in which `trainer.evaluate()` came before `trainer.train()`.

        A quirk of transformers 5 / accelerate 1.x, seen with any model: the evaluation prepares the
        bare model and marks it prepared, so `train()` then skips the DistributedDataParallel wrapper
        and every process trains its own copy on its own share of the data (the prefixes drift
        apart, and rank 0 saves its own). FSDP (the model is then sharded in place) is not affected.
        """
        several = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if several and not args.fsdp and getattr(model, "_is_accelerate_prepared", False):
            raise PrefixTuneError(
                "trainer.evaluate() ran before trainer.train() in a multi-process run, so the Trainer "
                "would train each process's copy apart (no DistributedDataParallel); call train() first"
            )
        return control

    def on_save(self, args, state, control, model=None, **kwargs):
        if model is None:
            return control
        if is_sharded(model):
            # A prefix folder records a sample of the base's weights, which FSDP holds in shards
            # (see PrefixModel.save for the way out); the Trainer still writes its own checkpoint.
            if state.is_world_process_zero:
                warnings.warn(
                    "FSDP: no checkpoint-N/prefix folder is written; see PrefixModel.save", stacklevel=2
                )
            return control
        if not state.is_world_process_zero:
            return control
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        for name in model.prefixes:
            folder = PREFIX_FOLDER if name == model.default_prefix else f"{PREFIX_FOLDER}-{name}"
            model.save(checkpoint / folder, name=name, include_trainable=self.include_trainable)
        return control
