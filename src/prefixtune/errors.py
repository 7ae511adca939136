"""`PrefixTuneError` and `WeightsMismatch`, for the layers around the engine (data, metrics, training,
serving, the CLI).

They are defined in `prefixtune.engine.errors`, since the engine imports nothing from the rest of
prefixtune; these are the same classes, so `except PrefixTuneError` catches them from either name.
"""

from prefixtune.engine.errors import PrefixTuneError, WeightsMismatch

__all__ = ["PrefixTuneError", "WeightsMismatch"]
