"""Read and write PEFT prefix-tuning adapters (`adapter_config.json` + `adapter_model.safetensors`).

PEFT stores one tensor, `prompt_embeddings`, of shape (P, L * 2 * H_kv * D): row p holds the p-th
prefix vector of every layer, columns ordered layer, then key/value, then KV head, then head size
(PEFT views it as (P, L * 2, H_kv, D) and hands layer l keys [2l] and values [2l + 1] through
`past_key_values`). Under grouped-query attention PEFT records the KV heads, not the query heads, in
`num_attention_heads`, and `token_dim` = H_kv * D.

PEFT feeds the prefix as P past tokens, so real tokens sit at positions P..P+n-1: an imported prefix
gets `positions="shifted"`, which reproduces PEFT's outputs, and only a `shifted` prefix is exported
unless the caller accepts the change. Two places where the conventions part (documented, not bugs):
- sliding-window layers (Gemma, Mistral): PEFT's past tokens leave the window once the input is
  longer than it; prefixtune keeps the prefix visible to every query;
- left-padded rows in a forward pass: prefixtune numbers a padded row from its first real token
  (the row gets its solo result), PEFT from the pads.

`prefix_projection=True` adapters need nothing special: PEFT saves the MLP's output, not the MLP,
so the file holds the materialised prefix either way. Only decoder-only models are handled: for
encoder-decoder models PEFT feeds one prefix to the decoder's self and cross attention, which has
no counterpart in prefixtune's per-module prefixes. Nothing here imports peft.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from prefixtune.engine.config import PrefixConfig
from prefixtune.engine.layout import SlotSpec
from prefixtune.errors import PrefixTuneError

if TYPE_CHECKING:
    from prefixtune.engine.model import PrefixModel

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_WEIGHTS_PICKLE = "adapter_model.bin"  # older PEFT releases
TENSOR_KEY = "prompt_embeddings"
PEFT_TYPE = "PREFIX_TUNING"
TASK_TYPE = "CAUSAL_LM"


@dataclass(frozen=True)
class PeftPrefix:
    """A PEFT prefix-tuning adapter as read from disk."""

    embeddings: torch.Tensor
    """(P, L * 2 * token_dim) fp32: PEFT's `prompt_embeddings`."""
    layers: int
    """Attention layers L (PEFT's `num_layers`)."""
    kv_heads: int
    """Key/value heads per layer (PEFT's `num_attention_heads`)."""
    head_dim: int
    """Size of one head: `token_dim // num_attention_heads`."""
    config: dict[str, Any]
    """The whole `adapter_config.json`."""

    @property
    def length(self) -> int:
        return self.embeddings.shape[0]


def to_pairs(peft: PeftPrefix) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """PEFT's flat tensor -> per layer (key, value), each (H_kv, P, D)."""
    kv = peft.embeddings.view(peft.length, peft.layers, 2, peft.kv_heads, peft.head_dim)  # (P, L, 2, H, D)
    kv = kv.permute(1, 2, 3, 0, 4)  # (L, 2, H_kv, P, D)
    return [(layer[0], layer[1]) for layer in kv]


