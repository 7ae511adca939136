"""Training, evaluation and generation over datasets: what `prefixtune train` and `demo` run.

- `TrainConfig`: every setting of a run (its attribute docstrings are the CLI's `--help`).
- `train(config)`: a resumable generation run (`generation.py`) on the one loop (`loop.py`); writes
  the prefix, checkpoints, a JSONL log and a plot. `classify.py` is the classifier run on the same loop.
- `generate_texts`, `evaluate_prefix`: batched decoding and E2E-style scoring.

Names are imported on first use, so that `api.load_prefix` reads a classifier's head through
`train.heads` without loading the training stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefixtune.train.config import TrainConfig
    from prefixtune.train.evaluate import evaluate_prefix, generate_texts
    from prefixtune.train.generation import train
    from prefixtune.train.loop import TrainResult

_EXPORTS = {
    "TrainConfig": "prefixtune.train.config",
    "TrainResult": "prefixtune.train.loop",
    "evaluate_prefix": "prefixtune.train.evaluate",
    "generate_texts": "prefixtune.train.evaluate",
    "train": "prefixtune.train.generation",
}
__all__ = ["TrainConfig", "TrainResult", "evaluate_prefix", "generate_texts", "train"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'prefixtune.train' has no attribute {name!r}")
