"""The package's layers, read off the source with `ast` (docs/ARCHITECTURE.md says what each does).

- The engine (`prefixtune/engine/`) imports nothing from the rest of prefixtune.
- No import cycle among modules: top-level and function-level imports, not those for type checking.
- The packages form layers: each imports only from the layers its row of `LAYERS` names, type
  checking included, so no two packages import each other.
- The engine keeps no module-level mutable state: what changes lives on objects.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "prefixtune"
ENGINE = PACKAGE / "engine"

LAYERS: dict[str, set[str]] = {
    "engine": set(),
    "errors": {"engine"},
    "data": {"errors"},
    "metrics": {"errors"},
    "loading": {"errors"},
    "train": {"engine", "errors", "data", "metrics", "loading"},
    "api": {"engine", "train"},
    "interop": {"engine", "errors"},
    "serve": {"engine", "errors", "api", "train"},
    "sweep": {"engine", "errors", "loading", "train"},
    "export": {"engine", "errors"},
    "cli": {"engine", "errors", "data", "loading", "train", "api", "interop", "serve", "sweep", "export"},
    "__main__": {"cli"},
    "prefixtune": {"engine", "errors", "loading", "api"},
}
"""Each part of prefixtune (a subpackage, a module at its root, or the root package itself, whose
lazy public names only `cli` imports) -> the parts it may import."""


MUTABLE_CALLS = {
    "list",
    "dict",
    "set",
    "bytearray",
    "defaultdict",
    "OrderedDict",
    "deque",
    "Counter",
    "ContextVar",
}
MUTATORS = {"append", "extend", "insert", "pop", "popitem", "remove", "clear", "update", "setdefault", "add"}
CACHES = {"cache", "lru_cache"}


def _module_name(file: Path) -> str:
    parts = list(file.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(f): f for f in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imported(module: str, *, type_checking: bool) -> list[tuple[str, int]]:
    """The prefixtune modules `module` imports, anywhere in it (functions too), with line numbers.

    `from a.b import c` counts as importing `a.b.c` when that is a module, else `a.b`; relative
    imports are resolved. Imports under `if TYPE_CHECKING:` count only when `type_checking`.
    """
    file = MODULES[module]
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child) and not type_checking:
                for other in child.orelse:  # type: ignore[attr-defined]
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    found.append((full if full in MODULES else base, child.lineno))
            visit(child)

    visit(ast.parse(file.read_text(encoding="utf-8")))
    return [(name, line) for name, line in found if name == "prefixtune" or name.startswith("prefixtune.")]


def _graph(*, type_checking: bool) -> dict[str, set[str]]:
    """Module -> the modules importing it runs first: each one imported and the packages above it
    (a package that `module` itself sits in is already being imported, so it adds no edge)."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for name, _ in imported(module, type_checking=type_checking):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                target = ".".join(parts[:depth])
                if target in MODULES and not f"{module}.".startswith(f"{target}."):
                    edges[module].add(target)
    return edges


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := walk(target)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def _part(module: str) -> str:
    """`prefixtune.train.loop` -> `train`; `prefixtune.api` -> `api`; the root package -> `prefixtune`."""
    return module.split(".")[1] if "." in module else module


def test_the_engine_imports_nothing_from_the_rest_of_prefixtune():
    engine_files = [m for m in MODULES if m == "prefixtune.engine" or m.startswith("prefixtune.engine.")]
    assert len(engine_files) > 10
    outside = [
        f"{MODULES[m].relative_to(SRC)}:{line} imports {name}"
        for m in engine_files
        for name, line in imported(m, type_checking=True)
        if not (name == "prefixtune.engine" or name.startswith("prefixtune.engine."))
    ]
    assert not outside, "the engine imports from the rest of prefixtune:\n" + "\n".join(outside)


def test_no_import_cycle_among_modules():
    cycle = _find_cycle(_graph(type_checking=False))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_packages_form_layers():
    unknown = sorted({_part(m) for m in MODULES} - set(LAYERS))
    assert not unknown, (
        f"new parts of prefixtune: give {unknown} a row in LAYERS (tests/test_architecture.py)"
    )
    parts: dict[str, set[str]] = {}
    crossings = []
    for module, targets in _graph(type_checking=True).items():
        for target in targets:
            here, there = _part(module), _part(target)
            if here == there:
                continue
            parts.setdefault(here, set()).add(there)
            if there not in LAYERS[here] and not (there == "prefixtune" and here == "cli"):
                crossings.append(f"{module} imports {target}")
    assert not crossings, "imports against the layers:\n" + "\n".join(sorted(crossings))
    assert _find_cycle(parts) is None


