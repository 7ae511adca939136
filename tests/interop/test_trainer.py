"""A PrefixModel under Hugging Face's Trainer: trains, evaluates, checkpoints prefix folders (not the
base model), resumes to the same prefix, and `load_best_model_at_end` restores the best prefix."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import make_model
from safetensors.torch import load_file
from synthetic import word_tokenizer, write_task
from transformers import Trainer, TrainingArguments

from prefixtune import PrefixConfig, add_prefix, load_prefix
from prefixtune.data import read_dataset
from prefixtune.interop.trainer import PrefixCheckpointCallback
from prefixtune.train.encode import collate, encode_examples


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    train_csv, dev_csv = write_task(tmp_path_factory.mktemp("task"), train_rows=32, dev_rows=8)
    tokenizer = word_tokenizer()
    return [encode_examples(read_dataset(p), tokenizer, 16, 16) for p in (train_csv, dev_csv)]


def _trainer(data, output, prefix_seed: int = 0, **changes) -> Trainer:
    model = add_prefix(make_model("llama"), PrefixConfig(length=3, mlp_hidden=16, seed=prefix_seed))
    settings = {
        "output_dir": str(output),
        "max_steps": 8,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "learning_rate": 3e-2,
        "eval_strategy": "steps",
        "eval_steps": 4,
        "save_strategy": "steps",
        "save_steps": 4,
        "logging_steps": 1,
        "report_to": [],
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
    }
    return Trainer(
        model=model,
        args=TrainingArguments(**{**settings, **changes}),
        train_dataset=data[0],
        eval_dataset=data[1],
        data_collator=lambda items: collate(items, 0),
        callbacks=[PrefixCheckpointCallback()],
    )


def _prefix(model) -> torch.Tensor:
    return model.prefixes["default"].materialise().detach().clone()


def _saved_prefix(folder) -> torch.Tensor:
    return _prefix(load_prefix(make_model("llama"), folder))


def test_trainer_trains_evaluates_and_checkpoints_only_the_prefix(data, tmp_path):
    trainer = _trainer(data, tmp_path / "out")
    base_before = {k: v.clone() for k, v in trainer.model.base.state_dict().items()}
    start = _prefix(trainer.model)
    first_eval = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < first_eval
    assert (_prefix(trainer.model) - start).abs().max() > 1e-3
    for key, value in trainer.model.base.state_dict().items():
        assert torch.equal(value, base_before[key]), key
    checkpoint = tmp_path / "out" / "checkpoint-8"
    stored = load_file(checkpoint / "model.safetensors")
    assert stored and all(k.startswith("prefixes.default.") for k in stored)
    base_bytes = sum(v.numel() * v.element_size() for v in base_before.values())
    assert (checkpoint / "model.safetensors").stat().st_size < base_bytes / 4
    torch.testing.assert_close(
        _saved_prefix(checkpoint / "prefix"), _prefix(trainer.model), rtol=0, atol=1e-6
    )


def test_resuming_from_a_checkpoint_ends_with_the_same_prefix(data, tmp_path):
    straight = _trainer(data, tmp_path / "straight")
    straight.train()
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "straight" / "checkpoint-4", resumed_dir / "checkpoint-4")
    resumed = _trainer(
        data, resumed_dir, prefix_seed=7
    )  # another start: the prefix must come from the checkpoint
    resumed.train(resume_from_checkpoint=str(resumed_dir / "checkpoint-4"))
    assert resumed.state.global_step == 8
    torch.testing.assert_close(_prefix(resumed.model), _prefix(straight.model), rtol=0, atol=1e-6)


def test_load_best_model_at_end_restores_the_best_checkpoints_prefix(data, tmp_path):
    # "best" = highest eval loss, so that the best checkpoint is the first one, not the last
    trainer = _trainer(
        data,
        tmp_path / "out",
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=True,
        activation_checkpointing=True,
    )
    trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-4")
    best, last = (_saved_prefix(tmp_path / "out" / f"checkpoint-{s}" / "prefix") for s in (4, 8))
    assert (best - last).abs().max() > 1e-3
    torch.testing.assert_close(_prefix(trainer.model), best, rtol=0, atol=1e-6)
