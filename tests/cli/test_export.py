"""`prefixtune export --to transformers | llama.cpp` on a tiny model saved as a Hugging Face folder."""

from __future__ import annotations

import json
import struct

from conftest import make_model
from gguf_files import tiny_gguf
from synthetic import word_tokenizer

from prefixtune import PrefixConfig, add_prefix
from prefixtune.cli import main


def _prefix(tmp_path, positions: str = "keep"):
    base = tmp_path / "base"
    make_model("llama").save_pretrained(base)
    word_tokenizer().save_pretrained(base)
    model = add_prefix(make_model("llama"), PrefixConfig(length=4, positions=positions, seed=2))
    model.save(tmp_path / "prefix")
    return base, model


def test_export_to_llamacpp_writes_the_state_and_its_token_ids(tmp_path, capsys):
    base, model = _prefix(tmp_path)
    tiny_gguf(tmp_path / "tiny.gguf", "llama", model.base)
    out = tmp_path / "states" / "p.ggsq"
    args = [
        "export",
        str(tmp_path / "prefix"),
        str(out),
        "--to",
        "llama.cpp",
        "--gguf",
        str(tmp_path / "tiny.gguf"),
    ]
    assert main([*args, "--base", str(base), "--kv-type", "f16", "--flash-attn", "--token-id", "7"]) == 0
    assert "4 cells, KV f16, flash attention on" in capsys.readouterr().out
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["tokens"] == [7] * 4 and sidecar["v_trans"] == 0 and sidecar["kv_type"] == "f16"
    assert struct.unpack_from("<III4i", out.read_bytes()) == (0x67677371, 3, 4, 7, 7, 7, 7)


def test_export_errors_are_one_line(tmp_path, capsys):
    base, _ = _prefix(tmp_path)
    assert main(["export", str(tmp_path / "prefix"), str(tmp_path / "x.ggsq"), "--to", "llama.cpp"]) == 2
    assert "needs --gguf" in capsys.readouterr().err
    gpt2 = tmp_path / "gpt2"
    make_model("gpt2").save_pretrained(gpt2)
    add_prefix(make_model("gpt2"), PrefixConfig(length=3, seed=1)).save(tmp_path / "gpt2-prefix")
    args = ["export", str(tmp_path / "gpt2-prefix"), str(tmp_path / "c.safetensors"), "--to", "transformers"]
    assert main([*args, "--base", str(gpt2)]) == 2
    assert "absolute positions" in capsys.readouterr().err
    assert not (tmp_path / "c.safetensors").exists()
