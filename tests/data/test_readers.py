"""Readers: formats, linearisation, dispatch, grouping, and the errors a user sees for bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from prefixtune.data import (
    Example,
    group_references,
    linearise_triples,
    read_csv,
    read_dart_json,
    read_dataset,
    read_e2e_csv,
    read_jsonl,
    read_webnlg_json,
)
from prefixtune.errors import PrefixTuneError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"  # ../shared beside the checkout

E2E_CSV = (
    "mr,ref\r\n"
    '"name[The Vaults], eatType[pub], priceRange[more than £30], near[Café Adriatic]",'
    "The Vaults pub near Café Adriatic is expensive.\r\n"
    '"name[The Vaults], eatType[pub], priceRange[more than £30], near[Café Adriatic]",'
    '"The Vaults, a ""pub"", costs more than £30,\nnear Café Adriatic."\r\n'
    '"name[Zizzi], area[riverside]",Zizzi is by the river.\r\n'
)
VAULTS = "name[The Vaults], eatType[pub], priceRange[more than £30], near[Café Adriatic]"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


def test_example_is_a_frozen_record():
    example = Example("s", "t")
    assert (example.source, example.target) == ("s", "t")
    with pytest.raises(dataclasses.FrozenInstanceError):
        example.source = "x"


def test_e2e_csv_keeps_mr_as_is_with_quotes_pound_accents_and_line_breaks(tmp_path):
    examples = read_e2e_csv(write(tmp_path, "e2e.csv", E2E_CSV))
    assert examples == [
        Example(VAULTS, "The Vaults pub near Café Adriatic is expensive."),
        Example(VAULTS, 'The Vaults, a "pub", costs more than £30,\nnear Café Adriatic.'),
        Example("name[Zizzi], area[riverside]", "Zizzi is by the river."),
    ]


def test_utf8_byte_order_mark_is_ignored(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + E2E_CSV.encode("utf-8"))
    assert read_e2e_csv(path)[0].source == VAULTS


def test_group_references_keeps_first_seen_order_and_all_references():
    examples = [Example("b", "1"), Example("a", "2"), Example("b", "3"), Example("c", "4"), Example("a", "5")]
    assert group_references(examples) == [("b", ["1", "3"]), ("a", ["2", "5"]), ("c", ["4"])]


def test_generic_csv_with_named_columns(tmp_path):
    path = write(tmp_path, "d.csv", 'id,question,answer\n1,"Why, though?",Because.\n2,Q2,A2\n')
    assert read_csv(path, source_column="question", target_column="answer") == [
        Example("Why, though?", "Because."),
        Example("Q2", "A2"),
    ]


def test_tsv_reads_quotes_literally(tmp_path):
    path = write(tmp_path, "d.tsv", 'source\ttarget\n"quoted" text \tit\'s 1\n\nplain\tx\n')
    assert read_dataset(path) == [Example('"quoted" text ', "it's 1"), Example("plain", "x")]


def test_jsonl_with_string_and_list_targets(tmp_path):
    lines = [
        json.dumps({"source": "s1", "target": "t1", "extra": 3}),
        "",
        json.dumps({"source": "s2", "target": ["t2a", "t2b"]}),
    ]
    path = write(tmp_path, "d.jsonl", "\n".join(lines) + "\n")
    assert read_jsonl(path) == [Example("s1", "t1"), Example("s2", "t2a"), Example("s2", "t2b")]


def webnlg_document() -> dict:
    def entry(triples, lexes):
        return {
            "category": "Airport",
            "lexicalisations": [
                {"comment": c, "lang": "", "lex": text, "xml_id": "Id1"} for c, text in lexes
            ],
            "modifiedtripleset": [{"subject": s, "property": p, "object": o} for s, p, o in triples],
            "size": str(len(triples)),
        }

    return {
        "entries": [
            {
                "1": entry(
                    [("Aarhus", "leaderName", "Jacob_Bundsgaard")], [("good", "Aarhus is led by J. B.")]
                )
            },
            {
                "2": entry(
                    [
                        ("Aarhus_Airport", "cityServed", '"Aarhus, Denmark"'),
                        ("Aarhus_Airport", "elevation", "25.0"),
                    ],
                    [("good", "First."), ("toFix", "Dropped."), ("good", "Second.")],
                )
            },
        ]
    }


def test_webnlg_linearisation_and_good_lexicalisations_only(tmp_path):
    path = write(tmp_path, "webnlg.json", json.dumps(webnlg_document()))
    pair = 'Aarhus_Airport : cityServed : "Aarhus, Denmark" | Aarhus_Airport : elevation : 25.0'
    assert read_webnlg_json(path) == [
        Example("Aarhus : leaderName : Jacob_Bundsgaard", "Aarhus is led by J. B.", "Airport"),
        Example(pair, "First.", "Airport"),
        Example(pair, "Second.", "Airport"),
    ]
    assert read_dataset(path) == read_webnlg_json(path)  # .json sniffed as WebNLG


def test_dart_linearisation_lowercases_the_property(tmp_path):
    records = [
        {
            "tripleset": [
                ["Mars Hill College", "JOINED", "1973"],
                ["Mars Hill College", "LOCATION", "Mars Hill, NC"],
            ],
            "subtree_was_extended": True,
            "annotations": [{"source": "WikiSQL", "text": "A."}, {"source": "e2e", "text": "B."}],
        }
    ]
    path = write(tmp_path, "dart.json", json.dumps(records))
    source = "Mars Hill College : joined : 1973 | Mars Hill College : location : Mars Hill, NC"
    assert read_dart_json(path) == [Example(source, "A."), Example(source, "B.")]
    assert read_dataset(path) == read_dart_json(path)  # .json sniffed as DART


def test_linearise_triples():
    assert linearise_triples([("a", "p", "b")]) == "a : p : b"
    assert linearise_triples([("a", "p", "b"), ("c", "q", "d")]) == "a : p : b | c : q : d"


def test_read_dataset_picks_e2e_for_an_mr_ref_header(tmp_path):
    path = write(tmp_path, "any.csv", E2E_CSV)
    assert read_dataset(path) == read_e2e_csv(path)
    assert read_dataset(path, fmt="E2E") == read_e2e_csv(path)


def test_read_dataset_format_name_overrides_extension(tmp_path):
    path = write(tmp_path, "data.txt", json.dumps({"src": "s", "tgt": "t"}) + "\n")
    assert read_dataset(path, fmt="jsonl", source_column="src", target_column="tgt") == [Example("s", "t")]


# --- errors -------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(PrefixTuneError, match="not found.*nope.csv"):
        read_dataset(tmp_path / "nope.csv")


def test_missing_column_names_the_columns_that_exist(tmp_path):
    path = write(tmp_path, "d.csv", "question,answer\nq,a\n")
    with pytest.raises(PrefixTuneError, match=r"no column 'source'.*'question', 'answer'.*source_column"):
        read_csv(path)


def test_missing_jsonl_key_names_the_keys_and_line(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"source": "s", "target": "t"}\n{"source": "s", "label": 1}\n')
    with pytest.raises(PrefixTuneError, match=r"line 2 has no key 'target'.*'source', 'label'"):
        read_jsonl(path)


@pytest.mark.parametrize(
    ("name", "text"),
    [("d.csv", "source,target\n"), ("d.csv", ""), ("d.jsonl", "\n\n"), ("w.json", '{"entries": []}')],
)
def test_empty_dataset(tmp_path, name, text):
    with pytest.raises(PrefixTuneError, match="empty|no examples"):
        read_dataset(write(tmp_path, name, text))


def test_non_utf8_file_reports_byte_offset_and_line(tmp_path):
    path = tmp_path / "latin1.csv"
    data = "mr,ref\nname[A],Costs 20.\nname[B],Costs £30.\n".encode("latin-1")
    path.write_bytes(data)
    offset = data.index(b"\xa3")
    with pytest.raises(
        PrefixTuneError, match=rf"not valid UTF-8: byte\(s\) a3 at byte offset {offset} \(line 3"
    ):
        read_dataset(path)


def test_malformed_json_line_reports_line_number(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"source": "s", "target": "t"}\n\n{"source": "s", "target": }\n')
    with pytest.raises(PrefixTuneError, match="line 3 is not valid JSON"):
        read_jsonl(path)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    with pytest.raises(PrefixTuneError, match="line 1 is a JSON list"):
        read_jsonl(write(tmp_path, "d.jsonl", '["s", "t"]\n'))


def test_wrong_json_structure(tmp_path):
    path = write(tmp_path, "w.json", json.dumps({"entries": [{"1": {"lexicalisations": []}}]}))
    with pytest.raises(PrefixTuneError, match="entry 1 is not a WebNLG entry"):
        read_webnlg_json(path)
    with pytest.raises(PrefixTuneError, match="not DART JSON"):
        read_dart_json(path)
    with pytest.raises(PrefixTuneError, match="neither WebNLG JSON"):
        read_dataset(write(tmp_path, "x.json", '"just a string"'))


def test_truncated_json_document(tmp_path):
    with pytest.raises(PrefixTuneError, match="not valid JSON.*line 2"):
        read_webnlg_json(write(tmp_path, "w.json", '{"entries": [\n{"1": '))


def test_short_csv_row_and_bad_quoting(tmp_path):
    with pytest.raises(PrefixTuneError, match="line 3 has 1 field"):
        read_csv(write(tmp_path, "a.csv", "source,target\ns,t\nlonely\n"))
    with pytest.raises(PrefixTuneError, match="not valid CSV"):
        read_csv(write(tmp_path, "b.csv", 'source,target\n"s"x,t\n'))


def test_unknown_format_and_extension(tmp_path):
    with pytest.raises(PrefixTuneError, match="unknown data format 'xml'.*e2e, webnlg, dart"):
        read_dataset(tmp_path / "x.csv", fmt="xml")
    with pytest.raises(PrefixTuneError, match="cannot tell the format.*'.txt'"):
        read_dataset(write(tmp_path, "x.txt", "a"))


# --- the real data sets, where this machine has them ----------------------------------------------------


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared data sets are not on this machine")
def test_real_datasets_have_the_published_sizes():
    # Li & Liang (2021), Table 5 / data statistics: WebNLG 18,025 train / 2,258 dev; E2E 42,061 / 4,672.
    assert len(read_dataset(SHARED / "webnlg2017/train.json")) == 18025
    webnlg_dev = read_dataset(SHARED / "webnlg2017/dev.json")
    assert len(webnlg_dev) == 2258
    assert webnlg_dev[0] == Example(
        "Aarhus : leaderName : Jacob_Bundsgaard", "The leader of Aarhus is Jacob Bundsgaard.", "Airport"
    )
    # the same ten categories in both (the unseen ones are only in the test set)
    assert {e.category for e in webnlg_dev} == {
        e.category for e in read_dataset(SHARED / "webnlg2017/train.json")
    }
    assert len({e.category for e in webnlg_dev}) == 10
    e2e_dev = read_dataset(SHARED / "e2e/devset.csv")
    assert (len(e2e_dev), len(group_references(e2e_dev))) == (4672, 547)
    dart_dev = read_dataset(SHARED / "dart/dart-v1.1.1-full-dev.json")
    assert len(dart_dev) == 6980
    assert (
        dart_dev[0].source
        == "Mars Hill College : joined : 1973 | Mars Hill College : location : Mars Hill, North Carolina"
    )
