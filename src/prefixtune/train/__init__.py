"""Training, evaluation and generation over datasets: what `prefixtune train` and `demo` run.

- `TrainConfig`: every setting of a run (its attribute docstrings are the CLI's `--help`).
- `train(config)`: a resumable training run; writes the prefix, checkpoints, a JSONL log and a plot.
- `generate_texts`, `evaluate_prefix`: batched decoding and E2E-style scoring.
"""

from prefixtune.train.config import TrainConfig
from prefixtune.train.evaluate import evaluate_prefix, generate_texts
from prefixtune.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "evaluate_prefix", "generate_texts", "train"]
