"""The package layout holds by itself: the import graph has no cycles, stages import only earlier stages, no module
imports another's private names, and the library imports its own modules at module level (the CLI excepted).

The graph is read from the source with `ast`, function-level imports and `if TYPE_CHECKING:` blocks included (a
circle that only type checkers see is still two modules that cannot be read apart). Importing `resa_interp.P.m`
from outside package P also runs `P/__init__.py`, so that edge is in the graph too; and outside P the only way in
is P itself, through the names its `__init__` exports in `__all__`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "resa_interp"
# the pipeline, in order; a module may import its own stage, earlier stages and the cross-cutting helpers
STAGES = ["data", "model", "sae", "features", "interventions", "dashboard", "layers", "tuning", "evaluation", "cli"]
HELPERS = {"errors", "extras", "runs", "figures", "presets", "numbering", "checkpoints", "shards", "tracking"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def type_checking_nodes(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            ids.update(id(sub) for stmt in node.body for sub in ast.walk(stmt))
    return ids


def imports(name: str) -> list[tuple[str, list[str], bool]]:
    """(imported module, imported names, at module level) for every resa_interp import of a module; an import
    under `if TYPE_CHECKING:` counts as one at module level."""
    tree = ast.parse(MODULES[name].read_text())
    top = {id(n) for n in tree.body} | type_checking_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "resa_interp":
            names = [a.name for a in node.names]
            submodules = [f"{node.module}.{n}" for n in names if f"{node.module}.{n}" in MODULES]
            targets = submodules or [node.module]
            found += [(t, [] if submodules else names, id(node) in top) for t in targets]
        elif isinstance(node, ast.Import):
            found += [(a.name, [], id(node) in top) for a in node.names if a.name.split(".")[0] == "resa_interp"]
    return found


def edges(name: str) -> set[str]:
    """Modules whose code runs when `name` is imported (its imports, and the packages' __init__ they pass)."""
    own_package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for target, _, _ in imports(name):
        out.add(target)
        parts = target.split(".")
        for i in range(2, len(parts)):
            package = ".".join(parts[:i])
            if package != own_package and not own_package.startswith(package + ".") and package in MODULES:
                out.add(package)
    return out - {name}


def stage(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def test_every_module_belongs_to_a_stage_or_is_a_helper():
    flat = {n.split(".")[1] for n in MODULES if n.count(".") == 1} - set(STAGES)
    assert flat == HELPERS, "top-level modules other than the small cross-cutting helpers"
    for package in STAGES:
        assert f"resa_interp.{package}" in MODULES, f"resa_interp/{package}/__init__.py is missing"


def test_import_graph_has_no_cycles():
    graph = {name: edges(name) for name in MODULES}
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in MODULES:
        if name not in state:
            visit(name, [name])


def test_stages_import_only_earlier_stages():
    for name in MODULES:
        mine = stage(name)
        for target in edges(name):
            theirs = stage(target)
            if mine is None:
                assert theirs is None, f"helper {name} imports the stage module {target}"
            elif theirs is not None:
                assert STAGES.index(theirs) <= STAGES.index(mine), f"{name} imports the later stage {target}"


def test_no_private_names_across_modules():
    for name in MODULES:
        for target, names, _ in imports(name):
            private = [n for n in names if n.startswith("_")]
            assert not private, f"{name} imports private {private} from {target}"


def test_library_imports_its_own_modules_at_module_level():
    """Function-level imports are for heavy third-party libraries; the CLI alone imports stages lazily, so that
    --help and one-line input errors answer without loading torch."""
    for name in MODULES:
        if stage(name) == "cli":
            continue
        late = sorted({target for target, _, top in imports(name) if not top})
        assert not late, f"{name} imports {late} inside a function"


def test_packages_declare_their_public_api():
    for package in STAGES:
        path = MODULES[f"resa_interp.{package}"]
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{path} has no docstring saying what the stage takes and gives"
        declared = [n for n in tree.body if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "__all__"]
        assert declared, f"{path} has no __all__"
        exported = ast.literal_eval(declared[0].value)
        bound = {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
        bound |= {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert set(exported) <= bound, f"{path}: __all__ names {set(exported) - bound}, which it does not define"


def exported(package: str) -> set[str]:
    tree = ast.parse(MODULES[package].read_text())
    declared = [n for n in tree.body if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "__all__"]
    return set(ast.literal_eval(declared[0].value)) if declared else set()


def api_violations(name: str) -> list[str]:
    """Imports by `name` that reach into another package's modules, or take a name its `__all__` does not export."""
    tree = ast.parse(MODULES[name].read_text())
    mine = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("resa_interp.")):
            continue
        package = ".".join(node.module.split(".")[:2])
        if package == mine or mine.startswith(package + ".") or MODULES[package].name != "__init__.py":
            continue
        if node.module != package:
            found.append(f"{name} imports {node.module} (import from {package} instead)")
        else:
            missing = sorted({a.name for a in node.names} - exported(package))
            if missing:
                found.append(f"{name} imports {missing} from {package}, whose __all__ does not export them")
    return found


def test_packages_import_each_other_through_their_api():
    problems = [p for name in MODULES for p in api_violations(name)]
    assert problems == []


def test_api_check_finds_a_reach_into_a_module(tmp_path, monkeypatch):
    planted = tmp_path / "resa_interp" / "features" / "planted.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("from resa_interp.model.subject import load_subject\nfrom resa_interp.model import _private\n")
    monkeypatch.setitem(MODULES, "resa_interp.features.planted", planted)
    assert api_violations("resa_interp.features.planted") == [
        "resa_interp.features.planted imports resa_interp.model.subject (import from resa_interp.model instead)",
        "resa_interp.features.planted imports ['_private'] from resa_interp.model, whose __all__ does not export them",
    ]


def test_checker_sees_type_checking_imports(tmp_path, monkeypatch):
    planted = tmp_path / "resa_interp" / "data" / "qa.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("from typing import TYPE_CHECKING\n"
                       "if TYPE_CHECKING:\n    from resa_interp.model import Subject\n")
    monkeypatch.setitem(MODULES, "resa_interp.data.qa", planted)
    assert imports("resa_interp.data.qa") == [("resa_interp.model", ["Subject"], True)]


def test_checker_finds_a_planted_cycle(tmp_path, monkeypatch):
    """The graph above is not vacuous: a function-level import back up the pipeline is an edge it sees."""
    planted = tmp_path / "resa_interp" / "data" / "qa.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("def f():\n    from resa_interp.model.subject import load_subject\n")
    monkeypatch.setitem(MODULES, "resa_interp.data.qa", planted)
    assert "resa_interp.model.subject" in edges("resa_interp.data.qa")
    assert "resa_interp.model" in edges("resa_interp.data.qa")
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_import_graph_has_no_cycles()


def test_ruff_is_clean():
    """The style holds by itself: ruff (lint + import order, configured in pyproject.toml) finds nothing."""
    root = PACKAGE.parent
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", str(root)],
                          cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
