"""The small E2E sample shipped inside the package (see resources/e2e_sample/SOURCES.md)."""

from __future__ import annotations

import atexit
import contextlib
from importlib import resources
from pathlib import Path

from prefixtune.errors import PrefixTuneError

E2E_SPLITS = ("train", "dev")
_extracted = contextlib.ExitStack()
atexit.register(_extracted.close)


def bundled_e2e(split: str) -> Path:
    """Path of the bundled E2E sample CSV for `split` ("train" or "dev"); read it with `read_e2e_csv`."""
    if split not in E2E_SPLITS:
        raise PrefixTuneError(
            f"unknown split {split!r} for the bundled E2E sample. Use one of: {', '.join(E2E_SPLITS)}."
        )
    resource = resources.files("prefixtune").joinpath("resources", "e2e_sample", f"{split}.csv")
    if isinstance(resource, Path):
        path = resource
    else:  # installed as a zip: extract to a temporary file that lives until the interpreter exits
        path = _extracted.enter_context(resources.as_file(resource))
    if not path.is_file():
        raise PrefixTuneError(
            f"the bundled E2E sample file {path} is missing: this prefixtune installation is incomplete. "
            "Reinstall it (pip install --force-reinstall prefixtune)."
        )
    return path
