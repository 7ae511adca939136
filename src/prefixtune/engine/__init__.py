"""The injection engine: prefixes inside every attention layer of a frozen Hugging Face model.

`PrefixModel` (model.py) holds a bank of named prefixes (prefix.py, reparametrised by reparam.py,
laid out over the attention slots by layout.py, initialised by initialise.py or computed from a
prompt by prompt.py); inject.py puts them inside attention (disentangled.py for DeBERTa), positions.py
numbers the real tokens, storage.py reads and writes prefix folders, compat.py bridges transformers
releases. This package imports nothing from the rest of prefixtune (docs/ARCHITECTURE.md); it
imports no submodule here, so `prefixtune.errors` stays free of torch.
"""
