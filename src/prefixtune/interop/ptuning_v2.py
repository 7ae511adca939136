"""Read the prefix of a P-Tuning v2 checkpoint (Liu et al. 2022, the reference code's `PrefixEncoder`).

P-Tuning v2 saves its prefix inside the checkpoint of the whole model:
- `prefix_encoder.embedding.weight`, (P, L * 2 * H_kv * D), when it trains the prefix directly;
- or, with `prefix_projection`, `prefix_encoder.embedding.weight` (P, E) and an MLP
  `prefix_encoder.trans.{0,2}.{weight,bias}` (Linear, Tanh, Linear), whose output has that shape.
It hands the (P, L * 2 * H_kv * D) tensor to the model as `past_key_values` viewed as
(P, L * 2, H_kv, D): the layout of PEFT's `prompt_embeddings`, so the PEFT import does the rest and
the prefix gets `positions="shifted"` (past tokens push real tokens to P..P+n-1).

Decoder-only models only. P-Tuning v2's own models are mostly BERT-family classifiers; there its
`past_key_values` also shift BERT's absolute positions, which prefixtune's encoder prefixes
(no position) do not reproduce, and the trained classifier head sits in the same checkpoint; so
those checkpoints are refused rather than read into a prefix that would act differently.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from prefixtune.engine.model import PrefixModel
from prefixtune.errors import PrefixTuneError
from prefixtune.interop.peft import PeftPrefix, insert_peft_prefix

EMBEDDING_KEY = "prefix_encoder.embedding.weight"
"""The checkpoint key's ending (ChatGLM's checkpoints put `transformer.` before it)."""
CHECKPOINT_FILES = ("model.safetensors", "pytorch_model.bin")


def import_ptuning_v2(
    model: nn.Module, path: str | Path, *, name: str | None = None, trainable: bool = False
) -> PrefixModel:
    """Load the prefix of a P-Tuning v2 checkpoint onto `model` (a base model or a `PrefixModel`).

    Args:
        path: a checkpoint file (.safetensors or .bin) or a folder holding model.safetensors or
            pytorch_model.bin (or their sharded form with an index).
        name: its name in the bank (default: "default" on a fresh model, else the path's name).
        trainable: make the (flat) prefix a trainable parameter, to go on training it.
    """
    from prefixtune.engine.wrap import wrap

    where = str(path)
    embeddings = read_ptuning_v2_prefix(path)
    fresh = not isinstance(model, PrefixModel)
    prefix_model = wrap(model) if fresh else model
    try:
        slot = prefix_model.layout.slots[0]
        layers, width = len(prefix_model.layout.slots), embeddings.shape[1]
        needed = layers * 2 * slot.kv_heads * slot.head_dim
        if width != needed:
            raise PrefixTuneError(
                f"{where}: the prefix is {width} wide, but this model's {layers} attention layers of "
                f"{slot.kv_heads} KV heads x {slot.head_dim} need {needed}; "
                "pass the base model the checkpoint was trained on"
            )
        # P-Tuning v2 records no shapes of its own: they are the model's, checked again by the import
        peft = PeftPrefix(embeddings, layers, slot.kv_heads, slot.head_dim, {})
        default = "default" if not prefix_model.prefixes else Path(path).stem
        return insert_peft_prefix(prefix_model, peft, where, name=name or default, trainable=trainable)
    except Exception:
        if fresh:  # leave the user's model as it was handed in
            prefix_model.unload()
        raise


def read_ptuning_v2_prefix(path: str | Path) -> torch.Tensor:
    """The (P, L * 2 * H_kv * D) fp32 prefix of a P-Tuning v2 checkpoint, its MLP run if it has one."""
    tensors = _prefix_tensors(Path(path))
    prefix = tensors["embedding.weight"].float()  # (P, L * 2 * H_kv * D), or (P, E) before the MLP
    if "trans.0.weight" in tensors:
        with torch.no_grad():
            hidden = torch.tanh(
                nn.functional.linear(prefix, tensors["trans.0.weight"].float(), _bias(tensors, 0))
            )
            prefix = nn.functional.linear(hidden, tensors["trans.2.weight"].float(), _bias(tensors, 2))
    return prefix


def _bias(tensors: dict[str, torch.Tensor], layer: int) -> torch.Tensor | None:
    bias = tensors.get(f"trans.{layer}.bias")
    return None if bias is None else bias.float()


def _prefix_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The `prefix_encoder.*` tensors of the checkpoint, keyed by what follows `prefix_encoder.`."""
    files = _checkpoint_files(path)
    found: dict[str, torch.Tensor] = {}
    for file in files:
        for key, tensor in _load(file).items():
            head, sep, tail = key.partition("prefix_encoder.")
            if sep and (head == "" or head.endswith(".")):
                found[tail] = tensor
    if "embedding.weight" not in found:
        raise PrefixTuneError(f"{path} holds no P-Tuning v2 prefix (no tensor named *{EMBEDDING_KEY})")
    if "trans.0.weight" in found and "trans.2.weight" not in found:
        raise PrefixTuneError(f"{path}: the prefix MLP is incomplete (trans.0 without trans.2)")
    return found


def _checkpoint_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise PrefixTuneError(f"{path} does not exist")
    for name in CHECKPOINT_FILES:
        if (path / name).is_file():
            return [path / name]
        index = path / f"{name}.index.json"
        if index.is_file():  # a sharded checkpoint: read only the shards that hold the prefix
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise PrefixTuneError(f"{index} is corrupt: {err}") from err
            shards = {file for key, file in weight_map.items() if "prefix_encoder." in key}
            return [path / file for file in sorted(shards)]
    raise PrefixTuneError(f"{path} holds none of {', '.join(CHECKPOINT_FILES)} (or their index)")


def _load(file: Path) -> dict[str, torch.Tensor]:
    try:
        if file.suffix == ".safetensors":
            return load_file(str(file))
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors and torch raise their own types for corrupt files
        raise PrefixTuneError(f"{file} is not a readable checkpoint ({err})") from err
