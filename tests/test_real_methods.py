"""`--method prefix|finetune|lora` on the bundled SmolLM2-135M and E2E sample: a few steps each, a stop
and a resume, then `evaluate` and `generate` on what each run kept. Slow."""

from __future__ import annotations

import json

import pytest
from interrupts import StopAfter
from safetensors.torch import load_file

from prefixtune.cli import main
from prefixtune.data.bundled import bundled_e2e
from prefixtune.loading import load_base
from prefixtune.train import TrainConfig, train
from prefixtune.train import loop as loop_module
from prefixtune.train.config import METHOD_NAMES
from prefixtune.train.methods import METHODS
from prefixtune.train.report import read_log

pytestmark = pytest.mark.slow

LR = {"prefix": 1e-3, "finetune": 5e-5, "lora": 2e-4}


def test_each_method_trains_resumes_and_evaluates_on_smollm2(tmp_path, monkeypatch, capsys):
    base = load_base("smollm2-135m")  # shared by the three runs, as a sweep shares it
    before = {k: v.clone() for k, v in base[0].state_dict().items() if k.endswith("q_proj.weight")}
    for method in METHOD_NAMES:
        config = TrainConfig(
            train=str(bundled_e2e("train")),
            dev=str(bundled_e2e("dev")),
            output=str(tmp_path / method),
            method=method,
            steps=3,
            batch_size=2,
            eval_every=3,
            eval_sources=2,
            checkpoint_every=1,
            max_new_tokens=8,
            warmup_steps=1,
            lr=LR[method],
        )
        with monkeypatch.context() as patch:
            patch.setattr(loop_module, "_Interrupt", lambda: StopAfter(2))
            stopped = train(config, model_and_tokenizer=base, progress=False)
        METHODS[method].release(stopped.model)
        assert stopped.interrupted and stopped.steps == 2
        result = train(config, resume=True, model_and_tokenizer=base, progress=False)
        METHODS[method].release(result.model)
        records = read_log(result.output)
        assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]
        assert records[0]["trainable_params"] > 0 and records[-1]["kind"] == "saved"
        kept = result.prefix_path
        tensors = {k: v for f in kept.glob("*.safetensors") for k, v in load_file(str(f)).items()}
        assert tensors and all(v.isfinite().all() for v in tensors.values())
        scores = tmp_path / f"{method}.json"
        argv = ["evaluate", "--prefix", str(kept), "--data", str(bundled_e2e("dev")), "--metrics", "BLEU"]
        options = ["--max-sources", "2", "--max-new-tokens", "8", "--num-beams", "1"]
        assert main([*argv, *options, "--output", str(scores)]) == 0
        assert 0 <= json.loads(scores.read_text())["scores"]["BLEU"] <= 100
        capsys.readouterr()
        assert (
            main(
                ["generate", "--prefix", str(kept), "name[The Vaults], eatType[pub]", "--max-new-tokens", "8"]
            )
            == 0
        )
        assert len(capsys.readouterr().out.splitlines()) == 1
    for key, value in before.items():  # fine-tuning trained a copy; LoRA and the prefix let go of it
        assert value.equal(base[0].state_dict()[key]), key