def test_data_and_metrics_load_without_torch():
    code = (
        "import sys, prefixtune, prefixtune.errors, prefixtune.data, prefixtune.metrics; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _mutable(value: ast.AST | None) -> bool:
    """A container literal, comprehension or constructor call (`[]`, `{}`, `dict()`, `deque()`, ...)."""
    displays = (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)
    if isinstance(value, displays):
        return True
    if isinstance(value, ast.Call):
        func = value.func
        return (func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)) in MUTABLE_CALLS
    return False


def _caches(tree: ast.Module) -> list[tuple[int, str]]:
    """`@cache` / `@lru_cache(...)`: a function's results kept for every caller."""
    found = []
    for node in ast.walk(tree):
        for decorator in getattr(node, "decorator_list", []):
            named = decorator.func if isinstance(decorator, ast.Call) else decorator
            name = getattr(named, "id", None) or getattr(named, "attr", None)
            if name in CACHES:
                found.append((node.lineno, f"@{name}: a cache shared by every caller"))
    return found


def _shared_state(tree: ast.Module) -> list[tuple[int, str]]:
    """Where a module keeps state that outlives a call: in its namespace, on a class, in a cache."""
    found = [(n.lineno, f"global {', '.join(n.names)}") for n in ast.walk(tree) if isinstance(n, ast.Global)]
    found += _caches(tree)

    def scan(body: list[ast.stmt], where: str) -> None:
        for stmt in body:
            if isinstance(stmt, ast.ClassDef):
                scan(stmt.body, f"class {stmt.name}")
            elif isinstance(stmt, (ast.If, ast.With, ast.Try)):  # still at this level
                handlers = [x for h in getattr(stmt, "handlers", []) for x in h.body]
                scan(
                    stmt.body + getattr(stmt, "orelse", []) + getattr(stmt, "finalbody", []) + handlers, where
                )
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = getattr(stmt, "targets", [getattr(stmt, "target", None)])
                if _mutable(stmt.value) or any(isinstance(t, ast.Subscript) for t in targets):
                    found.append((stmt.lineno, f"a mutable container assigned or changed in {where}"))
            elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
                if getattr(stmt.value.func, "attr", None) in MUTATORS:
                    found.append((stmt.lineno, f"a container mutated in {where}"))

    scan(tree.body, "the module")
    return found


def test_the_engine_keeps_no_module_level_mutable_state():
    """What changes while prefixtune runs lives on objects (a PrefixModel, its Injector, a probe's
    recorder), so that two models, threads or tests never share it through a module."""
    engine = sorted(ENGINE.glob("*.py"))
    assert len(engine) > 10
    found = [
        f"{file.relative_to(SRC)}:{line}: {what}"
        for file in engine
        for line, what in _shared_state(ast.parse(file.read_text(encoding="utf-8")))
    ]
    assert not found, "module-level state in the engine:\n" + "\n".join(found)


def _calls(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of every call: `x.backward()` -> "backward", `torch.optim.AdamW(...)` -> "AdamW"."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            found.append((node.lineno, str(name)))
    return found


def test_one_training_loop():
    """Only `train/loop.py` builds an optimizer and runs backward passes: every run (generation, the
    classifier) is a recipe of that loop (`recipe.Task`), not a copy of it."""
    loops = sorted(
        f"{MODULES[m].relative_to(SRC)}:{line} calls {name}"
        for m in MODULES
        for line, name in _calls(ast.parse(MODULES[m].read_text(encoding="utf-8")))
        if name in ("backward", "AdamW", "clip_grad_norm_", "LambdaLR") and m != "prefixtune.train.loop"
    )
    assert not loops, "a training loop outside train/loop.py:\n" + "\n".join(loops)


def test_no_module_imports_another_modules_private_names():
    private = [
        f"{MODULES[m].relative_to(SRC)}:{node.lineno} imports {alias.name} from {node.module}"
        for m in MODULES
        for node in ast.walk(ast.parse(MODULES[m].read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prefixtune")
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]
    assert not private, "\n".join(private)


@pytest.mark.parametrize(
    "module, name",
    [("prefixtune.train.config", "TrainConfig"), ("prefixtune.train.classify_config", "ClassifyConfig")],
)
def test_a_run_config_holds_a_prefix_config_rather_than_restating_its_fields(module, name):
    import dataclasses
    import importlib

    from prefixtune.engine.config import PrefixConfig

    fields = {f.name: f for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
    prefix_fields = {f.name for f in dataclasses.fields(PrefixConfig)} - {"seed"}  # the seed is the run's
    assert fields["prefix"].type in (PrefixConfig, "PrefixConfig")
    assert not prefix_fields & set(fields), f"{name} restates PrefixConfig's fields"
