"""`train_classifier`: with `dropout="off"` the prefix trains on the eval-mode loss; by default the
frozen model's dropout runs, as in P-Tuning v2 and PEFT."""

from __future__ import annotations

import csv
import json
from functools import partial
from pathlib import Path

import pytest
import torch
from encoders import make_encoder
from synthetic import word_tokenizer

from prefixtune import PrefixTuneError, add_prefix
from prefixtune.train.classify import _tokenize, shuffled_batches, train_classifier
from prefixtune.train.classify_config import ClassifyConfig
from prefixtune.train.heads import train_head
from prefixtune.train.loop import Cursor

ROWS = [(f"w{10 + i % 3} w{30 + i} w{40 + i % 7}", "good" if i % 2 else "bad") for i in range(16)]


def _data(folder: Path) -> Path:
    path = folder / "train.tsv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["sentence", "label"])
        writer.writerows(ROWS)
    return path


def _first_loss(config: ClassifyConfig) -> float:
    """The first batch's loss of the untrained prefix and head, computed in eval mode (no dropout)."""
    model = add_prefix(make_encoder("bert", head="sequence", labels=2), config.prefix_config())
    train_head(model, seed=config.seed, pooling=config.pooling)
    rows = Cursor(config.seed, partial(shuffled_batches, len(ROWS), config.batch_size)).next()
    batch = _tokenize(word_tokenizer(), [ROWS[i][0] for i in rows], config.max_tokens)
    labels = torch.tensor([int(ROWS[i][1] == "good") for i in rows])  # classes sorted: bad, good
    with torch.no_grad():
        return model.eval()(**batch, labels=labels).loss.item()


@pytest.mark.parametrize("dropout", ["off", None])  # None: the default
def test_dropout_off_trains_on_the_eval_mode_loss_and_the_default_does_not(tmp_path, dropout):
    config = ClassifyConfig.from_dict(
        dict(
            train=str(_data(tmp_path)),
            output=str(tmp_path / "run"),
            steps=2,
            batch_size=8,
            length=3,
            **({"dropout": dropout} if dropout else {}),
        )
    )
    base = make_encoder("bert", head="sequence", labels=2)
    rates = [m.p for m in base.modules() if isinstance(m, torch.nn.Dropout)]
    result = train_classifier(config, model_and_tokenizer=(base, word_tokenizer()), progress=False)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = next(r["loss"] for r in logged if r["kind"] == "train")
    if dropout == "off":
        assert first == pytest.approx(_first_loss(config), abs=1e-6)
    else:
        assert abs(first - _first_loss(config)) > 1e-4
    assert [m.p for m in result.model.modules() if isinstance(m, torch.nn.Dropout)] == rates


def _config(tmp_path: Path, **changes) -> ClassifyConfig:
    settings = {"train": str(_data(tmp_path)), "output": str(tmp_path / "run"), "steps": 2, "batch_size": 8}
    return ClassifyConfig.from_dict({**settings, "length": 3, **changes})


def _encoder():
    return make_encoder("bert", head="sequence", labels=2), word_tokenizer()


@pytest.mark.parametrize(
    ("change", "message"),
    [({"base": "/nonexistent/encoder"}, "does not exist"), ({"layers": (9,)}, "layer")],
    ids=["base", "layers"],
)
def test_a_classifier_start_that_fails_creates_no_run_folder(tmp_path, change, message):
    config = _config(tmp_path, **change)
    tiny = None if "base" in change else _encoder()
    with pytest.raises(PrefixTuneError, match=message):
        train_classifier(config, model_and_tokenizer=tiny, progress=False)
    assert not Path(config.output).exists()
    assert train_classifier(_config(tmp_path), model_and_tokenizer=_encoder(), progress=False).steps == 2


def test_a_classifier_run_that_saved_nothing_starts_again_and_one_that_did_is_kept(tmp_path, monkeypatch):
    from prefixtune.train import loop

    config = _config(tmp_path, dev=str(_data(tmp_path)), eval_every=2)
    with monkeypatch.context() as patch:
        patch.setattr(loop, "_step", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
        with pytest.raises(RuntimeError, match="killed"):
            train_classifier(config, model_and_tokenizer=_encoder(), progress=False)
    folder = Path(config.output)
    assert (folder / "run.json").is_file() and not (folder / "prefix").exists()
    result = train_classifier(config, model_and_tokenizer=_encoder(), progress=False)
    assert result.steps == 2 and (folder / "prefix" / "head.safetensors").is_file()
    saved = (folder / "prefix" / "prefix.safetensors").read_bytes()
    with pytest.raises(PrefixTuneError, match="saved a prefix.*choose another --output"):
        train_classifier(config, model_and_tokenizer=_encoder(), progress=False)
    assert (folder / "prefix" / "prefix.safetensors").read_bytes() == saved


def test_a_second_classifier_run_into_a_folder_in_use_is_refused(tmp_path):
    from prefixtune.train.run_folder import RunLock

    config = _config(tmp_path)
    with RunLock(Path(config.output), "train"):
        with pytest.raises(PrefixTuneError, match="is in use by another run"):
            train_classifier(config, model_and_tokenizer=_encoder(), progress=False)
    assert sorted(p.name for p in Path(config.output).iterdir()) == ["run.lock"]
