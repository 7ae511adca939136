"""Keeping or holding out WebNLG categories: in the reader, in a training run's data, and in `evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_model
from synthetic import word_tokenizer

from prefixtune.cli import main
from prefixtune.data import Example, read_dataset, select_categories
from prefixtune.errors import PrefixTuneError
from prefixtune.train import TrainConfig
from prefixtune.train.generation import load_data

CATEGORIES = {"Airport": ("w20", "w21"), "City": ("w30", "w31"), "Food": ("w40", "w41")}


def write_webnlg(path: Path) -> Path:
    """Two entries per category, each with two good lexicalisations (four examples a category)."""
    entries = []
    for category, subjects in CATEGORIES.items():
        for subject in subjects:
            entries.append({
                str(len(entries) + 1): {
                    "category": category,
                    "modifiedtripleset": [{"subject": subject, "property": "w50", "object": "w60"}],
                    "lexicalisations": [{"comment": "good", "lex": f"w10 {subject}"}, {"lex": "w11 w12"}],
                }
            })  # fmt: skip
    path.write_text(json.dumps({"entries": entries}), encoding="utf-8")
    return path


def categories_of(examples: list[Example]) -> set[str | None]:
    return {e.category for e in examples}


def test_webnlg_examples_carry_their_category(tmp_path):
    examples = read_dataset(write_webnlg(tmp_path / "d.json"))
    assert len(examples) == 12 and categories_of(examples) == set(CATEGORIES)
    assert [e.category for e in examples[:4]] == ["Airport"] * 4


def test_keep_and_drop_select_whole_categories(tmp_path):
    examples = read_dataset(write_webnlg(tmp_path / "d.json"))
    assert select_categories(examples, "d") is examples
    assert categories_of(select_categories(examples, "d", keep="City, Food")) == {"City", "Food"}
    held_out = select_categories(examples, "d", drop="City")
    assert categories_of(held_out) == {"Airport", "Food"} and len(held_out) == 8
    assert categories_of(select_categories(examples, "d", keep="City,Food", drop="Food")) == {"City"}


def test_a_category_the_data_lacks_is_refused_with_those_it_holds(tmp_path):
    examples = read_dataset(write_webnlg(tmp_path / "d.json"))
    with pytest.raises(PrefixTuneError, match=r"--exclude-categories: d has no category 'city'.*City \(4\)"):
        select_categories(examples, "d", drop="city")
    with pytest.raises(PrefixTuneError, match="leaves no example"):
        select_categories(examples, "d", keep="City", drop="City")
    with pytest.raises(PrefixTuneError, match="has no categories"):
        select_categories([Example("a", "b")], "e2e.csv", keep="City")


def test_a_run_holds_its_excluded_categories_out_of_train_and_dev(tmp_path):
    data = write_webnlg(tmp_path / "d.json")
    config = TrainConfig(train=str(data), dev=str(data), exclude_categories="City")
    train_set, dev_set = load_data(config)
    assert categories_of(train_set) == categories_of(dev_set) == {"Airport", "Food"}
    config = config.replace(exclude_categories=None, categories="City")
    assert all(categories_of(part) == {"City"} for part in load_data(config))


def test_evaluate_scores_only_the_chosen_categories(tmp_path, capsys):
    data = write_webnlg(tmp_path / "d.json")
    base = tmp_path / "tiny"
    make_model("llama").save_pretrained(base)
    word_tokenizer().save_pretrained(base)
    argv = ["evaluate", "--no-prefix", "--base", str(base), "--data", str(data), "--metrics", "BLEU"]
    argv += ["--max-new-tokens", "2", "--num-beams", "1"]
    out = tmp_path / "city.json"
    assert main([*argv, "--categories", "City", "--output", str(out)]) == 0
    sources = [row["source"] for row in json.loads(out.read_text())["outputs"]]
    assert sources == ["w30 : w50 : w60", "w31 : w50 : w60"]
    out = tmp_path / "rest.json"
    assert main([*argv, "--exclude-categories", "City", "--output", str(out)]) == 0
    assert len(json.loads(out.read_text())["outputs"]) == 4
    capsys.readouterr()
    assert main([*argv, "--categories", "Town"]) == 2
    assert "has no category 'Town'" in capsys.readouterr().err
