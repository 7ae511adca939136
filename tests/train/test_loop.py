"""Training runs on a tiny model: the loss falls, only the prefix changes, runs resume exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import make_model
from synthetic import word_tokenizer, write_task

from prefixtune import PrefixTuneError, load_prefix
from prefixtune.train import TrainConfig, train
from prefixtune.train.report import read_log

SRC = Path(__file__).resolve().parents[2] / "src"
TESTS = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, **changes) -> TrainConfig:
    train_csv, dev_csv = write_task(tmp_path)
    settings = {
        "train": str(train_csv),
        "dev": str(dev_csv),
        "output": str(tmp_path / "run"),
        "steps": 40,
        "eval_every": 20,
        "checkpoint_every": 10,
        "init": "random",
        "lr": 3e-2,
        "max_new_tokens": 6,
        "batch_size": 8,
        "warmup_steps": 2,
        "length": 4,
        "mlp_hidden": 32,
    }
    return TrainConfig.from_dict({**settings, **changes})


def _prefix_tensor(folder: Path) -> torch.Tensor:
    model = load_prefix(make_model("llama"), folder)
    return model.prefixes["default"].materialise().detach()


def test_loss_falls_the_task_is_learned_and_only_the_prefix_changes(tmp_path):
    base = make_model("llama")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    result = train(_config(tmp_path, steps=60), model_and_tokenizer=(base, word_tokenizer()), progress=False)
    losses = [r["loss"] for r in read_log(result.output) if r["kind"] == "train"]
    assert len(losses) == 60
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert result.best["BLEU"] > 50  # the constant target is produced
    for key, value in base.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert (result.output / "curve.png").stat().st_size > 1000
    assert {p.name for p in result.prefix_path.iterdir()} >= {"prefix.safetensors", "prefix_config.json"}


def test_the_same_seed_gives_the_same_prefix(tmp_path):
    runs = []
    for name in ("a", "b"):
        config = _config(tmp_path, output=str(tmp_path / name), steps=12, eval_every=100)
        runs.append(
            train(config, model_and_tokenizer=(make_model("llama"), word_tokenizer()), progress=False)
        )
    assert torch.equal(_prefix_tensor(runs[0].prefix_path), _prefix_tensor(runs[1].prefix_path))


class _FixedCursor:
    def __init__(self, batches):
        self.batches = list(batches)

    def next(self):
        return self.batches.pop(0)


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    from prefixtune import PrefixConfig, add_prefix
    from prefixtune.data import read_dataset
    from prefixtune.train.encode import encode_examples
    from prefixtune.train.loop import _step
    from prefixtune.train.recipe import recipe_for

    config = _config(tmp_path, max_grad_norm=0.0)
    tokenizer = word_tokenizer()
    encoded = encode_examples(read_dataset(config.train)[:8], tokenizer, 32, 32)
    after = []
    for batch_size, accum in ((8, 1), (4, 2), (2, 4)):
        model = add_prefix(make_model("llama"), PrefixConfig(length=3, reparam="flat", seed=1))
        params = model.prefix_parameters()
        initial = params[0].detach().clone()
        optimizer = torch.optim.SGD(params, lr=1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        cursor = _FixedCursor([list(range(i, i + batch_size)) for i in range(0, 8, batch_size)])
        _step(
            model,
            encoded,
            cursor,
            0,
            params,
            optimizer,
            scheduler,
            config.replace(grad_accum=accum),
            recipe_for(model),
        )
        after.append(params[0].detach().clone())
    assert (after[0] - initial).abs().max() > 1e-3  # a step was taken
    torch.testing.assert_close(after[1], after[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(after[2], after[0], rtol=1e-5, atol=1e-6)


def test_an_output_folder_holding_another_run_is_refused(tmp_path):
    config = _config(tmp_path, steps=2, eval_every=100)
    train(config, model_and_tokenizer=(make_model("llama"), word_tokenizer()), progress=False)
    stamp = (Path(config.output) / "run.json").read_text()
    with pytest.raises(PrefixTuneError, match="already holds a run; pass --resume"):
        train(config, model_and_tokenizer=(make_model("llama"), word_tokenizer()), progress=False)
    with pytest.raises(PrefixTuneError, match=r"other settings \(lr\)"):
        train(
            config.replace(lr=0.5), resume=True, model_and_tokenizer=(make_model("llama"), word_tokenizer())
        )
    assert (Path(config.output) / "run.json").read_text() == stamp
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(PrefixTuneError, match="holds other files"):
        train(config.replace(output=str(other)), model_and_tokenizer=(make_model("llama"), word_tokenizer()))


RUNNER = textwrap.dedent(
    """
    import json, sys
    sys.path[:0] = [{src!r}, {tests!r}]
    from conftest import make_model
    from synthetic import word_tokenizer
    from prefixtune.train import TrainConfig, train
    config = TrainConfig.from_dict(json.loads(sys.argv[1]))
    train(config, resume=sys.argv[2] == "resume", model_and_tokenizer=(make_model("llama"), word_tokenizer()),
          progress=False)
    """
)


def _run(config: TrainConfig, mode: str) -> subprocess.Popen:
    script = RUNNER.format(src=str(SRC), tests=str(TESTS))
    return subprocess.Popen([sys.executable, "-c", script, json.dumps(config.to_dict()), mode])


def test_a_run_killed_at_any_moment_resumes_to_the_same_prefix(tmp_path):
    steps = 200
    reference = _config(
        tmp_path, output=str(tmp_path / "straight"), steps=steps, eval_every=100, checkpoint_every=7
    )
    assert _run(reference, "new").wait(timeout=300) == 0
    killed = reference.replace(output=str(tmp_path / "killed"))
    process = _run(killed, "new")
    log = Path(killed.output) / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 40):
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)  # mid-step, mid-write: wherever it is
    process.wait()
    done = [r for r in read_log(Path(killed.output)) if r["kind"] == "train"]
    assert done and done[-1]["step"] < steps, "the run finished before it could be killed"
    assert _run(killed, "resume").wait(timeout=300) == 0
    straight, resumed = (
        _prefix_tensor(Path(reference.output) / "prefix"),
        _prefix_tensor(Path(killed.output) / "prefix"),
    )
    assert torch.equal(straight, resumed)
    steps_logged = [r["step"] for r in read_log(Path(killed.output)) if r["kind"] == "train"]
    assert steps_logged == list(range(1, steps + 1))


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    config = _config(tmp_path, steps=100000, eval_every=100000, checkpoint_every=100000, dev=None)
    process = _run(config, "new")
    log = Path(config.output) / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 5):
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    state = torch.load(Path(config.output) / "checkpoint.pt", weights_only=False)
    assert 5 <= state["step"] < 100000
    assert state["step"] == read_log(Path(config.output))[-1]["step"]


def test_low_data_runs_draw_their_examples_with_the_seed(tmp_path):
    from prefixtune.train.generation import load_data

    full, _ = load_data(_config(tmp_path))
    draws = {seed: load_data(_config(tmp_path, max_train_examples=10, seed=seed))[0] for seed in (0, 1)}
    assert all(len(d) == 10 and set(d) <= set(full) for d in draws.values())
    assert draws[0] != draws[1]  # another seed, other examples
    assert load_data(_config(tmp_path, max_train_examples=10, seed=0))[0] == draws[0]
    assert load_data(_config(tmp_path, max_train_examples=10_000))[0] == full


class _Clock:
    """A stand-in for the loop's clock: every reading is `tick` seconds after the one before."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def _stopped_then_resumed(tmp_path: Path, monkeypatch, edit_checkpoint=None):
    """A 12-step run stopped after 7 steps on a slow clock (100 s a reading), resumed on a fast one (1 s)."""
    from interrupts import StopAfter

    from prefixtune.train import loop

    config = _config(tmp_path, steps=12, eval_every=100, checkpoint_every=4)
    with monkeypatch.context() as patch:
        patch.setattr(loop, "_clock", _Clock(100.0))
        patch.setattr(loop, "_Interrupt", lambda: StopAfter(7))
        first = train(config, model_and_tokenizer=(make_model("llama"), word_tokenizer()), progress=False)
    assert first.interrupted and first.steps == 7
    checkpoint = Path(config.output) / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=False)
    if edit_checkpoint:
        edit_checkpoint(state)
        torch.save(state, checkpoint)
    monkeypatch.setattr(loop, "_clock", _Clock(1.0))
    resumed = train(
        config, resume=True, model_and_tokenizer=(make_model("llama"), word_tokenizer()), progress=False
    )
    assert resumed.steps == 12
    return first, state, resumed


def test_a_resumed_run_reports_the_time_of_every_process_that_trained_it(tmp_path, monkeypatch):
    first, state, resumed = _stopped_then_resumed(tmp_path, monkeypatch)
    # 7 steps of two readings each, 100 s apart: at least 1,400 s before the stop, all of it kept
    assert 1400 <= state["seconds"] <= first.seconds
    second_process = resumed.seconds - state["seconds"]  # what came after the checkpoint was redone
    assert 0 < second_process < 100  # 5 steps and an evaluation at 1 s a reading


def test_a_checkpoint_without_its_time_resumes_from_its_steps_times(tmp_path, monkeypatch):
    _, _, resumed = _stopped_then_resumed(tmp_path, monkeypatch, lambda state: state.pop("seconds"))
    # checkpoints written before runs kept their time: the first 7 steps count 100 s each
    assert 700 < resumed.seconds < 800
