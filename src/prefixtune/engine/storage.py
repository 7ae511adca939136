"""A prefix on disk: a folder with `prefix_config.json` and `prefix.safetensors`.

`prefix.safetensors` holds the folded prefix, per attention slot `slots.{i}.key` and
`slots.{i}.value`, each (H_kv, P, D) in fp32: the MLP, if any, has been run once and dropped, so the
file is the few hundred KB the paper promises. `trainable.safetensors` (optional) keeps the
reparametrisation's own weights so that training can continue where it stopped.
`prefix_config.json` holds the config, the position convention, the slots and a fingerprint of the
base model, checked on load so a prefix is never silently applied to a model it was not made for.

Code outside the engine can keep its own tensors with every prefix (a classifier's head,
`train/heads.py`): each `Extra` handed to `save_prefix` becomes `NAME.safetensors` in the same folder,
written in the same atomic swap, and `read_extra` gives it back. What those tensors mean is no
business of this module.
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
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from prefixtune.engine.config import PrefixConfig
from prefixtune.engine.errors import PrefixTuneError, WeightsMismatch
from prefixtune.engine.layout import SlotSpec, select_slots
from prefixtune.engine.prefix import Prefix
from prefixtune.engine.schema import check_meta

if TYPE_CHECKING:
    from prefixtune.engine.model import PrefixModel

CONFIG_FILE = "prefix_config.json"
TENSORS_FILE = "prefix.safetensors"
TRAINABLE_FILE = "trainable.safetensors"
FORMAT = "prefixtune-prefix"
FORMAT_VERSION = 1
_SAMPLES_PER_TENSOR = 16
EXTRA_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class Extra:
    """Tensors that travel with a saved prefix in a file of their own, `NAME.safetensors`."""

    tensors: dict[str, torch.Tensor]
    """What the file holds (written as given: the caller picks dtype and device)."""
    metadata: dict[str, str]
    """Strings stored in the file's safetensors header."""


