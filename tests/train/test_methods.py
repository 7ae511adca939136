"""`--method prefix|finetune|lora`: each trains, keeps its result, logs its cost and resumes exactly,
on the same loop, data and run folder; the base handed in comes back unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_model
from interrupts import StopAfter
from safetensors.torch import load_file
from synthetic import word_tokenizer, write_task

from prefixtune.errors import PrefixTuneError
from prefixtune.train import TrainConfig, train
from prefixtune.train import loop as loop_module
from prefixtune.train.config import DEFAULT_LR, METHOD_NAMES
from prefixtune.train.methods import METHODS, stored_size
from prefixtune.train.report import read_log

LR = {"prefix": 0.03, "finetune": 1e-3, "lora": 1e-2}
KEPT = {
    "prefix": {"prefix_config.json", "prefix.safetensors"},
    "finetune": {"config.json", "model.safetensors", "tokenizer.json"},
    "lora": {"adapter_config.json", "adapter_model.safetensors"},
}


def _config(tmp_path: Path, method: str, **changes) -> TrainConfig:
    train_csv, dev_csv = write_task(tmp_path)
    settings = {
        "train": str(train_csv),
        "dev": str(dev_csv),
        "output": str(tmp_path / method),
        "method": method,
        "steps": 12,
        "batch_size": 8,
        "eval_every": 100,
        "checkpoint_every": 4,
        "lr": LR[method],
        "init": "random",
        "warmup_steps": 2,
        "length": 4,
        "mlp_hidden": 32,
        "max_new_tokens": 6,
    }
    return TrainConfig.from_dict({**settings, **changes})


def _kept(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor a result folder ships (not a prefix's trainable state)."""
    return {
        f"{f.name}:{k}": v
        for f in sorted(folder.glob("*.safetensors"))
        if f.name != "trainable.safetensors"
        for k, v in load_file(str(f)).items()
    }


def test_the_methods_are_the_configs_choices():
    assert tuple(METHODS) == METHOD_NAMES
    with pytest.raises(PrefixTuneError, match="--method must be one of prefix, finetune, lora"):
        TrainConfig(train="t.csv", method="adapter")
    with pytest.raises(PrefixTuneError, match="--lora-rank must be at least 1"):
        TrainConfig(train="t.csv", method="lora", lora_rank=0)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_each_method_has_its_own_default_learning_rate(method):
    config = TrainConfig(train="t.csv", method=method)
    assert config.lr is None and config.learning_rate == DEFAULT_LR[method]
    assert config.replace(lr=0.5).learning_rate == 0.5
    # a sweep's fixed settings take the method from the grid: the default follows it
    assert TrainConfig(train="t.csv").replace(method=method).learning_rate == DEFAULT_LR[method]
    assert DEFAULT_LR["finetune"] < DEFAULT_LR["lora"] < DEFAULT_LR["prefix"]
    with pytest.raises(PrefixTuneError, match="--lr must be a positive number"):
        TrainConfig(train="t.csv", method=method, lr=0.0)


def test_the_default_rate_is_the_one_the_optimizer_uses(tmp_path):
    config = _config(tmp_path, "finetune", lr=None, steps=4, warmup_steps=1)
    train(config, model_and_tokenizer=(make_model("llama"), word_tokenizer()), progress=False)
    rates = [r["lr"] for r in read_log(tmp_path / "finetune") if r["kind"] == "train"]
    assert max(rates) == pytest.approx(DEFAULT_LR["finetune"])


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_each_method_trains_keeps_its_result_and_logs_its_cost(tmp_path, method):
    base = make_model("llama")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    result = train(_config(tmp_path, method), model_and_tokenizer=(base, word_tokenizer()), progress=False)
    assert result.prefix_path == result.output / METHODS[method].folder
    assert {p.name for p in result.prefix_path.iterdir()} >= KEPT[method]
    records = read_log(result.output)
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == 12 and losses[-1] < losses[0]
    sizes = records[0]
    assert sizes["kind"] == "params" and sizes["method"] == method
    trainable = sum(p.numel() for p in METHODS[method].parameters(result.model))
    assert sizes["trainable_params"] == trainable
    whole = sum(p.numel() for p in base.parameters())
    if method == "finetune":
        assert trainable == sizes["total_params"] == whole
    else:
        assert trainable < whole / 10
    saved = [r for r in records if r["kind"] == "saved"]
    assert saved and (saved[-1]["stored_params"], saved[-1]["stored_bytes"]) == stored_size(
        result.prefix_path
    )
    assert all(r["peak_mem_mb"] > 0 for r in records if r["kind"] == "train")
    METHODS[method].release(result.model)
    for key, value in base.state_dict().items():  # the base handed in, as it was
        assert torch.equal(value, before[key]), key
    assert set(base.state_dict()) == set(before)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_each_method_resumes_to_the_same_result(tmp_path, method, monkeypatch):
    straight = _config(tmp_path, method, output=str(tmp_path / "straight"))
    train(straight, model_and_tokenizer=(make_model("llama"), word_tokenizer()), progress=False)
    stopped = straight.replace(output=str(tmp_path / "stopped"))
    with monkeypatch.context() as patch:
        patch.setattr(loop_module, "_Interrupt", lambda: StopAfter(7))
        first = train(stopped, model_and_tokenizer=(make_model("llama"), word_tokenizer()), progress=False)
    assert first.interrupted and first.steps == 7
    resumed = train(
        stopped, resume=True, model_and_tokenizer=(make_model("llama"), word_tokenizer()), progress=False
    )
    assert resumed.steps == 12
    kept_straight, kept_resumed = (
        _kept(Path(straight.output) / METHODS[method].folder),
        _kept(resumed.prefix_path),
    )
    assert kept_straight.keys() == kept_resumed.keys()
    for key, value in kept_straight.items():
        assert torch.equal(value, kept_resumed[key]), key
    steps = [r["step"] for r in read_log(resumed.output) if r["kind"] == "train"]
    assert steps == list(range(1, 13))


def test_a_run_resumed_with_another_method_is_refused(tmp_path):
    config = _config(tmp_path, "lora", steps=2)
    train(config, model_and_tokenizer=(make_model("llama"), word_tokenizer()), progress=False)
    with pytest.raises(PrefixTuneError, match=r"other settings \(method\)"):
        train(
            config.replace(method="finetune"),
            resume=True,
            model_and_tokenizer=(make_model("llama"), word_tokenizer()),
        )


def test_lora_takes_its_rank_and_targets(tmp_path):
    config = _config(tmp_path, "lora", steps=1, lora_rank=2, lora_targets="q_proj,k_proj,o_proj")
    result = train(config, model_and_tokenizer=(make_model("llama"), word_tokenizer()), progress=False)
    names = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert {n.split(".")[-4] for n in names} == {"q_proj", "k_proj", "o_proj"}
    # 2 layers x 3 projections x (A: 2 x 64, B: out x 2); k_proj gives 2 KV heads x 16
    assert read_log(result.output)[0]["trainable_params"] == 2 * ((128 + 2 * 64) * 2 + 128 + 2 * 32)


def test_lora_on_modules_the_model_lacks_names_the_option(tmp_path):
    config = _config(tmp_path, "lora", lora_targets="nothing_here")
    with pytest.raises(PrefixTuneError, match="--lora-targets"):
        train(config, model_and_tokenizer=(make_model("llama"), word_tokenizer()), progress=False)
    assert not Path(config.output).exists()
