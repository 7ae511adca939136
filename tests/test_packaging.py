"""The install is reproducible: constraints.txt pins versions that pyproject.toml's bounds allow."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
BOUNDED = ("torch", "transformers", "accelerate", "peft", "trl")
"""The dependencies whose APIs prefixtune reaches into: each needs an upper bound, the tested release."""


def _pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pairs = (line.split("==") for line in lines if line and not line.startswith("#"))
    return {name.lower().replace("_", "-"): version for name, version in pairs}


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in [*project["dependencies"], *extras]]


@pytest.mark.parametrize("requirement", _requirements(), ids=str)
def test_every_dependency_is_pinned_within_its_bounds(requirement):
    pins = _pins()
    name = requirement.name.lower()
    assert name in pins, f"{name} is missing from constraints.txt"
    assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} breaks {requirement}"


def test_the_libraries_prefixtune_reaches_into_have_upper_bounds():
    for requirement in _requirements():
        if requirement.name in BOUNDED:
            assert any(s.operator in ("<", "<=", "==") for s in requirement.specifier), str(requirement)


def test_the_readme_commands_and_ci_install_the_tested_versions():
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv .venv &&")]
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line.startswith("python3 -m venv")]
    assert len(commands) == 2 and ci == [commands[1]]  # CI runs the README's test command as written
    for command in commands:
        installs = [part for part in command.split("&&") if " install " in part]
        assert installs and all("-c constraints.txt" in part for part in installs), command