def save_prefix(
    model: PrefixModel,
    name: str,
    path: Path,
    include_trainable: bool = False,
    extras: dict[str, Extra] | None = None,
) -> Path:
    """Write prefix `name` of `model` to the folder `path`, atomically (a new folder is swapped in).

    Args:
        extras: file name (without `.safetensors`) -> tensors to keep beside the prefix (see `Extra`).
    """
    _check_target(path)
    extras = extras or {}
    for extra_name in extras:
        _check_extra_name(extra_name)
    prefix = model.prefixes[name]
    with torch.no_grad():
        pairs = prefix.slot_tensors()
    tensors = _slot_tensors(prefix.slots, pairs)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": prefix.config.to_dict(),
        "length": prefix.length,
        "positions": prefix.config.positions,
        "slots": [s.to_dict() for s in model.layout.slots],
        "base": fingerprint(model),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file(tensors, staging / TENSORS_FILE, metadata={"format": FORMAT})
        if include_trainable and not (prefix.config.kind == "embedding" and not prefix.prompt):
            # (a folded prompt's flat state is its keys/values, already in TENSORS_FILE)
            state = {k: v.detach().float().cpu().contiguous() for k, v in prefix.reparam.state_dict().items()}
            save_file(state, staging / TRAINABLE_FILE, metadata={"reparam": prefix.config.reparam})
        for extra_name, extra in extras.items():
            save_file(extra.tensors, staging / f"{extra_name}{EXTRA_SUFFIX}", metadata=extra.metadata)
        (staging / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _swap_in(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def read_prefix(model: PrefixModel, path: Path, trainable: bool, check_weights: bool) -> Prefix:
    """Read a prefix folder into a `Prefix` that fits `model`, or fail naming the mismatch."""
    meta = read_meta(path)
    check_fits(meta, model, check_weights)
    config = PrefixConfig.from_dict(meta["config"])
    length = int(meta["length"])
    tensors = _load_tensors(path / TENSORS_FILE)
    slots = select_slots(config.layers, len(model.layout.slots))  # the layers this prefix covers
    pairs = []
    for i in slots:
        slot = model.layout.slots[i]
        expected = (slot.kv_heads, length, slot.head_dim)
        key, value = tensors.get(f"slots.{i}.key"), tensors.get(f"slots.{i}.value")
        if key is None or value is None or tuple(key.shape) != expected or tuple(value.shape) != expected:
            raise PrefixTuneError(f"{path / TENSORS_FILE}: slot {i} is missing or not of shape {expected}")
        pairs.append((key, value))
    state_file = path / TRAINABLE_FILE
    if trainable and state_file.exists():
        prefix = Prefix(config, model.layout, length, model.base.get_input_embeddings().embedding_dim)
        try:
            prefix.reparam.load_state_dict(_load_tensors(state_file))
        except RuntimeError as err:
            raise PrefixTuneError(f"{state_file} does not match its config: {err}") from err
        return prefix
    prefix = Prefix.from_keys_values(config, model.layout, model.layout.select(slots).join(pairs))
    prefix.reparam.requires_grad_(trainable)
    return prefix


def read_meta(path: Path) -> dict[str, Any]:
    """The parsed `prefix_config.json` of a prefix folder, or a PrefixTuneError saying what is wrong."""
    if not path.exists():
        raise PrefixTuneError(f"no prefix folder at {path}")
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise PrefixTuneError(f"{path} is not a prefix folder: it has no {CONFIG_FILE}")
    try:
        meta = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PrefixTuneError(f"{config_file} is corrupt: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PrefixTuneError(f"{config_file} is not a prefixtune prefix config")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise PrefixTuneError(f"{path} was written by a newer prefixtune; upgrade prefixtune to read it")
    check_meta(meta, config_file)  # every field's type and range, or one error naming the field
    return meta


def read_extra(path: Path, name: str) -> Extra | None:
    """The `Extra` saved as `NAME.safetensors` in a prefix folder, or None when it has none."""
    file = path / f"{name}{EXTRA_SUFFIX}"
    if not file.is_file():
        return None
    tensors = _load_tensors(file)
    with safe_open(str(file), "pt") as handle:
        metadata = handle.metadata() or {}
    return Extra(tensors, metadata)


def extra_names(path: Path) -> list[str]:
    """The extras a prefix folder holds (its `.safetensors` files besides the prefix's own)."""
    own = (TENSORS_FILE, TRAINABLE_FILE)
    return sorted(
        f.name.removesuffix(EXTRA_SUFFIX)
        for f in path.glob(f"*{EXTRA_SUFFIX}")
        if f.is_file() and f.name not in own and not f.name.startswith(".")
    )


def _check_extra_name(name: str) -> None:
    if not name.isidentifier() or f"{name}{EXTRA_SUFFIX}" in (TENSORS_FILE, TRAINABLE_FILE):
        raise ValueError(f"{name!r} cannot name an extra file of a prefix folder")


def check_fits(meta: dict[str, Any], model: PrefixModel, check_weights: bool) -> None:
    """Raise a PrefixTuneError naming the first way the saved prefix does not fit `model`."""
    saved = [SlotSpec(**s) for s in meta["slots"]]
    here = model.layout.slots
    base = meta["base"]
    if len(saved) != len(here):
        raise PrefixTuneError(
            f"the prefix has {len(saved)} attention layers but this model has {len(here)} "
            f"(prefix made for {base.get('architecture')}, model is {type(model.base).__name__})"
        )
    for i, (a, b) in enumerate(zip(saved, here, strict=True)):
        if a.kind != b.kind:
            raise PrefixTuneError(
                f"attention layer {i}: the prefix was made for {a.kind} attention, the model's is {b.kind}"
            )
        if a.kv_heads != b.kv_heads:
            raise PrefixTuneError(
                f"attention layer {i}: the prefix has {a.kv_heads} KV heads, the model {b.kv_heads}"
            )
        if a.head_dim != b.head_dim:
            raise PrefixTuneError(
                f"attention layer {i}: the prefix has head size {a.head_dim}, the model {b.head_dim}"
            )
    if check_weights:
        expected = torch.tensor(base.get("weights_sample", []), dtype=torch.float32)
        actual = torch.tensor(fingerprint(model)["weights_sample"], dtype=torch.float32)
        if expected.shape != actual.shape or not torch.allclose(expected, actual, rtol=2e-2, atol=1e-3):
            raise WeightsMismatch(
                f"the base model's weights differ from those the prefix was trained on "
                f"({base.get('architecture')}, {base.get('name_or_path') or 'unnamed'})"
            )


def fingerprint(model: PrefixModel) -> dict[str, Any]:
    """What identifies the base model: architecture, slot shapes and a sample of its weights.

    The sample is compared with a tolerance, not hashed, so that the same weights loaded in bf16
    or fp16 still match while different weights do not.
    """
    base = model.base
    modules = dict(base.named_modules())
    tensors = [base.get_input_embeddings().weight]
    for slot in (model.layout.slots[0], model.layout.slots[-1]):
        tensors.append(next(modules[slot.name].parameters()))
    sample: list[float] = []
    for tensor in tensors:
        flat = tensor.detach().flatten()
        # integer spacing: float linspace rounds past the last index of tensors over 2**24 elements
        steps = torch.arange(_SAMPLES_PER_TENSOR, device=flat.device)
        index = steps * (flat.numel() - 1) // (_SAMPLES_PER_TENSOR - 1)
        sample += flat.index_select(0, index).float().cpu().tolist()
    return {
        "architecture": type(base).__name__,
        "model_type": getattr(base.config, "model_type", None),
        "name_or_path": getattr(base.config, "_name_or_path", None) or None,
        "slots": len(model.layout.slots),
        "weights_sample": sample,
    }


def _slot_tensors(slots: tuple[int, ...], pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """The file's tensors: `slots.{i}.key`/`.value` (H_kv, P, D) fp32, named by the model's slot index
    (a prefix on a subset of layers has entries for those only)."""
    tensors = {}
    for i, (key, value) in zip(slots, pairs, strict=True):
        tensors[f"slots.{i}.key"] = key.detach().float().cpu().contiguous()
        tensors[f"slots.{i}.value"] = value.detach().float().cpu().contiguous()
    return tensors


def _load_tensors(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise PrefixTuneError(f"{file} is missing")
    try:
        return load_file(str(file))
    except Exception as err:  # safetensors raises its own error types for truncated or corrupt files
        raise PrefixTuneError(f"{file} is corrupt or truncated ({err}); save the prefix again") from err


def _check_target(path: Path) -> None:
    """Only an empty folder or an earlier prefix folder may be written over."""
    if path.exists() and not path.is_dir():
        raise PrefixTuneError(f"{path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not (path / CONFIG_FILE).exists():
        raise PrefixTuneError(f"{path} holds other files; save the prefix into a new or empty folder")


def _swap_in(staging: Path, path: Path) -> None:
    """Replace `path` by `staging` so that a reader never sees a half-written folder."""
    if not path.exists():
        os.replace(staging, path)
        return
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)
    os.replace(staging, path)
    shutil.rmtree(old, ignore_errors=True)


def fold_folder(source: Path, target: Path) -> dict[str, Any]:
    """Write `source` (a prefix folder) to `target` without its trainable state, the prefix recomputed
    from that state when it is present. No base model is needed: the MLP alone produces the prefix.

    Returns the prefix folder's metadata.
    """
    from prefixtune.engine.layout import SlotLayout

    meta = read_meta(source)
    layout = SlotLayout([SlotSpec(**s) for s in meta["slots"]])
    tensors = _load_tensors(source / TENSORS_FILE)
    state_file = source / TRAINABLE_FILE
    # An embedding prompt's keys/values need the base model to recompute: TENSORS_FILE already holds
    # them (computed when it was saved), so only its trainable state is dropped.
    prompt = meta["config"].get("kind", "prefix") == "embedding"
    if state_file.exists() and meta["config"].get("reparam") == "mlp" and not prompt:
        state = _load_tensors(state_file)
        # "embedding" for one MLP, "parts.<kind>.embedding" for one MLP per slot kind (encoder-decoder)
        first = next(k for k in state if k.endswith("embedding"))
        length, embed_dim = state[first].shape
        hidden = state[first.replace("embedding", "mlp.0.weight")].shape[0]
        config = PrefixConfig.from_dict(meta["config"]).replace(mlp_hidden=hidden)
        prefix = Prefix(config, layout, length, embed_dim)
        prefix.reparam.load_state_dict(state)
        with torch.no_grad():
            tensors = _slot_tensors(prefix.slots, prefix.slot_tensors())
    _check_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_file(tensors, staging / TENSORS_FILE, metadata={"format": FORMAT})
        for extra_name in extra_names(source):  # what other code keeps with the prefix goes with it
            file = f"{extra_name}{EXTRA_SUFFIX}"
            shutil.copyfile(source / file, staging / file)
        (staging / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _swap_in(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return meta
