"""Which prefix folders the server may load, and loading them without touching the shared model.

The server holds one frozen model for every client, so loading is stricter here than `load_prefix`:

- A folder is looked for only under the operator's prefix roots (`--prefix-root`), after symlinks
  and `..` are resolved, and every way of not finding one (missing, outside the roots, unreadable,
  not a prefix folder) gets the same message: a client learns nothing about the server's files.
- A folder holding a task head (`head.safetensors`) is refused before anything is read: `load_prefix`
  would copy the head into the base model, which every prefix shares (a saved `lm_head.weight`
  would change every model's answers, the base's included). The server serves generation only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from prefixtune.engine.model import PrefixModel
from prefixtune.engine.storage import CONFIG_FILE, TENSORS_FILE, read_prefix
from prefixtune.errors import PrefixTuneError
from prefixtune.train.heads import HEAD_FILE


class NotAllowed(PrefixTuneError):
    """No loadable prefix folder by that path under the prefix roots (deliberately not saying why)."""


def resolve_roots(roots: Sequence[str | Path]) -> tuple[Path, ...]:
    """The prefix roots, absolute and without symlinks; a PrefixTuneError names one that is no folder."""
    resolved = []
    for root in roots:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise PrefixTuneError(f"--prefix-root {root}: no such folder")
        resolved.append(path.resolve())
    return tuple(resolved)


def find_prefix_folder(given: str, roots: Sequence[Path]) -> Path:
    """The prefix folder `given` names under `roots` (absolute, or relative to a root), or NotAllowed.

    Args:
        roots: resolved folders (`resolve_roots`).
    """
    path = Path(given)
    candidates = [path] if path.is_absolute() else [root / path for root in roots]
    for candidate in candidates:
        folder = _inside(candidate, roots)
        if folder is not None and folder.is_dir() and _files_readable(folder, roots):
            return folder
    raise NotAllowed(
        f"no prefix folder {given!r} can be loaded: give a prefix folder under one of the folders "
        "the server was started with (--prefix-root)"
    )


def check_servable(folder: Path) -> None:
    """Refuse a prefix folder that would change the shared model (one with a task head)."""
    if (folder / HEAD_FILE).exists() or (folder / HEAD_FILE).is_symlink():
        raise PrefixTuneError(
            f"{folder.name} holds a task head ({HEAD_FILE}); loading it would overwrite the base model "
            "that every prefix shares, and the server serves text generation only"
        )


def load_for_serving(model: PrefixModel, folder: Path, name: str, check_weights: bool = True) -> None:
    """Read the prefix in `folder` and add it to the bank as `name`; nothing else in `model` changes.

    Unlike `load_prefix`, a task head is refused (`check_servable`) before any file is read.
    """
    check_servable(folder)
    prefix = read_prefix(model, folder, trainable=False, check_weights=check_weights)
    model.insert(name, prefix.to(model.device))


def _inside(path: Path, roots: Sequence[Path]) -> Path | None:
    """`path` resolved (symlinks, `..`) if it exists and lies in one of `roots`, else None."""
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # missing, a symlink loop, an embedded NUL byte
        return None
    return resolved if any(resolved.is_relative_to(root) for root in roots) else None


def _files_readable(folder: Path, roots: Sequence[Path]) -> bool:
    """Whether the files a prefix is read from are readable files that also resolve under `roots`
    (a symlinked `prefix_config.json` must not lead out of them)."""
    for name in (CONFIG_FILE, TENSORS_FILE):
        file = _inside(folder / name, roots)
        if file is None or not file.is_file() or not os.access(file, os.R_OK):
            return False
    return True
