"""Optional dependencies of the metrics, imported on first use with an error that says how to install them."""

from __future__ import annotations

import importlib
from types import ModuleType

from prefixtune.errors import PrefixTuneError

INSTALL_HINT = "pip install 'prefixtune[eval]'"


def require(module: str, package: str, needed_for: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise PrefixTuneError(
            f"{needed_for} needs the Python package {package!r}, which is not installed. "
            f"Install the evaluation extra: {INSTALL_HINT} (or pip install {package})."
        ) from None
