"""`prefixtune import-peft` and `export-peft` on a tiny model saved as a Hugging Face folder."""

from __future__ import annotations

import json

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


def _name_base(adapter, name) -> None:
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    config["base_model_name_or_path"] = name
    (adapter / ADAPTER_CONFIG).write_text(json.dumps(config))


def test_without_base_the_adapters_own_base_model_is_used(tiny, tmp_path, capsys):
    base, adapter = tiny
    _name_base(adapter, str(base))
    assert main(["import-peft", str(adapter), str(tmp_path / "prefix")]) == 0
    assert f"base model {str(base)!r}, named by the adapter" in capsys.readouterr().out
    stored = json.loads((tmp_path / "prefix" / "prefix_config.json").read_text())["base"]
    assert stored["architecture"] == "LlamaForCausalLM" and stored["name_or_path"] == str(base)
    load_prefix(make_model("llama"), tmp_path / "prefix")  # its fingerprint is the tiny base's


@pytest.mark.parametrize(
    ("named", "message"),
    [
        ("HuggingFaceTB/SmolLM2-135M", "names its base model 'HuggingFaceTB/SmolLM2-135M', which is not"),
        (None, "does not name its base model"),
    ],
    ids=["hub-id", "none"],
)
def test_an_adapter_base_that_cannot_be_loaded_asks_for_base(tiny, tmp_path, capsys, named, message):
    _, adapter = tiny
    _name_base(adapter, named)
    assert main(["import-peft", str(adapter), str(tmp_path / "prefix")]) == 2
    err = capsys.readouterr().err
    assert message in err and "--base" in err and "Traceback" not in err
    assert not (tmp_path / "prefix").exists()


def test_an_imported_prefix_evaluates_with_the_default_beam_search(tiny, tmp_path, capsys):
    """An imported prefix is position-shifted; `evaluate` scores it with 5 beams over batches of rows."""
    from synthetic import write_task

    base, adapter = tiny
    assert main(["import-peft", str(adapter), str(tmp_path / "prefix"), "--base", str(base)]) == 0
    _, dev = write_task(tmp_path)
    evaluate = ["evaluate", "--prefix", str(tmp_path / "prefix"), "--base", str(base), "--data", str(dev)]
    assert main([*evaluate, "--metrics", "BLEU", "--max-new-tokens", "4", "--max-sources", "4"]) == 0
    assert "BLEU" in capsys.readouterr().out
