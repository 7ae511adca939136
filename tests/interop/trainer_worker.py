"""Started on two processes by test_trainer_distributed: a PrefixModel under Hugging Face's Trainer.

    python -m trainer_worker OUTPUT train|evaluate-first

Each rank writes OUTPUT/rank-R.json: its final prefix and whether prefixtune refused the run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from launch import exit_together
from synthetic import word_tokenizer, write_task
from test_trainer import _prefix, _trainer

from prefixtune import PrefixTuneError
from prefixtune.data import read_dataset
from prefixtune.train.encode import encode_examples


def main(output: Path, mode: str) -> None:
    # each rank its own copy of the (identical) data: one shared file, rewritten by the other rank
    # while this one reads it, was once read empty
    data_dir = output / f"data-{os.environ['RANK']}"
    data_dir.mkdir()
    train_csv, dev_csv = write_task(data_dir, train_rows=16, dev_rows=8)
    data = [encode_examples(read_dataset(p), word_tokenizer(), 16, 16) for p in (train_csv, dev_csv)]
    # 2 rows per process: the same global batch of 4 as the one-process tests
    trainer = _trainer(
        data, output / "out", max_steps=4, per_device_train_batch_size=2, eval_steps=4, save_steps=4
    )
    refused = None
    try:
        if mode == "evaluate-first":
            trainer.evaluate()
        trainer.train()
    except PrefixTuneError as err:
        refused = str(err)
    result = {"refused": refused, "prefix": _prefix(trainer.model).flatten().tolist()}
    (output / f"rank-{os.environ['RANK']}.json").write_text(json.dumps(result))
    exit_together()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
