"""The README's hook reference, generated from the hookspec docstrings so the two cannot drift apart.

``python -m dstune.hook_reference README.md`` rewrites the part of the file
between the two marker comments; a test fails when the README is stale.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from . import hookspecs

START = "<!-- hook-reference:start (generated from tuner/hookspecs.py by `python -m dstune.hook_reference README.md`) -->"
END = "<!-- hook-reference:end -->"


def render() -> str:
    """One entry per hook, in declaration order: signature, call rules, docstring."""
    parts: list[str] = []
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if not name.startswith("dstune_"):
            continue
        opts = getattr(fn, "dstune_spec", {}) or {}
        params = ", ".join(inspect.signature(fn).parameters)
        rule = " (first non-None answer wins)" if opts.get("firstresult") else ""
        doc = inspect.cleandoc(fn.__doc__ or "")
        parts.append((inspect.getsourcelines(fn)[1], f"#### `{name}({params})`{rule}\n\n{doc}\n"))
    return "\n".join(text for _, text in sorted(parts))


def replace_section(text: str) -> str:
    """``text`` with the generated reference between the markers."""
    head, sep, rest = text.partition(START)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise ValueError(f"markers not found; the file needs a line {START!r} and a line {END!r}")
    return f"{head}{START}\n\n{render()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else Path("README.md")
    path.write_text(replace_section(path.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
