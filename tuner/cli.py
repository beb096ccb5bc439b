"""The ``dstune`` command line.

User errors (:class:`UsageError`) print as one paragraph without a traceback
and exit 2; an interrupted run exits 130 after recording what it had.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import UsageError
from .measure import MeasureSettings

app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
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


@app.command()
def run(
    workload_file: Path = typer.Argument(..., help="Python file defining a @dstune.workload."),
    workload: Optional[str] = typer.Option(None, "--workload", "-w", help="Which workload, if the file has several."),
    db: Optional[str] = typer.Option(None, "--db", help="SQLAlchemy URL or SQLite path (default $DSTUNE_DB or ./dstune.db)."),
    trials: int = typer.Option(30, "--trials", "-n", min=1, help="Most trials to run."),
    budget: str = typer.Option("15m", "--budget", help="Wall-time budget, e.g. 90s, 15m, 1h."),
    trial_timeout: str = typer.Option("10m", "--trial-timeout", help="Kill a trial after this long."),
    memory_budget: Optional[str] = typer.Option(None, "--memory-budget", help="Peak memory allowed: a size (20GiB) or a fraction of device memory (0.8). Default 0.9."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampler and of the workload's RNG."),
    disable_plugin: List[str] = typer.Option([], "--disable-plugin", help="Leave a plugin out (repeatable)."),
    strict_plugins: bool = typer.Option(False, "--strict-plugins", help="Fail when a plugin fails to load."),
    study: Optional[str] = typer.Option(None, "--study", help="Optuna study name (default WORKLOAD-itN)."),
    windows: int = typer.Option(5, "--windows", min=2, help="Timed windows per trial."),
    window_time: float = typer.Option(0.5, "--window-time", min=0.01, help="Seconds per timed window (at least)."),
    max_warmup: float = typer.Option(60.0, "--max-warmup", min=0.1, help="Most seconds of warm-up per trial."),
) -> None:
    """Tune WORKLOAD_FILE: run trials, record them, and show the Pareto front and the chosen config."""
    from .display import ConsoleReporter, render_summary
    from .summary import conclude
    from .tuning_run import RunOptions, run_iteration
    from .units import parse_duration

    options = RunOptions(
        workload_file=workload_file, workload_name=workload, db=db, trials=trials,
        budget_s=parse_duration(budget, "--budget"), trial_timeout_s=parse_duration(trial_timeout, "--trial-timeout"),
        memory_budget=memory_budget, seed=seed, disabled_plugins=tuple(disable_plugin),
        strict_plugins=strict_plugins, study_name=study,
        measure=MeasureSettings(windows=windows, window_s=window_time, max_warmup_s=max_warmup),
    )
    if not workload_file.is_file():
        raise UsageError(f"workload file {workload_file} does not exist. Give the path of a Python file that defines a @dstune.workload function.")
    reporter = ConsoleReporter()
    try:
        result = run_iteration(options, reporter)
    except KeyboardInterrupt:
        reporter.close()
        err_console.print("interrupted: the trials that finished are recorded; the iteration is marked interrupted.")
        raise typer.Exit(130) from None
    finally:
        reporter.close()
    from dstune.store import Store

    render_summary(reporter.console, conclude(Store(db), result.iteration_id), result.stop_reason)


@app.command()
def plugins() -> None:
    """List the strategy plugins, their versions and knobs, as they apply on this machine."""
    import torch

    from .context import TuneContext
    from .plugin_manager import plugin_manager, plugin_version

    plugin_set = plugin_manager()
    cuda = torch.cuda.is_available()
    ctx = TuneContext(workload="-", device="cuda" if cuda else "cpu",
                      device_name=torch.cuda.get_device_name(0) if cuda else "cpu",
                      capability=torch.cuda.get_device_capability(0) if cuda else None,
                      bf16_supported=bool(cuda and torch.cuda.is_bf16_supported()) or not cuda,
                      cpu_count=os.cpu_count() or 1)
    table = Table(title=f"dstune plugins ({ctx.device_name})", title_justify="left")
    for col in ("plugin", "version", "knob", "choices", "default", "checklist", "applies here"):
        table.add_column(col)
    for impl in plugin_set.pm.hook.dstune_knobs.get_hookimpls():
        name = impl.plugin_name
        for knob in impl.function(ctx=ctx) or []:
            table.add_row(name, plugin_version(plugin_set.pm, name), knob.name,
                          ", ".join(map(str, knob.choices)), str(knob.default), str(knob.checklist),
                          "yes" if knob.applicable(ctx) else "no")
    Console().print(table)
    for problem in plugin_set.problems:
        err_console.print(f"[yellow]warning:[/] {problem}")


def main() -> None:
    """Entry point: run the app, turning user errors into exit code 2."""
    try:
        app()
    except UsageError as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(2)
