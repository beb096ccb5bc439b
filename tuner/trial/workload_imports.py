"""Which of a workload file's imports the fork server may import ahead of its trials.

Every trial is a fresh process, so each one imports what the workload file
imports.  For a transformers model that is most of a trial's start: GPT-2's
``from transformers import GPT2LMHeadModel`` took 8 s of an 11 s start on the
H200 host (sources compiled anew in a read-only site-packages, scikit-learn
pulled in by the generation utilities), and GPT-2's ten-minute run starts
thirteen such processes.  The fork server (:mod:`dstune.trial.preload`)
imports them once instead, and every trial is forked with them in memory.

Only the file's top-level ``import`` and ``from ... import`` statements are
read (its code is not run: the parent process never imports user code), and
only modules installed outside the workload's own folder qualify: the user's
modules beside the workload are the trial's to import, with whatever they do
at import.  ``DSTUNE_PRELOAD=off`` turns preloading off.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from pathlib import Path

PRELOAD_ENV = "DSTUNE_PRELOAD_IMPORTS"  # what the fork server reads: a JSON list of [module, [names]]
SWITCH_ENV = "DSTUNE_PRELOAD"  # "off" turns preloading off
NEVER = frozenset({"__future__", "dstune"})
CUDA_BY: str | None = None  # set in the fork server: the preloaded module after which CUDA was initialised

Statement = tuple[str, list[str]]  # a module, and the names a ``from`` statement takes from it


def preload_wanted() -> bool:
    return os.environ.get(SWITCH_ENV, "on").strip().lower() not in ("off", "0", "false", "no")


def top_level_imports(file: Path) -> list[Statement]:
    """The absolute imports at the top level of ``file`` (those inside ``try`` and ``if`` blocks too, but not under
    ``if __name__ == "__main__":``), in order."""
    try:
        tree = ast.parse(file.read_bytes(), str(file))
    except (OSError, SyntaxError, ValueError):
        return []
    found: list[Statement] = []
    pending = list(tree.body)
    while pending:
        node = pending.pop(0)
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [alias.name for alias in node.names if alias.name != "*"]))
        elif isinstance(node, (ast.Try, ast.If)) and not _main_guard(node):
            blocks = [node.body, node.orelse] + ([h.body for h in node.handlers] if isinstance(node, ast.Try) else [])
            pending[:0] = [child for block in blocks for child in block]
    return found


def _main_guard(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":``: what runs only as a script, never when dstune imports the file."""
    test = getattr(node, "test", None)
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and len(test.comparators) == 1 and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value == "__main__")


def _installed_elsewhere(module: str, folders: tuple[Path, ...]) -> bool:
    """Whether ``module``'s top-level package is found, outside ``folders``, without importing anything."""
    top = module.partition(".")[0]
    if top in NEVER:
        return False
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    if spec.submodule_search_locations:  # a package: the folder that holds its own folder
        homes = [Path(place).resolve().parent for place in spec.submodule_search_locations]
    elif spec.origin and spec.origin not in ("built-in", "frozen"):
        homes = [Path(spec.origin).resolve().parent]
    else:
        return True  # built into the interpreter
    return not any(home in folders for home in homes)


def preloadable(file: Path) -> list[Statement]:
    """The imports of ``file`` that the fork server may import for its trials."""
    folders = tuple({file.resolve().parent, Path.cwd().resolve()})
    return [(module, names) for module, names in top_level_imports(file) if _installed_elsewhere(module, folders)]


def preload_env(file: Path | None) -> dict[str, str]:
    """The environment that tells a fork server about to start what to import (empty: nothing)."""
    if file is None or not preload_wanted():
        return {}
    statements = preloadable(file)
    return {PRELOAD_ENV: json.dumps(statements)} if statements else {}
