"""`PrefixTuneError`, for the layers around the engine (data, metrics, training, serving, the CLI).

It is defined in `prefixtune.engine.errors`, since the engine imports nothing from the rest of
prefixtune; this is the same class, so `except PrefixTuneError` catches it from either name.
"""

from prefixtune.engine.errors import PrefixTuneError

__all__ = ["PrefixTuneError"]
