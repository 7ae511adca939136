"""`to_transformers` and the README's plain-transformers snippet against `PrefixModel.generate`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import make_model, random_ids
from safetensors.torch import load_file
from synthetic import word_tokenizer
from transformers import AutoModelForCausalLM, DynamicCache

from prefixtune import PrefixConfig, add_prefix
from prefixtune.cli import main
from prefixtune.engine.compat import CACHE_KWARG
from prefixtune.export import to_transformers

README = Path(__file__).parents[2] / "README.md"
NEW = 8


def _snippet() -> str:
    """The README's snippet, as written there."""
    text = README.read_text(encoding="utf-8").split("<!-- export-transformers-snippet -->", 1)[1]
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def _plain_generate(folder: Path, file: Path, ids: torch.Tensor, **options):
    """Generate with transformers alone from the exported file (the snippet's steps), fresh model."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    kv = load_file(file)
    cache = DynamicCache(
        ddp_cache_data=[(kv[f"{i}.key"], kv[f"{i}.value"]) for i in range(len(kv) // 2)], config=model.config
    )
    mask = torch.ones(1, kv["0.key"].shape[2] + ids.shape[1], dtype=torch.long)
    return model.generate(
        ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, **{CACHE_KWARG: cache}, **options
    )


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("positions", ["keep", "shifted"])
def test_plain_transformers_generates_prefixtunes_tokens_and_logits(family, positions, tmp_path):
    if family == "gpt2" and positions == "keep":
        pytest.skip("refused: see test_keep_on_absolute_positions_is_refused")
    folder = tmp_path / "base"
    make_model(family).save_pretrained(folder)
    model = add_prefix(make_model(family), PrefixConfig(length=5, positions=positions, seed=1))
    file = to_transformers(model, tmp_path / "cache.safetensors")
    ids = random_ids(1, 6)
    ours = model.generate(
        ids, max_new_tokens=NEW, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    theirs = _plain_generate(folder, file, ids, output_logits=True, return_dict_in_generate=True)
    assert torch.equal(ours.sequences, theirs.sequences)
    torch.testing.assert_close(torch.stack(theirs.logits), torch.stack(ours.logits), rtol=0, atol=1e-5)
    # negative control: with the cache ignored (or absent) the bare model's tokens come out instead
    bare = AutoModelForCausalLM.from_pretrained(folder).generate(ids, max_new_tokens=NEW, do_sample=False)
    assert not torch.equal(bare, theirs.sequences)


def test_keep_without_the_rotation_would_differ(tmp_path):
    """Negative control for the R(P) rotation: the raw keep keys in a cache give other logits."""
    model = add_prefix(make_model("llama"), PrefixConfig(length=5, seed=1))
    folder = tmp_path / "base"
    make_model("llama").save_pretrained(folder)
    raw = {}
    for i, (key, value) in enumerate(model.prefixes["default"].slot_tensors()):
        raw[f"{i}.key"], raw[f"{i}.value"] = (
            key[None].detach().contiguous(),
            value[None].detach().contiguous(),
        )
    from safetensors.torch import save_file

    save_file(raw, tmp_path / "raw.safetensors")
    ids = random_ids(1, 6)
    ours = model(ids).logits[:, -1]
    theirs = _plain_generate(
        folder, tmp_path / "raw.safetensors", ids, output_logits=True, return_dict_in_generate=True
    )
    assert (theirs.logits[0] - ours).abs().max() > 1e-2


def test_readme_snippet_runs_as_written_and_reproduces_prefixtune(tmp_path, capsys):
    folder = tmp_path / "base"
    make_model("llama").save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    model = add_prefix(make_model("llama"), PrefixConfig(length=4, seed=3))
    model.save(tmp_path / "prefix")
    assert (
        main(
            [
                "export",
                str(tmp_path / "prefix"),
                "--to",
                "transformers",
                str(tmp_path / "c.safetensors"),
                "--base",
                str(folder),
            ]
        )
        == 0
    )
    prompt = "w5 w9 w17 w30"
    code = (
        _snippet()
        .replace('"BASE"', repr(str(folder)))
        .replace('"prefix_cache.safetensors"', repr(str(tmp_path / "c.safetensors")))
        .replace('"name[Aromi], eatType[coffee shop], area[city centre]\\n"', repr(prompt))
    )
    assert "prefixtune" not in code
    scope: dict = {}
    exec(compile(code, "README snippet", "exec"), scope)
    ids = word_tokenizer()(prompt, return_tensors="pt").input_ids
    ours = model.generate(ids, max_new_tokens=40, do_sample=False)
    assert torch.equal(scope["out"], ours)
    bare = scope["model"].generate(ids, max_new_tokens=40, do_sample=False)
    assert not torch.equal(bare, ours)  # the cache really was used


def test_keep_on_absolute_positions_is_refused(tmp_path):
    model = add_prefix(make_model("gpt2"), PrefixConfig(length=5, seed=1))
    with pytest.raises(Exception, match="absolute positions"):
        to_transformers(model, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