def from_pairs(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Inverse of `to_pairs`: per layer (key, value) of (H_kv, P, D) -> (P, L * 2 * H_kv * D)."""
    kv = torch.stack([torch.stack(pair) for pair in pairs])  # (L, 2, H_kv, P, D)
    kv = kv.permute(3, 0, 1, 2, 4)  # (P, L, 2, H_kv, D)
    return kv.reshape(kv.shape[0], -1).contiguous()


# -- reading ------------------------------------------------------------------------------------------
def read_peft_prefix(path: str | Path) -> PeftPrefix:
    """Read a PEFT prefix-tuning adapter folder, or fail naming what is wrong with it."""
    folder = Path(path)
    config = _read_adapter_config(folder)
    embeddings = _read_embeddings(folder)
    try:
        virtual, layers = int(config["num_virtual_tokens"]), int(config["num_layers"])
        token_dim, heads = int(config["token_dim"]), int(config["num_attention_heads"])
    except (KeyError, TypeError, ValueError) as err:
        raise PrefixTuneError(f"{folder / ADAPTER_CONFIG} lacks a valid field: {err}") from err
    if token_dim % heads:
        raise PrefixTuneError(
            f"{folder / ADAPTER_CONFIG}: token_dim {token_dim} is not a multiple of {heads} heads"
        )
    expected = (virtual, layers * 2 * token_dim)
    if tuple(embeddings.shape) != expected:
        raise PrefixTuneError(
            f"{folder}: {TENSOR_KEY} has shape {tuple(embeddings.shape)}, but the config says {expected} "
            "(num_virtual_tokens, num_layers * 2 * token_dim)"
        )
    return PeftPrefix(embeddings.float(), layers, heads, token_dim // heads, config)


def _read_adapter_config(folder: Path) -> dict[str, Any]:
    file = folder / ADAPTER_CONFIG
    if not file.is_file():
        raise PrefixTuneError(f"{folder} is not a PEFT adapter folder: it has no {ADAPTER_CONFIG}")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PrefixTuneError(f"{file} is corrupt: {err}") from err
    if not isinstance(config, dict) or config.get("peft_type") != PEFT_TYPE:
        found = config.get("peft_type") if isinstance(config, dict) else None
        raise PrefixTuneError(f"{file} holds a {found} adapter; only {PEFT_TYPE} adapters are prefixes")
    submodules = config.get("num_transformer_submodules")
    if config.get("task_type") not in (TASK_TYPE, None) or submodules not in (1, None):
        raise PrefixTuneError(
            f"{file} is a {config.get('task_type')} adapter; only decoder-only ({TASK_TYPE}) "
            "prefixes can be imported"
        )
    return config


def _read_embeddings(folder: Path) -> torch.Tensor:
    safe, pickled = folder / ADAPTER_WEIGHTS, folder / ADAPTER_WEIGHTS_PICKLE
    try:
        if safe.is_file():
            tensors = load_file(str(safe))
        elif pickled.is_file():
            tensors = torch.load(pickled, map_location="cpu", weights_only=True)
        else:
            raise PrefixTuneError(f"{folder} holds neither {ADAPTER_WEIGHTS} nor {ADAPTER_WEIGHTS_PICKLE}")
    except PrefixTuneError:
        raise
    except Exception as err:  # safetensors and torch raise their own types for corrupt files
        raise PrefixTuneError(f"the adapter weights in {folder} are corrupt or truncated ({err})") from err
    if TENSOR_KEY not in tensors:
        raise PrefixTuneError(f"{folder}: the adapter weights hold no {TENSOR_KEY!r} tensor")
    return tensors[TENSOR_KEY]


def check_fits(peft: PeftPrefix, slots: list[SlotSpec], where: str) -> None:
    """Raise a PrefixTuneError naming the first way the PEFT prefix does not fit these attention slots."""
    if peft.layers != len(slots):
        raise PrefixTuneError(
            f"{where} has {peft.layers} layers but the model has {len(slots)} attention layers; "
            "pass the base model the adapter was trained on (--base)"
        )
    for i, slot in enumerate(slots):
        if (slot.kv_heads, slot.head_dim) != (peft.kv_heads, peft.head_dim):
            raise PrefixTuneError(
                f"{where} has {peft.kv_heads} KV heads of size {peft.head_dim} per layer, but attention "
                f"layer {i} of the model has {slot.kv_heads} of size {slot.head_dim}; "
                "pass the base model the adapter was trained on (--base)"
            )


def import_peft(
    model: nn.Module, path: str | Path, *, name: str | None = None, trainable: bool = False
) -> PrefixModel:
    """Load a PEFT prefix-tuning adapter onto `model` (a base model or a `PrefixModel`).

    The prefix gets `positions="shifted"` and reproduces PEFT's outputs. Returns the `PrefixModel`.

    Args:
        name: its name in the bank (default: "default" on a fresh model, else the folder's name).
        trainable: make the (flat) prefix a trainable parameter, to go on training it.
    """
    peft = read_peft_prefix(path)  # a bad adapter fails before the model is touched
    return insert_peft_prefix(
        model, peft, str(path), name=name or _default_name(model, path), trainable=trainable
    )


def insert_peft_prefix(
    model: nn.Module, peft: PeftPrefix, where: str, *, name: str, trainable: bool = False
) -> PrefixModel:
    """Put a prefix in PEFT's layout into the bank of `model` (a base model or a `PrefixModel`) as
    a flat `positions="shifted"` prefix called `name`; `where` names its source in errors."""
    from prefixtune.engine.model import PrefixModel
    from prefixtune.engine.prefix import Prefix
    from prefixtune.engine.wrap import wrap

    fresh = not isinstance(model, PrefixModel)
    prefix_model = wrap(model) if fresh else model
    try:
        if prefix_model.injector.bidirectional or prefix_model.config.is_encoder_decoder:
            raise PrefixTuneError(
                f"{where} holds a past-tokens prefix (real tokens at positions P..P+n-1), which "
                "prefixtune reproduces for decoder-only models only"
            )
        check_fits(peft, prefix_model.layout.slots, where)
        config = PrefixConfig(length=peft.length, reparam="flat", init="zero", positions="shifted")
        prefix = Prefix(config, prefix_model.layout, peft.length, 0)
        with torch.no_grad():
            prefix.reparam.prefix.copy_(prefix_model.layout.join(to_pairs(peft)))
        prefix.requires_grad_(trainable)
        prefix_model.insert(name, prefix.to(prefix_model.device))
    except Exception:
        if fresh:  # leave the user's model as it was handed in
            prefix_model.unload()
        raise
    return prefix_model


def _default_name(model: nn.Module, path: str | Path) -> str:
    """ "default" on a fresh model, else the source's name."""
    from prefixtune.engine.model import DEFAULT_NAME, PrefixModel

    return Path(path).name if isinstance(model, PrefixModel) and model.prefixes else DEFAULT_NAME


# -- writing ------------------------------------------------------------------------------------------
def export_peft(
    model: PrefixModel,
    path: str | Path,
    *,
    name: str | None = None,
    allow_position_change: bool = False,
    base_model_name_or_path: str | None = None,
) -> Path:
    """Write prefix `name` (default: the default prefix) of a `PrefixModel` as a PEFT adapter folder.

    Args:
        allow_position_change: export a `positions="keep"` prefix anyway; PEFT will run it with real
            tokens at P..P+n-1, so its outputs differ from prefixtune's.
        base_model_name_or_path: what PEFT records as the base model (default: the base's own name).
    """
    from prefixtune.engine.storage import fingerprint

    name = name or model.default_prefix
    if name not in model.prefixes:
        raise PrefixTuneError(f"no prefix named {name!r}; this model holds {sorted(model.prefixes)}")
    prefix = model.prefixes[name]
    _check_exportable_kind(prefix.config.kind, prefix.config.layers)
    with torch.no_grad():
        pairs = [(k.detach().float().cpu(), v.detach().float().cpu()) for k, v in prefix.slot_tensors()]
    base = fingerprint(model)
    return write_peft_prefix(
        pairs,
        model.layout.slots,
        positions=prefix.config.positions,
        architecture=base["architecture"],
        out=Path(path),
        allow_position_change=allow_position_change,
        base_model_name_or_path=base_model_name_or_path or base["name_or_path"],
    )


def export_peft_folder(
    source: str | Path,
    out: str | Path,
    *,
    allow_position_change: bool = False,
    base_model_name_or_path: str | None = None,
) -> Path:
    """Convert a prefixtune prefix folder into a PEFT adapter folder (no base model needed)."""
    from prefixtune.engine.storage import TENSORS_FILE, read_meta

    source = Path(source)
    meta = read_meta(source)
    _check_exportable_kind(meta["config"].get("kind", "prefix"), meta["config"].get("layers"))
    slots = [SlotSpec(**s) for s in meta["slots"]]
    try:
        tensors = load_file(str(source / TENSORS_FILE))
        pairs = [(tensors[f"slots.{i}.key"], tensors[f"slots.{i}.value"]) for i in range(len(slots))]
    except Exception as err:  # a missing file, a missing slot, or safetensors' own error types
        raise PrefixTuneError(f"{source / TENSORS_FILE} is missing, corrupt or incomplete ({err})") from err
    return write_peft_prefix(
        pairs,
        slots,
        positions=meta["config"].get("positions", "keep"),
        architecture=meta["base"].get("architecture"),
        out=Path(out),
        allow_position_change=allow_position_change,
        base_model_name_or_path=base_model_name_or_path or meta["base"].get("name_or_path"),
    )


def write_peft_prefix(
    pairs: list[tuple[torch.Tensor, torch.Tensor]],
    slots: list[SlotSpec],
    *,
    positions: str,
    architecture: str | None,
    out: Path,
    allow_position_change: bool,
    base_model_name_or_path: str | None,
) -> Path:
    """Write per-slot (key, value) pairs, each (H_kv, P, D), as a PEFT prefix-tuning adapter folder."""
    _check_exportable(slots, positions, architecture, allow_position_change)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PrefixTuneError(f"{out} exists and is not an empty folder; choose a new output folder")
    length = pairs[0][0].shape[1]
    kv_heads, head_dim = slots[0].kv_heads, slots[0].head_dim
    config = {
        "peft_type": PEFT_TYPE,
        "task_type": TASK_TYPE,
        "base_model_name_or_path": base_model_name_or_path,
        "num_virtual_tokens": length,
        "num_layers": len(slots),
        "token_dim": kv_heads * head_dim,
        "num_attention_heads": kv_heads,
        "num_transformer_submodules": 1,
        "encoder_hidden_size": kv_heads * head_dim,
        "prefix_projection": False,  # the file holds the materialised prefix, as PEFT's own saves do
        "inference_mode": True,
        "init_weights": None,
        "modules_to_save": None,
        "revision": None,
        "auto_mapping": None,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file({TENSOR_KEY: from_pairs(pairs)}, staging / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _check_exportable_kind(kind: str, layers) -> None:
    """PEFT gives every layer the prefix, seen by every token: a prefix on some layers only has no
    PEFT counterpart (zero keys for the others would not be masked there), nor has an infix.

    An embedding prompt (`kind="embedding"`) exports fine: its stored keys/values were computed at
    positions 0..P-1, which is exactly where PEFT's past tokens sit, so PEFT reproduces it as a
    prefix-tuning adapter.
    """
    if kind == "infix":
        raise PrefixTuneError(
            "an infix is seen only by the target's tokens, which a PEFT prefix-tuning adapter cannot "
            "express; only prefixes and embedding prompts export to PEFT"
        )
    if layers is not None:
        raise PrefixTuneError(
            f"this prefix covers attention layers {list(layers)} only, but a PEFT prefix-tuning adapter "
            "has one for every layer; train without --layers to export it to PEFT"
        )


def _check_exportable(
    slots: list[SlotSpec], positions: str, architecture: str | None, allow_position_change: bool
) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if architecture not in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
        raise PrefixTuneError(
            f"PEFT interchange covers decoder-only causal language models; {architecture} is not one"
        )
    shapes = sorted({(s.kv_heads, s.head_dim) for s in slots})
    if len(shapes) != 1:
        raise PrefixTuneError(
            f"the attention layers differ in shape ({shapes}: KV heads, head size); "
            "a PEFT prefix has one shape for every layer"
        )
    if positions != "shifted" and not allow_position_change:
        raise PrefixTuneError(
            f'this prefix was trained with positions="{positions}" (real tokens at 0..n-1), but PEFT puts '
            "them at P..P+n-1, so PEFT's outputs would differ; train with --positions shifted for PEFT, "
            "or pass --allow-position-change to export it anyway"
        )
