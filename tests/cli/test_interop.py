"""`prefixtune import-peft` and `export-peft` on a tiny model saved as a Hugging Face folder."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, random_ids
from peft import PeftModel, PrefixTuningConfig, get_peft_model
from synthetic import word_tokenizer

from prefixtune import load_prefix
from prefixtune.cli import main
from prefixtune.interop.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS

# PEFT 0.21 passes `past_key_values`, deprecated from transformers 5.24: PEFT's warning, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:.*`past_key_values`:FutureWarning")


@pytest.fixture
def tiny(tmp_path):
    base = tmp_path / "tiny-llama"
    make_model("llama").save_pretrained(base)
    word_tokenizer().save_pretrained(base)
    adapter = tmp_path / "adapter"
    config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    get_peft_model(make_model("llama"), config).save_pretrained(adapter)
    return base, adapter


def test_import_then_export_round_trips_to_peft_outputs(tiny, tmp_path, capsys):
    base, adapter = tiny
    assert main(["import-peft", str(adapter), str(tmp_path / "prefix"), "--base", str(base)]) == 0
    assert "positions shifted" in capsys.readouterr().out
    ours = load_prefix(make_model("llama"), tmp_path / "prefix")  # the fingerprint matches the base
    assert main(["export-peft", str(tmp_path / "prefix"), str(tmp_path / "back")]) == 0
    assert {p.name for p in (tmp_path / "back").iterdir()} == {ADAPTER_CONFIG, ADAPTER_WEIGHTS}
    ids = random_ids(2, 5)
    with torch.no_grad():
        original = PeftModel.from_pretrained(make_model("llama"), adapter).eval()(input_ids=ids).logits
        back = PeftModel.from_pretrained(make_model("llama"), tmp_path / "back").eval()(input_ids=ids).logits
        torch.testing.assert_close(ours(ids).logits, original, rtol=0, atol=1e-5)
    torch.testing.assert_close(back, original, rtol=0, atol=1e-5)


def test_cli_errors_are_one_line_and_overwrite_nothing(tiny, tmp_path, capsys):
    base, adapter = tiny
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("keep")
    assert main(["import-peft", str(adapter), str(taken), "--base", str(base)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert main(["import-peft", str(tmp_path), str(tmp_path / "x"), "--base", str(base)]) == 2
    assert "not a PEFT adapter folder" in capsys.readouterr().err
    make_model("gpt2").save_pretrained(tmp_path / "tiny-gpt2")
    word_tokenizer().save_pretrained(tmp_path / "tiny-gpt2")
    assert (
        main(["import-peft", str(adapter), str(tmp_path / "y"), "--base", str(tmp_path / "tiny-gpt2")]) == 2
    )
    assert "pass the base model the adapter was trained on" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    assert main(["export-peft", str(adapter), str(tmp_path / "z")]) == 2
    assert "not a prefix folder" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
