"""`to_llamacpp`: a prefix as a llama.cpp sequence state (`.ggsq`), loaded by an unmodified llama.cpp.

The file is what `llama_state_seq_save_file` writes and `llama_state_seq_load_file` (and
`llama-server`'s `POST /slots/{id}?action=restore`) reads, checked against llama.cpp 0c1e57098
(llama-cpp-python 0.3.36; sequence-state version 3):

    u32 magic 0x67677371 ('ggsq'), u32 version 3, u32 n_tokens, i32 tokens[n_tokens]
    u32 n_stream (1), u32 cell_count, per cell: i32 pos, u32 n_seq_id (1), i32 seq_id
    u32 v_trans, u32 n_layer
    per layer K: i32 ggml_type, u64 row_bytes, one row per cell (KV heads x head size, head-major)
    V, v_trans 0: as K;  v_trans 1: per layer i32 type, u32 elem_bytes, u32 width, then per column
                         of the row, its value in every cell

`llama_state_seq_get_data`/`set_data` buffers hold the same state after `u32 0xAF143CD8, i32 seq_id`
instead of the file's header (`state_buffer`).

llama.cpp restores only into a context with the same V layout and cache types: `v_trans` is 1 with
flash attention off and 0 with it on, and K/V must be the context's `type_k`/`type_v` (f32 or f16).
A quantised cache is refused: llama.cpp rotates K/V (Hadamard) before quantising them.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from prefixtune.engine.model import PrefixModel
from prefixtune.errors import PrefixTuneError
from prefixtune.export.cache import Pairs, cache_pairs
from prefixtune.export.gguf import GgufModel, check_same_model, read_gguf

GGSQ_MAGIC = 0x67677371
GGSQ_VERSION = 3
BUFFER_MAGIC = 0xAF143CD8
KV_TYPES = {"f32": (0, np.float32), "f16": (1, np.float16)}
"""Cache type name -> (ggml type id, element dtype)."""
INTERLEAVED_ROPE = {"llama": True}
"""GGUF architectures the export knows, and whether llama.cpp's RoPE there pairs a head's adjacent
dims (GGUF's interleaved layout: the converter permutes Q/K weights) rather than HF's halves."""


@dataclass(frozen=True)
class LlamaCppOptions:
    """How the llama.cpp context that loads the state is set up: the state must match it."""

    flash_attn: bool = False
    """Whether llama.cpp runs with flash attention (`-fa on`, `flash_attn=True`): it stores V untransposed
    then. A state is refused by a context whose V layout differs."""
    kv_type: str = "f32"
    """The context's KV cache type (`-ctk/-ctv`, `type_k/type_v`): f32 (llama.cpp's own default is f16)
    or f16. Quantised caches (q8_0, q4_0, ...) are refused."""
    streams: int = 1
    """The context's KV streams: 1 with a unified cache (`-kvu`, one slot, or llama-server's automatic
    slot count), N for N sequences without it (`-np N`, `n_seq_max=N` with `kv_unified` off). A restore
    refuses another stream count."""
    token_id: int | None = None
    """The token id the P prefix cells are recorded as (default: the GGUF's unknown/pad token, else 0).
    A client sends these P ids before its prompt, so that llama.cpp reuses the restored cells."""


def to_llamacpp(
    model: PrefixModel,
    gguf_path: str | os.PathLike,
    output: str | os.PathLike,
    name: str | None = None,
    options: LlamaCppOptions | None = None,
) -> Path:
    """Write prefix `name` of `model` as a `.ggsq` state for the GGUF at `gguf_path`, and a sidecar
    JSON (`output` with suffix `.json`) recording its token ids and the settings it needs.

    Raises: PrefixTuneError for a GGUF of another model, an unknown architecture, a quantised cache
    type, or a prefix a cache cannot reproduce (see `cache.check_exportable`).
    """
    options = options or LlamaCppOptions()
    if options.kv_type not in KV_TYPES:
        raise PrefixTuneError(
            f"KV cache type {options.kv_type!r}: only {', '.join(KV_TYPES)} are exported (llama.cpp rotates "
            "a quantised cache's K/V before storing them); run llama.cpp with -ctk/-ctv f16 or f32"
        )
    gguf = read_gguf(gguf_path)
    if gguf.architecture not in INTERLEAVED_ROPE:
        raise PrefixTuneError(
            f"{gguf.path} is a {gguf.architecture!r} model; the llama.cpp export knows "
            f"{sorted(INTERLEAVED_ROPE)}"
        )
    check_same_model(model, gguf)
    name = name or model.default_prefix
    pairs = cache_pairs(model, name)
    tokens = [_token_id(gguf, options)] * pairs[0][0].shape[1]
    keys = [gguf_key_layout(k, INTERLEAVED_ROPE[gguf.architecture]) for k, _ in pairs]
    pairs = list(zip(keys, [v for _, v in pairs], strict=True))
    state = state_bytes(pairs, not options.flash_attn, options.kv_type, streams=options.streams)
    path = write_ggsq(output, tokens, state)
    _write_sidecar(path, model, name, gguf, options, tokens)
    return path


def gguf_key_layout(keys: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """(H_kv, P, D) keys from HF's rotate-half order to llama.cpp's: `out[2j + h] = in[h*D/2 + j]`."""
    if not interleaved:
        return keys
    heads, length, dim = keys.shape
    halves = keys.reshape(heads, length, 2, dim // 2)  # (H_kv, P, 2, D/2): [first half; second half]
    return halves.transpose(-1, -2).reshape(heads, length, dim)  # pairs (x_j, x_{j + D/2}) side by side


def state_bytes(pairs: Pairs, v_trans: bool, kv_type: str, streams: int = 1) -> bytes:
    """The sequence state of P cells at positions 0..P-1, in the first of `streams` streams (llama.cpp
    restores a sequence's cells into that sequence's own stream; the others are written empty).

    Args: pairs: per layer (key, value), each (H_kv, P, D), keys already in llama.cpp's layout.
    """
    type_id, dtype = KV_TYPES[kv_type]
    length = pairs[0][0].shape[1]
    out = [struct.pack("<II", streams, length)]
    out += [struct.pack("<iIi", i, 1, 0) for i in range(length)]
    out.append(struct.pack("<II", int(v_trans), len(pairs)))
    rows = [(_cells(k, dtype), _cells(v, dtype)) for k, v in pairs]  # (P, H_kv * D) each
    for key, _ in rows:
        out += [struct.pack("<iQ", type_id, key.shape[1] * key.itemsize), key.tobytes()]
    for _, value in rows:
        if v_trans:  # one run of P cells per column: V^T
            out += [struct.pack("<iII", type_id, value.itemsize, value.shape[1]), value.T.copy().tobytes()]
        else:
            out += [struct.pack("<iQ", type_id, value.shape[1] * value.itemsize), value.tobytes()]
    out += [struct.pack("<I", 0)] * (streams - 1)  # cell_count 0: nothing for the other streams
    return b"".join(out)


def write_ggsq(output: str | os.PathLike, tokens: list[int], state: bytes) -> Path:
    """A `.ggsq` file: the sequence-state file header with `tokens`, then `state`."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(f"<III{len(tokens)}i", GGSQ_MAGIC, GGSQ_VERSION, len(tokens), *tokens)
    path.write_bytes(header + state)
    return path


def state_buffer(state: bytes, seq_id: int = 0) -> bytes:
    """`state` as `llama_state_seq_set_data` takes it (in-memory, no file header)."""
    return struct.pack("<Ii", BUFFER_MAGIC, seq_id) + state


def _cells(tensor: torch.Tensor, dtype) -> np.ndarray:
    """(H_kv, P, D) -> (P, H_kv * D): one row per cell, head after head."""
    return tensor.detach().float().cpu().transpose(0, 1).reshape(tensor.shape[1], -1).numpy().astype(dtype)


def _token_id(gguf: GgufModel, options: LlamaCppOptions) -> int:
    if options.token_id is not None:
        if not 0 <= options.token_id < gguf.vocab:
            raise PrefixTuneError(
                f"token id {options.token_id} is outside the vocabulary (0..{gguf.vocab - 1})"
            )
        return options.token_id
    return gguf.filler_token


def _write_sidecar(path: Path, model: PrefixModel, name: str, gguf: GgufModel, options, tokens) -> None:
    prefix = model.prefixes[name]
    sidecar = {
        "format": "prefixtune-llamacpp-state",
        "state": path.name,
        "gguf": gguf.path.name,
        "architecture": gguf.architecture,
        "length": prefix.length,
        "positions": prefix.config.positions,
        "tokens": tokens,
        "flash_attn": options.flash_attn,
        "v_trans": int(not options.flash_attn),
        "kv_type": options.kv_type,
        "streams": options.streams,
        "options": asdict(options),
        "how": "restore this state into a sequence, then send `tokens` followed by your prompt's tokens",
    }
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
