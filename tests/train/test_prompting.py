"""Discrete prompting: an instruction and worked examples written before every source."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model
from synthetic import word_tokenizer, write_task

from prefixtune.cli import main
from prefixtune.data import Example
from prefixtune.engine.wrap import wrap
from prefixtune.errors import PrefixTuneError
from prefixtune.train.encode import prompt_ids
from prefixtune.train.evaluate import first_line, generate_texts
from prefixtune.train.prompting import pick_shots, written_prompt

SHOTS = [Example("name : Aromi", "Aromi is a pub."), Example("name : Bibimbap", "Bibimbap is a cafe.")]


def test_the_written_prompt_is_the_instruction_then_each_worked_example():
    assert written_prompt() == ""
    assert written_prompt("  Describe it.  ") == "Describe it.\n\n"
    assert written_prompt("Describe it.", SHOTS) == (
        "Describe it.\n\nname : Aromi\nAromi is a pub.\n\nname : Bibimbap\nBibimbap is a cafe.\n\n"
    )
    assert written_prompt("", SHOTS[:1]) == "name : Aromi\nAromi is a pub.\n\n"


def test_shots_are_distinct_sources_drawn_with_a_seed():
    examples = [Example(f"s{i}", f"t{i}{r}") for i in range(10) for r in "ab"]
    shots = pick_shots(examples, 4)
    assert shots == pick_shots(examples, 4) != pick_shots(examples, 4, seed=1)
    assert len({s.source for s in shots}) == 4
    assert all(s.target == s.source.replace("s", "t") + "a" for s in shots)  # the first reference
    assert pick_shots(examples, 0) == []
    with pytest.raises(PrefixTuneError, match="only 10 distinct sources"):
        pick_shots(examples, 11)


def test_the_output_is_the_first_line_written_blank_lines_skipped():
    # a frozen model answering a written prompt often opens with a newline (SmolLM2 does)
    assert first_line("\nThe Vaults is a pub.\nThis sentence is") == "The Vaults is a pub."
    assert first_line(" Aromi is a pub.\n\nname[") == "Aromi is a pub."
    assert first_line("\n\n") == ""


def test_the_context_does_not_count_against_the_source_budget():
    tokenizer = word_tokenizer()
    assert prompt_ids(tokenizer, "w20 w21 w22", 2, context="w30 w31 w32\n\n") == [33, 34, 35, 23, 24]
    assert prompt_ids(tokenizer, "w20 w21 w22", 2) == [23, 24]


def test_generation_continues_the_context_and_the_source():
    torch.manual_seed(0)
    model, tokenizer = wrap(make_model("llama")), word_tokenizer()
    options = {"max_new_tokens": 4, "bare": True}
    with_context = generate_texts(model, tokenizer, ["w20 w21", "w22"], context="w30 w31 w32\n\n", **options)
    written_out = generate_texts(model, tokenizer, ["w30 w31 w32 w20 w21", "w30 w31 w32 w22"], **options)
    assert with_context == written_out
    assert generate_texts(model, tokenizer, ["w20 w21", "w22"], **options) != with_context


def test_the_options_build_the_prompt_and_refuse_half_a_few_shot(tmp_path, capsys):
    train_csv, _ = write_task(tmp_path)
    base = tmp_path / "tiny"
    make_model("llama").save_pretrained(base)
    word_tokenizer().save_pretrained(base)
    argv = [
        "generate",
        "--no-prefix",
        "--base",
        str(base),
        "w20 w21",
        "--max-new-tokens",
        "3",
        "--num-beams",
        "1",
    ]
    assert main([*argv, "--instruction", "w40 w41", "--shots", "2", "--shots-from", str(train_csv)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert main([*argv, "--shots", "2"]) == 2
    assert "--shots needs --shots-from FILE" in capsys.readouterr().err
    assert main([*argv, "--shots-from", str(train_csv)]) == 2
    assert "--shots-from needs --shots N" in capsys.readouterr().err
