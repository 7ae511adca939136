"""The prefix variants from the command line: `--kind`, `--layers`, and a sweep over `kind`."""

from __future__ import annotations

import json

import pytest
from conftest import make_model
from synthetic import word_tokenizer, write_task

from prefixtune import load_prefix
from prefixtune.cli import build_parser, main
from prefixtune.cli.options import dataclass_from_args
from prefixtune.sweep import aggregate, parse_axes
from prefixtune.sweep.grid import Point
from prefixtune.sweep.run import summarise
from prefixtune.train.classify_config import ClassifyConfig
from prefixtune.train.config import TrainConfig


def test_kind_and_layers_options_build_the_prefix_config():
    args = build_parser().parse_args(["train", "--train", "t.csv", "--kind", "embedding", "--layers=-2,-1"])
    config = dataclass_from_args(TrainConfig, args)
    assert config.prefix.layers == (-2, -1)
    prefix = config.prefix_config()
    assert (prefix.kind, prefix.layers, prefix.positions) == ("embedding", (-2, -1), "shifted")
    read_back = TrainConfig.from_dict({"train": "t.csv", "layers": [0, 1]})  # a list, as from run.json
    assert read_back.prefix.layers == (0, 1)
    assert TrainConfig(train="t.csv").prefix_config().positions == "keep"
    assert ClassifyConfig.from_dict({"train": "t.csv", "layers": [-1]}).prefix_config().layers == (
        -1,
    )  # depth


def test_bad_layers_and_kinds_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["train", "--train", "t.csv", "--layers", "0,x"])
    assert exit_info.value.code == 2
    assert "comma-separated layer indices" in capsys.readouterr().err
    assert main(["train", "--train", "t.csv", "--kind", "embedding", "--positions", "keep"]) == 2
    assert 'use positions="shifted"' in capsys.readouterr().err


def test_grid_axes_take_kinds_and_layer_lists():
    axes = parse_axes(["kind=prefix,embedding", "layers=0|0,1|none|-1"])
    assert axes == {"kind": ["prefix", "embedding"], "layers": [(0,), (0, 1), None, (-1,)]}


def test_a_sweep_over_kinds_trains_each_variant_on_the_chosen_layers(tmp_path, capsys):
    base = tmp_path / "tiny-llama"
    make_model("llama").save_pretrained(base)
    word_tokenizer().save_pretrained(base)
    train_csv, dev_csv = write_task(tmp_path, train_rows=16, dev_rows=2)
    argv = [
        "sweep", "--train", str(train_csv), "--dev", str(dev_csv), "--base", str(base),
        "--output", str(tmp_path / "out"), "--steps", "3", "--eval-every", "3", "--init", "random",
        "--length", "2", "--mlp-hidden", "16", "--max-new-tokens", "2", "--quiet",
        "--grid", "kind=prefix,embedding,infix", "--grid", "layers=none|-1",
    ]  # fmt: skip
    assert main(argv) == 0
    runs = {r["run"]: r for r in json.loads((tmp_path / "out" / "results.json").read_text())["runs"]}
    kinds = ("embedding", "infix", "prefix")
    assert sorted(runs) == [f"kind={k},layers={n}" for k in kinds for n in ("-1", "None")]

    # tiny LLaMA: one layer's (key, value) x 2 KV heads x head size 16 = 64 columns, embeddings 64 wide;
    # P' (2 x 64) and an MLP 64 -> 16 -> its output width are trained
    def mlp(width: int) -> int:
        return 2 * 64 + (64 * 16 + 16) + (16 * width + width)

    params = {name: row["trainable_params"] for name, row in runs.items()}
    assert params == {
        "kind=prefix,layers=None": mlp(2 * 64),
        "kind=prefix,layers=-1": mlp(64),
        "kind=embedding,layers=None": mlp(64),  # the prompt embeddings' width, whatever the layers
        "kind=embedding,layers=-1": mlp(64),
        "kind=infix,layers=None": mlp(2 * 64),  # an infix is shaped like a prefix
        "kind=infix,layers=-1": mlp(64),
    }
    prefix = tmp_path / "out" / "runs" / "kind=embedding,layers=-1" / "prefix"
    loaded = load_prefix(make_model("llama"), prefix).prefixes["default"]
    assert (loaded.config.kind, loaded.config.layers, loaded.config.positions) == (
        "embedding",
        (1,),
        "shifted",
    )
    capsys.readouterr()
    assert main(["info", str(prefix)]) == 0
    out = capsys.readouterr().out
    assert "embedding (prompt tuning" in out and "1 of 2" in out
    assert f"{2 * 64:,} values" in out  # only the covered layer is stored


def test_a_new_row_groups_with_kept_rows_read_back_from_json(tmp_path):
    point = Point({"layers": (0, 1), "seed": 0}, TrainConfig.from_dict({"train": "t.csv", "layers": (0, 1)}))
    row = summarise(point, tmp_path, steps=0, trainable=0, seconds=0.0)
    assert row["layers"] == [0, 1]
    kept = json.loads(json.dumps({**row, "seed": 1}))  # a finished run's row.json
    assert [r["runs"] for r in aggregate([row, kept], ["layers", "seed"])] == [2]
