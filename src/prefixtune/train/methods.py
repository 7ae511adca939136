"""What a generation run trains: a prefix (Li & Liang), or one of the baselines the paper compares it
with, fine-tuning every weight and LoRA (through PEFT). `prefixtune train --method NAME`.

The loop (`loop.run`) is the same for all three: the same data, batches, schedule, evaluation,
checkpoints and run folder. A `Method` says only what differs:

| method | trains | the run keeps | evaluate/generate load it with |
| --- | --- | --- | --- |
| prefix | the prefix (its MLP too) | OUTPUT/prefix, a prefix folder | `load_prefix`, on the base |
| finetune | every weight of the base | OUTPUT/model, a Hugging Face folder | `load_base` |
| lora | PEFT's LoRA matrices | OUTPUT/adapter, a PEFT adapter | `PeftModel.from_pretrained`, on the base |

The engine knows nothing of the baselines: they run the plain (or PEFT) model the recipes already
accept, since a recipe calls `model(...)` and `model.generate(...)` without a prefix argument.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prefixtune.engine.model import DEFAULT_NAME
from prefixtune.engine.storage import TRAINABLE_FILE
from prefixtune.engine.wrap import wrap
from prefixtune.errors import PrefixTuneError
from prefixtune.train.run_folder import ADAPTER_DIR, MODEL_DIR, PREFIX_DIR
from prefixtune.train.seq2seq import is_seq2seq

ADAPTER_CONFIG = "adapter_config.json"
PREFIX_CONFIG = "prefix_config.json"
MODEL_CONFIG = "config.json"


@dataclass(frozen=True)
class Method:
    """What one training method trains, keeps and resumes; the loop does the rest."""

    name: str
    folder: str
    """The run folder's subfolder holding the result (the best by dev BLEU, else the last)."""
    build: Callable[[Any, nn.Module, Any, bool], nn.Module]
    """(config, base, tokenizer, shared) -> the model that trains. `shared`: the base is the caller's
    (a sweep's, loaded once for all its runs), so a method that changes its weights trains a copy."""
    parameters: Callable[[nn.Module], list[nn.Parameter]]
    """What the optimizer steps."""
    save: Callable[[nn.Module, Any, Path, bool], None]
    """(model, tokenizer, folder, resumable): write the result to `folder`, replacing what it held."""
    state: Callable[[nn.Module], dict[str, torch.Tensor]]
    """The tensors a checkpoint holds to resume exactly: what trains (the full model for finetune)."""
    restore: Callable[[nn.Module, dict[str, torch.Tensor]], None]
    """Put `state`'s tensors back."""
    release: Callable[[nn.Module], nn.Module]
    """Give back the base as it was handed in (a sweep trains the next run on it)."""


