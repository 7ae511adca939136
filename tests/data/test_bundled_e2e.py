"""The E2E sample shipped in the package: present, small, whole MR groups, as SOURCES.md describes."""

from __future__ import annotations

import ast
import hashlib
import re
from collections import Counter
from pathlib import Path

import pytest

from prefixtune.data import bundled_e2e, group_references, read_e2e_csv
from prefixtune.errors import PrefixTuneError

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"  # ../shared beside the checkout
ORIGINALS = {"train": SHARED / "e2e" / "trainset.csv", "dev": SHARED / "e2e" / "devset.csv"}
SIZES = {"train": (2000, 235), "dev": (526, 60)}  # rows, distinct MRs


@pytest.mark.parametrize("split", ["train", "dev"])
def test_bundled_sample_sizes(split):
    path = bundled_e2e(split)
    examples = read_e2e_csv(path)
    assert (len(examples), len(group_references(examples))) == SIZES[split]
    assert all(example.source.startswith("name[") and example.target for example in examples)


def test_bundled_sample_is_small_and_matches_its_documented_checksums():
    folder = bundled_e2e("train").parent
    assert sum(p.stat().st_size for p in folder.glob("*.csv")) < 600_000
    documented = dict(
        (name, digest)
        for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", (folder / "SOURCES.md").read_text(), re.M)
    )
    for name in ("train.csv", "dev.csv"):
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == documented[name]
    sources = (folder / "SOURCES.md").read_text(encoding="utf-8")
    assert "CC BY-SA 4.0" in sources and "Novikova" in sources


def test_train_and_dev_samples_share_no_mr():
    train = {source for source, _ in group_references(read_e2e_csv(bundled_e2e("train")))}
    dev = {source for source, _ in group_references(read_e2e_csv(bundled_e2e("dev")))}
    assert not train & dev


@pytest.mark.skipif(not ORIGINALS["dev"].is_file(), reason="the original E2E files are not on this machine")
@pytest.mark.parametrize("split", ["train", "dev"])
def test_bundled_sample_keeps_whole_mr_groups_of_the_original(split):
    original = Counter(example.source for example in read_e2e_csv(ORIGINALS[split]))
    sample = read_e2e_csv(bundled_e2e(split))
    counts = Counter(example.source for example in sample)
    assert all(original[mr] == n for mr, n in counts.items())
    original_pairs = set(read_e2e_csv(ORIGINALS[split]))
    assert all(example in original_pairs for example in sample)


def test_unknown_split():
    with pytest.raises(PrefixTuneError, match="unknown split 'test'.*train, dev"):
        bundled_e2e("test")


@pytest.mark.parametrize("package", ["data", "metrics"])
def test_layering_data_and_metrics_import_no_model_code(package):
    forbidden = ("torch", "transformers", "peft", "safetensors")
    root = Path(__file__).resolve().parents[2] / "src" / "prefixtune" / package
    for module in root.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{module.name} imports {name}"
                if name.startswith("prefixtune."):
                    allowed = ("prefixtune.errors", f"prefixtune.{package}")
                    assert name.startswith(allowed), f"{module.name} imports model code {name}"
