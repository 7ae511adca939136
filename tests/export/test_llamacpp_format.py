"""The `.ggsq` layout and the export's refusals, without llama.cpp (see test_llamacpp for the engine)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from conftest import make_model
from gguf_files import tiny_gguf

from prefixtune import PrefixConfig, PrefixTuneError, add_prefix
from prefixtune.export.llamacpp import GGSQ_MAGIC, LlamaCppOptions, gguf_key_layout, state_bytes, to_llamacpp


def test_keys_go_to_llamacpps_interleaved_layout():
    keys = torch.arange(2 * 3 * 8, dtype=torch.float32).view(2, 3, 8)  # (H_kv, P, D)
    out = gguf_key_layout(keys, interleaved=True)
    for j in range(4):
        for h in range(2):
            torch.testing.assert_close(out[..., 2 * j + h], keys[..., h * 4 + j])
    assert torch.equal(gguf_key_layout(keys, interleaved=False), keys)


@pytest.mark.parametrize("v_trans", [True, False])
def test_state_layout(v_trans):
    heads, length, dim, layers = 2, 3, 4, 2
    pairs = [(torch.randn(heads, length, dim), torch.randn(heads, length, dim)) for _ in range(layers)]
    data = state_bytes(pairs, v_trans=v_trans, kv_type="f16")
    assert struct.unpack_from("<II", data) == (1, length)
    assert [struct.unpack_from("<iIi", data, 8 + 12 * i) for i in range(length)] == [
        (i, 1, 0) for i in range(length)
    ]
    offset = 8 + 12 * length
    assert struct.unpack_from("<II", data, offset) == (int(v_trans), layers)
    offset += 8
    assert struct.unpack_from("<iQ", data, offset) == (1, heads * dim * 2)  # f16 row of one cell
    first_key = np.frombuffer(data, np.float16, heads * dim, offset + 12)  # cell 0: head 0's D, head 1's D
    torch.testing.assert_close(
        torch.from_numpy(first_key.astype(np.float32)), pairs[0][0][:, 0].reshape(-1), atol=2e-3, rtol=0
    )
    row = 12 + length * heads * dim * 2
    # a V layer's header is 12 bytes either way: i32 type + u64 row bytes, or i32 type + u32 + u32
    assert len(data) == offset + layers * row + layers * (12 + length * heads * dim * 2)
    v_start = offset + layers * row
    if v_trans:
        assert struct.unpack_from("<iII", data, v_start) == (1, 2, heads * dim)
        column0 = np.frombuffer(data, np.float16, length, v_start + 12)  # V[:, 0] over the cells
        torch.testing.assert_close(
            torch.from_numpy(column0.astype(np.float32)), pairs[0][1][0, :, 0], atol=2e-3, rtol=0
        )


def test_refusals_before_anything_is_written(tmp_path):
    model = add_prefix(make_model("llama"), PrefixConfig(length=3, seed=1))
    tiny_gguf(tmp_path / "llama.gguf", "llama", model.base)
    tiny_gguf(tmp_path / "qwen2.gguf", "qwen2", model.base)
    with pytest.raises(PrefixTuneError, match="q4_0"):
        to_llamacpp(
            model, tmp_path / "llama.gguf", tmp_path / "a.ggsq", options=LlamaCppOptions(kv_type="q4_0")
        )
    with pytest.raises(PrefixTuneError, match="'qwen2' model"):
        to_llamacpp(model, tmp_path / "qwen2.gguf", tmp_path / "a.ggsq")
    other = make_model("llama", seed=5)
    tiny_gguf(tmp_path / "other.gguf", "llama", other)
    with pytest.raises(PrefixTuneError, match="other weights"):
        to_llamacpp(model, tmp_path / "other.gguf", tmp_path / "a.ggsq")
    assert not (tmp_path / "a.ggsq").exists()
    path = to_llamacpp(model, tmp_path / "llama.gguf", tmp_path / "a.ggsq")
    assert struct.unpack_from("<III", path.read_bytes()) == (GGSQ_MAGIC, 3, 3)
