"""The one place for differences between transformers releases that prefixtune's code must bridge.

transformers 5.24 renamed the KV cache keyword of every model's `forward` (and of the outputs) from
`past_key_values` to `cache`. The old name still works there with a `FutureWarning`, and is announced
for removal in 5.40; releases before 5.24 know only the old name. Code that hands a cache to a model
or reads one from a forward's keywords goes through these helpers, never through either name.
"""

from __future__ import annotations

from typing import Any

import transformers
from packaging.version import Version

CACHE_KWARG = "cache" if Version(transformers.__version__).release >= (5, 24) else "past_key_values"
"""The keyword a model's `forward` takes its KV cache by, in the installed transformers."""


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """`{CACHE_KWARG: cache}`: splice into a forward call as `model(..., **cache_kwargs(cache))`."""
    return {CACHE_KWARG: cache}


def cache_in(kwargs: dict[str, Any]) -> Any:
    """The KV cache among a forward's keywords, whichever name the caller used (None if absent)."""
    for name in ("cache", "past_key_values"):
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def cache_out(output: Any) -> Any:
    """The KV cache a forward returned (its output's `cache`, or `past_key_values` before 5.24)."""
    return getattr(output, CACHE_KWARG, None)
