"""Export a trained prefix to the engines models are deployed on, so that they run it without prefixtune.

A prefix is, by construction, a cached attention state: P keys/values per layer that every real token
attends to. Both targets load such a state natively:

- `to_transformers`: a safetensors file of per-layer KV-cache tensors; a plain `DynamicCache` built
  from it makes `AutoModelForCausalLM.generate` produce what `PrefixModel.generate` does.
- `to_llamacpp`: a llama.cpp sequence-state file (`.ggsq`) that an unmodified llama.cpp (or
  `llama-server`'s slot restore) loads, plus a sidecar JSON naming the P token ids it holds.

Both go through `cache.cache_pairs`, which places the prefix where a cache puts past tokens and
checks, on the PyTorch model, that this reproduces prefixtune's logits before anything is written.
"""

from __future__ import annotations

from prefixtune.export.cache import cache_pairs
from prefixtune.export.llamacpp import to_llamacpp
from prefixtune.export.transformers import to_transformers

__all__ = ["cache_pairs", "to_llamacpp", "to_transformers"]
