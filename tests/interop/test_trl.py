"""A PrefixModel under TRL's SFTTrainer: trains only the prefix, checkpoints only the prefix, restores
the best prefix, and TRL's fused loss (which bypasses `forward`) still sees each row's prefix."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import make_model
from safetensors.torch import load_file
from synthetic import TARGET, word_tokenizer

from prefixtune import PrefixConfig, add_prefix, load_prefix
from prefixtune.engine.model import PrefixModel
from prefixtune.interop.trainer import PrefixCheckpointCallback

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")


def _dataset(rows: int, seed: int):
    """Prompt-completion pairs: TRL then computes the loss on the completion only."""
    rng = random.Random(seed)
    prompt = lambda: " ".join(f"w{rng.randrange(20, 90)}" for _ in range(rng.randrange(2, 5))) + " \n"  # noqa: E731
    return datasets.Dataset.from_list([{"prompt": prompt(), "completion": " " + TARGET} for _ in range(rows)])


def _trainer(output, config: PrefixConfig | None = None, **changes):
    model = add_prefix(make_model("llama"), config or PrefixConfig(length=3, mlp_hidden=16, seed=0))
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
        "logging_steps": 4,
        "report_to": [],
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
        "max_length": 32,
        "dataset_num_proc": None,
    }
    return trl.SFTTrainer(
        model=model,
        args=trl.SFTConfig(**{**settings, **changes}),
        train_dataset=_dataset(32, seed=0),
        eval_dataset=_dataset(8, seed=1),
        processing_class=word_tokenizer(),
        callbacks=[PrefixCheckpointCallback()],
    )


def _prefix(model) -> torch.Tensor:
    return model.prefixes["default"].materialise().detach().clone()


def test_sft_trainer_trains_and_checkpoints_only_the_prefix_and_restores_the_best(tmp_path):
    # "best" = highest eval loss, so that the best checkpoint is the first one, not the last
    trainer = _trainer(
        tmp_path / "out",
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=True,
    )
    model = trainer.model
    base_before = {k: v.clone() for k, v in model.base.state_dict().items()}
    first_eval = trainer.evaluate()["eval_loss"]
    trainer.train()
    losses = [r["eval_loss"] for r in trainer.state.log_history if "eval_loss" in r]
    assert losses[-1] < first_eval - 0.3, losses
    for key, value in model.base.state_dict().items():
        assert torch.equal(value, base_before[key]), key
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-4")
    stored = load_file(tmp_path / "out" / "checkpoint-8" / "model.safetensors")
    assert stored and all(k.startswith("prefixes.default.") for k in stored)
    best, last = (
        _prefix(load_prefix(make_model("llama"), tmp_path / "out" / f"checkpoint-{s}" / "prefix"))
        for s in (4, 8)
    )
    assert (best - last).abs().max() > 1e-3
    torch.testing.assert_close(_prefix(model), best, rtol=0, atol=1e-6)


def test_the_fused_loss_sees_the_prefix(tmp_path):
    # a shifted prefix: the fused path must also run the position hook
    trainer = _trainer(tmp_path / "out", PrefixConfig(length=3, positions="shifted", init="random", seed=2))
    model = trainer.model.eval()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    rows = batch["input_ids"].shape[0]
    with torch.no_grad():
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
        own = PrefixModel.forward(model, **inputs).loss  # the loss of prefixtune's own forward
        bare = PrefixModel.forward(model, **inputs, prefix=[None] * rows).loss  # leaves no prefix set
        fused = trainer.compute_loss(model, dict(batch))  # TRL's fused LM head, through model.base_model
    assert abs(own - bare) > 1e-2
    torch.testing.assert_close(fused, own, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_sft_trainer_on_smollm2_sees_the_prefix_and_trains_it(tmp_path):
    from prefixtune.loading import load_base

    base, tokenizer = load_base("smollm2-135m")
    model = add_prefix(base, PrefixConfig(length=5, positions="shifted", seed=0))
    rows = [
        {"prompt": "name[The Vaults], eatType[pub]\n", "completion": " The Vaults is a pub."},
        {"prompt": "name[Aromi], area[city centre]\n", "completion": " Aromi is in the city centre."},
    ]
    settings = {"max_steps": 3, "per_device_train_batch_size": 2, "learning_rate": 1e-2, "report_to": []}
    trainer = trl.SFTTrainer(
        model=model,
        args=trl.SFTConfig(str(tmp_path), use_cpu=True, disable_tqdm=True, dataset_num_proc=None, **settings),
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    with torch.no_grad():
        own = PrefixModel.forward(model.eval(), **inputs).loss
        bare = PrefixModel.forward(model, **inputs, prefix=[None, None]).loss
        fused = trainer.compute_loss(model, dict(batch))
    assert abs(own - bare) > 1e-2
    torch.testing.assert_close(fused, own, rtol=0, atol=1e-4)
    start = _prefix(model)
    frozen = [model.base.get_input_embeddings().weight, model.base.model.layers[-1].self_attn.q_proj.weight]
    before = [w.detach().clone() for w in frozen]
    trainer.train()
    assert (_prefix(model) - start).abs().max() > 1e-3
    assert all(torch.equal(w, b) for w, b in zip(frozen, before, strict=True))
