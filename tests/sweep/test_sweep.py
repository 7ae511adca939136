"""`prefixtune sweep`: grids parse and expand, every run trains, tables and plots hold the right numbers."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from conftest import make_model
from synthetic import word_tokenizer, write_task

from prefixtune import PrefixTuneError
from prefixtune.cli import main
from prefixtune.sweep import aggregate, expand, parse_axes
from prefixtune.sweep.tables import markdown
from prefixtune.train.config import TrainConfig

PNG = b"\x89PNG\r\n\x1a\n"


def test_axes_take_the_settings_types_and_none():
    axes = parse_axes(["length=1,5", "lr=1e-3,0.01", "init=random,text"])
    assert axes == {"length": [1, 5], "lr": [0.001, 0.01], "init": ["random", "text"]}
    assert parse_axes(["length=none,3"]) == {"length": [None, 3]}
    assert parse_axes(["init_text=a, b|c"]) == {"init_text": ["a, b", "c"]}
    assert parse_axes(["max-train-examples=50,100"]) == {"max_train_examples": [50, 100]}


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["length"], "write NAME=VALUE1,VALUE2"),
        (["depth=1,2"], "'depth' is not a training setting"),
        (["output=a,b"], "'output' is not a training setting"),
        (["length=1,x"], "'x' is not a valid int"),
        (["length=1,1"], "repeats a value"),
        (["length=1", "length=2"], "names 'length' twice"),
        ([], "no --grid given"),
    ],
)
def test_bad_axes_name_the_problem(specs, message):
    with pytest.raises(PrefixTuneError, match=message):
        parse_axes(specs)


def test_expand_makes_every_combination_and_validates_each():
    points = expand(parse_axes(["length=2,4", "seed=0,1,2"]), TrainConfig(train="t.csv"))
    assert [(p.config.prefix.length, p.config.seed) for p in points] == [
        (a, b) for a in (2, 4) for b in (0, 1, 2)
    ]
    assert points[1].name == "length=2,seed=1"
    with pytest.raises(PrefixTuneError, match="--steps must be at least 1"):
        expand(parse_axes(["steps=0,5"]), TrainConfig(train="t.csv"))


def test_aggregate_averages_over_seeds_only():
    rows = [
        {"length": 2, "seed": 0, "best_BLEU": 10.0, "prefix_bytes": 100, "seconds": 1.0},
        {"length": 2, "seed": 1, "best_BLEU": 14.0, "prefix_bytes": 100, "seconds": 3.0},
        {"length": 4, "seed": 0, "best_BLEU": 20.0, "prefix_bytes": 200, "seconds": 2.0},
    ]
    summary = aggregate(rows, ["length", "seed"])
    assert summary[0] == {
        "length": 2,
        "runs": 2,
        "best_BLEU_mean": 12.0,
        "best_BLEU_std": statistics.stdev([10.0, 14.0]),
        "prefix_bytes": 100,
        "seconds": 2.0,
    }
    assert summary[1]["runs"] == 1 and summary[1]["best_BLEU_std"] == 0.0
    table = markdown(summary, ["length", "seed"])
    assert "| 2 | 2 | 12.00 ± 2.83 | 0 KB | 2 s |" in table


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    base = root / "tiny-llama"
    make_model("llama").save_pretrained(base)
    word_tokenizer().save_pretrained(base)
    train_csv, dev_csv = write_task(root)
    argv = [
        "sweep", "--train", str(train_csv), "--dev", str(dev_csv), "--base", str(base),
        "--output", str(root / "out"), "--steps", "8", "--eval-every", "4", "--init", "random",
        "--lr", "0.03", "--mlp-hidden", "16", "--max-new-tokens", "4", "--quiet",
        "--grid", "length=2,4", "--grid", "seed=0,1",
    ]  # fmt: skip
    assert main(argv) == 0
    return root / "out", argv


def test_sweep_writes_every_run_tables_and_plots(sweep_run):
    folder, _ = sweep_run
    results = json.loads((folder / "results.json").read_text())
    runs = {r["run"]: r for r in results["runs"]}
    assert sorted(runs) == ["length=2,seed=0", "length=2,seed=1", "length=4,seed=0", "length=4,seed=1"]
    for name, row in runs.items():
        assert (folder / "runs" / name / "prefix" / "prefix.safetensors").is_file()
        assert row["steps"] == 8 and len(row["loss_curve"]) == 8
        assert row["best_BLEU"] == max(row["best_BLEU"], row["final_BLEU"])
    # tiny LLaMA: 2 layers x (key, value) x 2 KV heads x head size 16, fp32; the flat embedding (P x 64)
    # and a 64 -> 16 -> 128 MLP are trained
    grown = runs["length=4,seed=0"]["prefix_bytes"] - runs["length=2,seed=0"]["prefix_bytes"]
    assert grown == 2 * 2 * 2 * 16 * (4 - 2) * 4
    for length in (2, 4):
        trainable = runs[f"length={length},seed=0"]["trainable_params"]
        assert trainable == length * 64 + (64 * 16 + 16) + (16 * 128 + 128)
    summary = {row["length"]: row for row in results["summary"]}
    for length in (2, 4):
        bleus = [runs[f"length={length},seed={s}"]["best_BLEU"] for s in (0, 1)]
        assert summary[length]["runs"] == 2
        assert summary[length]["best_BLEU_mean"] == pytest.approx(statistics.fmean(bleus))
        assert summary[length]["best_BLEU_std"] == pytest.approx(statistics.stdev(bleus))
    assert "| length | runs | best_BLEU |" in (folder / "summary.md").read_text()
    assert (folder / "results.csv").read_text().splitlines()[0].startswith("run,length,seed,steps")
    for plot in ("best_BLEU_by_length.png", "loss_curves.png"):
        assert (folder / plot).read_bytes()[:8] == PNG


def test_running_again_keeps_finished_runs_and_resumes_the_rest(sweep_run, capsys):
    folder, argv = sweep_run
    kept = folder / "runs" / "length=2,seed=0" / "row.json"
    before = kept.read_text()
    (folder / "runs" / "length=4,seed=1" / "row.json").unlink()  # as if the sweep died during that run
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier, kept") == 3
    assert "length=4,seed=1: resuming" in out
    assert kept.read_text() == before


def test_a_sweep_begun_before_a_setting_existed_still_continues(sweep_run, capsys):
    folder, argv = sweep_run
    plan = folder / "sweep.json"
    original = plan.read_text()
    stored = json.loads(original)
    del stored["fixed"]["exclude_categories"]  # as a plan written before the option was added
    plan.write_text(json.dumps(stored))
    try:
        assert main(argv) == 0
        assert capsys.readouterr().out.count("finished earlier, kept") == 4
        # the same sweep with the new setting away from its default is another sweep
        assert main([*argv, "--exclude-categories", "City"]) == 2
        assert "holds a sweep with other settings" in capsys.readouterr().err
    finally:
        plan.write_text(original)


def test_another_sweep_into_the_same_folder_is_refused(sweep_run, capsys):
    folder, argv = sweep_run
    other = [a if a != "length=2,4" else "length=2,8" for a in argv]
    before = (folder / "results.json").read_text()
    assert main(other) == 2
    assert "holds a sweep with other settings" in capsys.readouterr().err
    assert (folder / "results.json").read_text() == before


def test_sweep_help_explains_grid_and_training_options(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = capsys.readouterr().out
    for option in ("--grid", "--output", "--metric", "--steps", "--length", "--init-text", "averaged over"):
        assert option in text
    assert Path(__file__).parent.name == "sweep"


def test_a_second_sweep_into_a_folder_in_use_is_refused(sweep_run, capsys):
    from prefixtune.train.run_folder import RunLock

    folder, argv = sweep_run
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.name != "run.lock"}
    with RunLock(folder, "sweep"):  # the same sweep still running in another process
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{folder} is in use by another run (prefixtune sweep, process" in err and "Traceback" not in err
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.name != "run.lock"} == before