def _trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a baseline trains, by name (the trainable filter doubles as the checkpoint's)."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _restore_trained(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


# -- prefix -------------------------------------------------------------------------------------------
def _build_prefix(config, base: nn.Module, tokenizer, shared: bool) -> nn.Module:
    model = wrap(base)  # the base is frozen; `release` undoes the wrapping
    model.add(DEFAULT_NAME, config.prefix_config(), tokenizer)
    return model


def _prefix_state(model) -> dict[str, torch.Tensor]:
    return model.prefixes[DEFAULT_NAME].reparam.state_dict()  # an MLP's too: it resumes the same


def _restore_prefix(model, state: dict[str, torch.Tensor]) -> None:
    model.prefixes[DEFAULT_NAME].reparam.load_state_dict(state)


def _save_prefix(model, tokenizer, folder: Path, resumable: bool) -> None:
    model.save(folder, include_trainable=resumable)  # the engine swaps the folder in atomically


# -- finetune -----------------------------------------------------------------------------------------
def _build_finetune(config, base: nn.Module, tokenizer, shared: bool) -> nn.Module:
    model = copy.deepcopy(base) if shared else base
    return model.requires_grad_(True)


def _save_model(model, tokenizer, folder: Path, resumable: bool) -> None:
    """A whole Hugging Face folder (weights, config, tokenizer): `load_base` reads it as a base model."""

    def write(staging: Path) -> None:
        from transformers.utils import logging as hf_logging

        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Writing model shards" bar inside the run's own
        try:
            model.save_pretrained(staging)
        finally:
            if shown:
                hf_logging.enable_progress_bar()
        tokenizer.save_pretrained(staging)

    _swap_in(folder, write)


# -- lora ---------------------------------------------------------------------------------------------
def _build_lora(config, base: nn.Module, tokenizer, shared: bool) -> nn.Module:
    """PEFT's LoRA with `--lora-rank` and `--lora-targets`; PEFT's defaults for everything else
    (alpha 8, no dropout, the attention projections it knows for the model's family)."""
    from peft import LoraConfig, get_peft_model

    targets = (
        [t.strip() for t in config.lora_targets.split(",") if t.strip()] if config.lora_targets else None
    )
    lora = LoraConfig(
        r=config.lora_rank,
        target_modules=targets,
        task_type="SEQ_2_SEQ_LM" if is_seq2seq(base) else "CAUSAL_LM",
    )
    torch.manual_seed(config.seed)  # LoRA's A matrices start random: the same seed, the same adapter
    try:
        with _peft_quirks():
            return get_peft_model(base, lora)
    except ValueError as err:  # no default targets for this family, or targets that match nothing
        raise PrefixTuneError(
            f"LoRA cannot be applied to this model: {err}. Name the linear layers to adapt with "
            "--lora-targets, e.g. --lora-targets q_proj,v_proj"
        ) from err


def _save_adapter(model, tokenizer, folder: Path, resumable: bool) -> None:
    _swap_in(folder, model.save_pretrained)  # adapter_config.json and adapter_model.safetensors


def _unload_lora(model) -> nn.Module:
    return model.base_model.unload()  # the LoRA layers replaced by the base's own, unmerged


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


METHODS: dict[str, Method] = {
    "prefix": Method(
        "prefix",
        PREFIX_DIR,
        build=_build_prefix,
        parameters=lambda m: m.prefix_parameters(),
        save=_save_prefix,
        state=_prefix_state,
        restore=_restore_prefix,
        release=lambda m: m.unload(),
    ),
    "finetune": Method(
        "finetune",
        MODEL_DIR,
        build=_build_finetune,
        parameters=_trainable,
        save=_save_model,
        state=_trained_state,
        restore=_restore_trained,
        release=lambda m: m,  # it trained a copy of a shared base
    ),
    "lora": Method(
        "lora",
        ADAPTER_DIR,
        build=_build_lora,
        parameters=_trainable,
        save=_save_adapter,
        state=_trained_state,
        restore=_restore_trained,
        release=_unload_lora,
    ),
}


def stored_size(folder: Path) -> tuple[int, int]:
    """(values, bytes) of the tensors a method's result folder ships: every safetensors file in it
    but a prefix's trainable state (what `prefixtune fold` drops)."""
    from safetensors import safe_open

    values, size = 0, 0
    for file in sorted(folder.glob("*.safetensors")):
        if file.name == TRAINABLE_FILE:
            continue
        size += file.stat().st_size
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (a safetensors handle is not a dict)
                shape = handle.get_slice(key).get_shape()
                values += int(torch.Size(shape).numel())
    return values, size


# -- evaluate and generate ----------------------------------------------------------------------------
def saved_method(folder: Path) -> str:
    """Which method's result `folder` holds: a LoRA adapter, a whole model, else a prefix folder
    (whose reader reports what is wrong with a folder that is none of the three)."""
    adapter = folder / ADAPTER_CONFIG
    if adapter.is_file():
        peft_type = _read_json(adapter).get("peft_type")
        if peft_type != "LORA":
            raise PrefixTuneError(
                f"{folder} holds a PEFT {peft_type} adapter; evaluate and generate read LoRA adapters "
                "(a PEFT prefix converts with `prefixtune import-peft`)"
            )
        return "lora"
    if (folder / MODEL_CONFIG).is_file() and not (folder / PREFIX_CONFIG).is_file():
        return "finetune"
    return "prefix"


def load_saved(folder: Path, method: str, base: str | None) -> tuple[nn.Module, Any]:
    """A fine-tuned model folder, or a LoRA adapter on `base` (default: the base it was trained on,
    when that path exists here, else smollm2-135m), ready to evaluate; and its tokenizer."""
    from prefixtune.loading import load_base
    from prefixtune.train.seq2seq import guess_task

    if method == "finetune":
        if base:
            raise PrefixTuneError(f"{folder} is a whole fine-tuned model: drop --base")
        return load_base(folder, task=guess_task(str(folder)))
    from peft import PeftModel

    recorded = _read_json(folder / ADAPTER_CONFIG).get("base_model_name_or_path")
    name = base or (recorded if recorded and Path(recorded).exists() else "smollm2-135m")
    model, tokenizer = load_base(name, task=guess_task(name))
    try:
        with _peft_quirks():
            return PeftModel.from_pretrained(model, str(folder)).eval(), tokenizer
    except (RuntimeError, ValueError, KeyError) as err:  # shapes or module names of another base
        raise PrefixTuneError(f"the LoRA adapter in {folder} does not fit the base {name}: {err}") from err


@contextmanager
def _peft_quirks() -> Iterator[None]:
    """PEFT 0.21 reads `model.is_gradient_checkpointing`, which transformers 5 deprecates with a
    FutureWarning on every PeftModel built: not ours to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        yield


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PrefixTuneError(f"{path} is unreadable ({err})") from err


def _swap_in(folder: Path, write: Callable[[Path], None]) -> None:
    """Write a folder beside `folder`, then rename it into place: a run killed at any moment leaves
    the previous result or the new one, never half of one (the hidden names are a run's own, see
    `run_folder`)."""
    staging = folder.with_name(f".{folder.name}.tmp")  # one run holds the folder: one fixed name
    shutil.rmtree(staging, ignore_errors=True)  # what a killed run left
    write(staging)
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(staging, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, folder)
