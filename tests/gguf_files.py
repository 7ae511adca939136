"""Small GGUF files written on the fly for the llama.cpp export's checks (no llama.cpp needed)."""

from __future__ import annotations

import gguf


def tiny_gguf(path, arch: str, model) -> None:
    """A header-only stand-in for a GGUF of `model`'s shape (enough for the export's checks)."""
    writer = gguf.GGUFWriter(str(path), arch)
    attention = model.config
    writer.add_block_count(attention.num_hidden_layers)
    writer.add_head_count(attention.num_attention_heads)
    writer.add_head_count_kv(attention.num_key_value_heads)
    writer.add_embedding_length(attention.hidden_size)
    writer.add_tensor("token_embd.weight", model.get_input_embeddings().weight.detach().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
