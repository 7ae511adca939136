"""What the llama.cpp export needs to know about a GGUF file: its attention shape and whether its
weights are the prefix's base model; and an F32 copy of a quantised GGUF for exactness checks."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prefixtune.engine.model import PrefixModel
from prefixtune.errors import PrefixTuneError

_SAMPLE_ROWS = 64
_SAME_MODEL_COSINE = 0.98
"""Quantisation (Q4) keeps a weight's cosine to the original above ~0.99; another model's is near 0."""


@dataclass(frozen=True)
class GgufModel:
    """The facts of a GGUF model file that its KV-cache layout depends on."""

    path: Path
    architecture: str
    layers: int
    kv_heads: int
    head_dim: int
    vocab: int
    filler_token: int
    """A token id for cells that hold no real token: the unknown (or pad) token, else 0."""


def read_gguf(path: str | os.PathLike) -> GgufModel:
    """The attention shape of the GGUF model at `path` (its header only; tensors stay on disk)."""
    reader = _reader(path)
    arch = str(_field(reader, "general.architecture"))
    heads = int(_field(reader, f"{arch}.attention.head_count"))
    kv_heads = _field(reader, f"{arch}.attention.head_count_kv", heads)
    if isinstance(kv_heads, list):  # per-layer counts (hybrid models)
        raise PrefixTuneError(f"{path}: per-layer KV head counts ({arch}) are not supported by the export")
    embed = int(_field(reader, f"{arch}.embedding_length"))
    head_dim = int(_field(reader, f"{arch}.attention.key_length", embed // heads))
    vocab = next(t.shape[1] for t in reader.tensors if t.name == "token_embd.weight")
    filler = _field(
        reader, "tokenizer.ggml.unknown_token_id", _field(reader, "tokenizer.ggml.padding_token_id", 0)
    )
    layers = int(_field(reader, f"{arch}.block_count"))
    return GgufModel(Path(path), arch, layers, int(kv_heads), head_dim, int(vocab), int(filler))


def check_same_model(model: PrefixModel, gguf: GgufModel) -> None:
    """Refuse a GGUF whose shapes or weights are not those of `model`'s base (the prefix's own).

    The token embedding and the last layer's value projection are compared by cosine, so that a
    quantised file of the same weights passes while another model (or another fine-tune) does not.
    """
    slots = model.layout.slots
    here = (
        len(slots),
        slots[0].kv_heads,
        slots[0].head_dim,
        model.base.get_input_embeddings().num_embeddings,
    )
    there = (gguf.layers, gguf.kv_heads, gguf.head_dim, gguf.vocab)
    if here != there:
        raise PrefixTuneError(
            f"{gguf.path} is another model: (layers, KV heads, head size, vocabulary) {there}, the prefix's "
            f"base has {here}"
        )
    reader = _reader(gguf.path)
    tensors = {t.name: t for t in reader.tensors}
    modules = dict(model.base.named_modules())
    pairs = [("token_embd.weight", model.base.get_input_embeddings().weight)]
    value = getattr(modules[slots[-1].name], "v_proj", None)
    if f"blk.{gguf.layers - 1}.attn_v.weight" in tensors and isinstance(
        getattr(value, "weight", None), torch.Tensor
    ):
        pairs.append((f"blk.{gguf.layers - 1}.attn_v.weight", value.weight))
    for name, ours in pairs:
        theirs = _dequantised_rows(tensors[name], ours.shape[0])
        rows = torch.linspace(0, ours.shape[0] - 1, theirs.shape[0]).long()
        cosine = torch.nn.functional.cosine_similarity(
            torch.from_numpy(theirs).flatten(), ours.detach().float().cpu()[rows].flatten(), dim=0
        )
        if tuple(theirs.shape[1:]) != tuple(ours.shape[1:]) or cosine < _SAME_MODEL_COSINE:
            raise PrefixTuneError(
                f"{gguf.path} holds other weights than the prefix's base model ({name}: cosine "
                f"{float(cosine):.3f}); export against the GGUF of the model the prefix was trained on"
            )


def write_f32_gguf(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy the GGUF `source` to `target` with every tensor dequantised to F32 (same metadata).

    llama.cpp then computes in fp32 from exactly the weights prefixtune loads from `source`, which is
    what an exactness check against PyTorch needs.
    """
    import gguf as gg

    reader = _reader(source)
    arch = str(_field(reader, "general.architecture"))
    writer = gg.GGUFWriter(str(target), arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue  # the writer writes these itself
        value = field.contents()
        if key == "general.file_type":
            value = int(gg.LlamaFileType.ALL_F32)
        sub = field.types[1] if field.types[0] == gg.GGUFValueType.ARRAY and len(field.types) > 1 else None
        writer.add_key_value(key, value, field.types[0], sub_type=sub)
    for tensor in reader.tensors:
        data = gg.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        writer.add_tensor(tensor.name, data.reshape(tuple(int(n) for n in reversed(tensor.shape))))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(target)


def cached_f32_copy(source: str | os.PathLike) -> Path:
    """`write_f32_gguf` of `source` into prefixtune's cache folder ($PREFIXTUNE_CACHE, default
    ~/.cache/prefixtune), written once (atomically) and reused while `source` is unchanged."""
    source = Path(source)
    stat = source.stat()
    root = Path(os.environ.get("PREFIXTUNE_CACHE") or Path.home() / ".cache" / "prefixtune").expanduser()
    target = root / f"{source.stem}-{stat.st_size}-{stat.st_mtime_ns}.F32.gguf"
    if not target.is_file():
        root.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        write_f32_gguf(source, partial)
        os.replace(partial, target)
    return target


def _dequantised_rows(tensor, count: int) -> np.ndarray:
    """`_SAMPLE_ROWS` rows of a GGUF matrix spread over its `count` rows, as fp32 (R, cols)."""
    import gguf as gg

    rows = np.linspace(0, count - 1, min(_SAMPLE_ROWS, count)).astype(np.int64)
    return gg.quants.dequantize(tensor.data[rows], tensor.tensor_type).astype(np.float32)


def _reader(path: str | os.PathLike):
    import gguf as gg

    try:
        return gg.GGUFReader(str(path))
    except (OSError, ValueError) as err:
        raise PrefixTuneError(f"{path} is not a readable GGUF file: {err}") from err


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise PrefixTuneError(f"the GGUF file lacks the field {key}")
        return default
    return field.contents()
