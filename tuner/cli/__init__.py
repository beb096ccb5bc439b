"""The ``dstune`` command line: one typer application, its commands in a module per group.

User errors (:class:`dstune.UsageError`) print as one paragraph without a
traceback and exit 2; see :mod:`dstune.errors` for every exit code.
"""

from __future__ import annotations

import sys

from dstune.cli.app import app, err_console
from dstune.errors import EXIT_USAGE, UsageError

from . import run_commands, schedule_commands, view_commands  # noqa: F401 - each registers its commands

__all__ = ["app", "main"]


def main() -> None:
    """Entry point: run the app, turning user errors into exit code 2."""
    try:
        app()
    except UsageError as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)  # paths stay whole
        sys.exit(EXIT_USAGE)
