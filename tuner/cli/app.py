"""The ``dstune`` application object and what its command modules share.

User errors (:class:`UsageError`) print as one paragraph without a traceback
and exit 2; an interrupted run (SIGINT or SIGTERM) exits 130 after recording
what it had; a run deferred because its device stayed locked or busy exits 75.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from dstune.version import __version__

if TYPE_CHECKING:
    from dstune.store import Store

app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Automated tuning for PyTorch workloads.")
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dstune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """dstune finds the fastest safe way to run a PyTorch workload on the GPU it runs on."""


# The idle gate's options, the same for `run --wait-idle` and for `daemon` (which passes them to its runs).
IDLE_WINDOW_OPTION = typer.Option("5m", "--idle-window", help="How long the device must look idle before a trial starts (0: no gate).")
IDLE_UTIL_OPTION = typer.Option(10.0, "--idle-util", min=0.0, max=100.0, help="Utilisation (percent; of all CPUs on a CPU-only host) that still counts as idle.")
MAX_DELAY_OPTION = typer.Option("2h", "--max-delay", help="Give up waiting for an idle device after this long: the run is deferred (exit 75; a daemon retries later).")


DB_OPTION = typer.Option(None, "--db", help="SQLAlchemy URL or SQLite path (default $DSTUNE_DB or ./dstune.db).")


JSON_OPTION = typer.Option(False, "--json", help="Print JSON (for scripts and dashboards).")


def print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def open_store(db: str | None, create: bool = False) -> "Store":
    """The store a command without a workload file uses: :func:`dstune.config_file.resolve_db` decides which.

    Only a command that records something new (``schedule add``) may create it; a reading one that finds
    none says where it looked.
    """
    from dstune.config_file import resolve_db
    from dstune.store import Store
    from dstune.store.lookup import open_existing_store

    return Store(resolve_db(db)) if create else open_existing_store(db)
