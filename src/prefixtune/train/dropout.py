"""Switching the model's dropout off for a training run, and back on after it.

Why: P-Tuning v2 and PEFT train the prefix with the frozen model in train mode, so its dropout
(BERT: 0.1 on embeddings, attention and every sublayer) keeps running. Without it a step is cheaper
(no random masks) and the prefix learns faster at first: on MiniLM-L6 and SST-2, dropout off led by
0.7 points at 1,000 steps, but it stalled and trailed by 1.0 at 2,000 (docs/BENCHMARKS.md). So the
classifier recipe keeps dropout on by default and offers this as `--dropout off`.

Dropout is zeroed by rate rather than by `model.eval()`: models switch gradient checkpointing off
outside train mode, and a training run needs it kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


@contextmanager
def dropout_off(model: nn.Module) -> Iterator[int]:
    """Within the block, every dropout module of `model` has rate 0; the rates come back on exit.

    Covers the `nn.Dropout` modules that encoders (BERT, RoBERTa, DeBERTa-v2, DistilBERT, ELECTRA) use
    everywhere, attention included. Yields how many modules were switched off.
    """
    modules = [m for m in model.modules() if isinstance(m, _DROPOUTS)]
    rates = [m.p for m in modules]
    for module in modules:
        module.p = 0.0
    try:
        yield len(modules)
    finally:
        for module, rate in zip(modules, rates, strict=True):
            module.p = rate
