"""Import a workload file and pick the workload to tune.

Runs in the probe and trial processes only: the parent ``dstune run``
process never imports user code, so a workload that touches CUDA at import
time cannot hold the GPU in the process that orchestrates the trials.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType

from dstune.errors import UsageError
from dstune.workload_api import WORKLOAD_ATTR, WorkloadDef


def import_workload_file(path: str | Path) -> ModuleType:
    """Import ``path`` as a fresh module; errors name the file and line."""
    file = Path(path).resolve()
    if not file.is_file():
        raise UsageError(f"workload file {path} does not exist. Give the path of a Python file that defines a @dstune.workload function.")
    module_name = "dstune_workload_" + hashlib.sha1(str(file).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise UsageError(f"workload file {file} cannot be imported as Python. Give a .py file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(file.parent))
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise UsageError(
            f"workload file {exc.filename or file}:{exc.lineno} has a syntax error: {exc.msg}. Fix that line and run again."
        ) from None
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's to fix
        line = _line_in_file(exc, file)
        raise UsageError(
            f"workload file {file}:{line} failed to import: {type(exc).__name__}: {exc}. "
            "Fix the error (is every package it imports installed?) and run again."
        ) from None
    finally:
        sys.path.remove(str(file.parent))
    return module


def _line_in_file(exc: BaseException, file: Path) -> int | str:
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if Path(frame.filename).resolve() == file:
            return frame.lineno or "?"
    return "?"


def find_workloads(module: ModuleType) -> dict[str, WorkloadDef]:
    found: dict[str, WorkloadDef] = {}
    for value in vars(module).values():
        definition = getattr(value, WORKLOAD_ATTR, None)
        if isinstance(definition, WorkloadDef):
            found[definition.name] = definition
    return found


def select_workload(path: str | Path, name: str | None) -> WorkloadDef:
    """The workload ``name`` of file ``path``, or its only workload."""
    found = find_workloads(import_workload_file(path))
    if not found:
        raise UsageError(
            f"workload file {path} defines no workload. Decorate a function that returns "
            "dstune.Workload(...) with @dstune.workload."
        )
    if name is not None:
        if name not in found:
            raise UsageError(
                f"workload file {path} has no workload named {name!r}; it defines {', '.join(sorted(found))}. "
                "Pass one of those to --workload."
            )
        return found[name]
    if len(found) > 1:
        raise UsageError(
            f"workload file {path} defines several workloads ({', '.join(sorted(found))}). "
            "Choose one with --workload NAME."
        )
    return next(iter(found.values()))


def check_syntax(file: Path) -> None:
    """Refuse a workload file that does not parse, at once and without running any of it.

    Compiling is not importing: no module-level code runs, so the
    orchestrating process may do it, and a typo costs no torch start-up.
    """
    try:
        compile(file.read_bytes(), str(file), "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise UsageError(
            f"workload file {exc.filename or file}:{exc.lineno} has a syntax error: {exc.msg}. Fix that line and run again."
        ) from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"workload file {file} cannot be read ({exc}). Give a readable Python file.") from None
