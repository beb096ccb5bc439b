"""The package's layout is its architecture: which code may import which, checked on the real import graph.

The views and the planning process never import torch; the trial process
never talks SQL; nothing imports in a circle, and no chain of imports is
deeper than ten modules.  Imports inside functions count: they run too.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import pytest

import dstune

ROOTS = {"dstune": Path(dstune.__file__).parent}
MAX_DEPTH = 10


def _modules() -> dict[str, Path]:
    import dstune.plugins
    import dstune.store

    roots = {"dstune": Path(dstune.__file__).parent, "dstune.plugins": Path(dstune.plugins.__file__).parent,
             "dstune.store": Path(dstune.store.__file__).parent}
    found = {}
    for package, folder in roots.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join((package, *parts))] = path
    return found


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """The dstune modules ``name`` imports, at the top or in a function; ``TYPE_CHECKING`` blocks excepted."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    typing_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", None) == "TYPE_CHECKING" for node in ast.walk(block)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(max(node.level - 1, 0)):
                base = base.rsplit(".", 1)[0]
            module = (base + ("." + node.module if node.module else "")) if node.level else (node.module or "")
            for alias in node.names:
                out.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES else module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return out


GRAPH = {name: {m for m in _imports(name) if m in MODULES and m != name} for name in MODULES}
THIRD_PARTY = {name: {m.split(".")[0] for m in _imports(name) if not m.startswith("dstune")} for name in MODULES}


def _reached(name: str) -> set[str]:
    seen: set[str] = set()
    todo = [name]
    while todo:
        for dep in GRAPH[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_the_graph_has_no_circle_and_no_chain_deeper_than_ten():
    @functools.lru_cache(None)
    def depth(name: str, path: tuple[str, ...] = ()) -> int:
        assert name not in path, "import circle: " + " -> ".join((*path, name))
        return 1 + max((depth(dep, (*path, name)) for dep in GRAPH[name]), default=0)

    deepest = max(MODULES, key=depth)
    assert depth(deepest) <= MAX_DEPTH, deepest


@pytest.mark.parametrize("package", ["dstune.views", "dstune.cli.view_commands", "dstune.best_config"])
def test_views_import_no_run_or_trial_module(package):
    for name in [m for m in MODULES if m == package or m.startswith(package + ".")]:
        wrong = sorted(m for m in _reached(name) if m.startswith(("dstune.run", "dstune.trial")))
        assert not wrong, f"{name} reaches {wrong}"


def test_the_trial_process_never_talks_sql():
    for name in [m for m in MODULES if m.startswith("dstune.trial.")]:
        assert not any(m.startswith("dstune.store") for m in _reached(name)), name
        assert "sqlalchemy" not in THIRD_PARTY[name], name


def test_sql_lives_only_in_the_store():
    outside = sorted(name for name in MODULES if "sqlalchemy" in THIRD_PARTY[name]
                     and not name.startswith("dstune.store"))
    assert outside == []


def test_reading_the_store_imports_neither_torch_nor_the_run_machinery():
    script = ("import sys; import dstune.views.report, dstune.views.history, dstune.views.status, "
              "dstune.cli.view_commands, dstune.best_config; "
              "loaded = [m for m in sys.modules if m == 'torch' or m.startswith(('dstune.run', 'dstune.trial'))]; "
              "print(loaded)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
