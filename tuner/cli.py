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
    strict_plugins: bool = typer.Option(False, "--strict-plugins", help="Fail when a plugin fails to load or raises while declaring its knobs or model facts (default: leave it out with a warning)."),
    only: List[str] = typer.Option([], "--only", help="Tune only these knobs (repeatable or comma-separated); the others keep the incumbent's values."),
    numerics_guard: bool = typer.Option(True, "--numerics-guard/--no-numerics-guard", help="Compare each trial's first loss or output with an fp32 eager reference."),
    tolerance: List[str] = typer.Option([], "--tolerance", help="Numerics tolerance: KNOB:VALUE=REL (e.g. precision:bf16=0.1) or base=REL (repeatable)."),
    study: Optional[str] = typer.Option(None, "--study", help="Optuna study name (default WORKLOAD-itN)."),
    windows: int = typer.Option(5, "--windows", min=2, help="Timed windows per trial."),
    window_time: float = typer.Option(0.5, "--window-time", min=0.01, help="Seconds per timed window (at least)."),
    max_warmup: float = typer.Option(60.0, "--max-warmup", min=0.1, help="Most seconds of warm-up per trial."),
    select: str = typer.Option("max-throughput", "--select", help="Challenger policy: max-throughput, knee, or weighted:throughput=1,memory=0.5,energy=0."),
    check_repeats: int = typer.Option(5, "--check-repeats", min=2, help="Interleaved rounds of incumbent and challenger in the check."),
    min_gain: float = typer.Option(0.02, "--min-gain", min=0.0, max=1.0, help="Promote only when the 95% CI's lower bound exceeds 1 + this."),
    fail_on_regression: bool = typer.Option(False, "--fail-on-regression", help="Exit 3 when the incumbent regressed (for CI and cron)."),
) -> None:
    """One Plan-Do-Check-Act iteration of WORKLOAD_FILE: trials, check against the incumbent, promote or keep."""
    if not workload_file.is_file():
        raise UsageError(f"workload file {workload_file} does not exist. Give the path of a Python file that defines a @dstune.workload function.")
    from .trial_runner import start_early

    start_early()  # the fork server imports torch while this process imports the rest
    from .display import ConsoleReporter, render_summary
    from .measure import MeasureSettings
    from .numerics import parse_tolerances
    from .selection import parse_policy
    from .summary import summarize
    from .tuning_run import RunOptions, run_iteration
    from .units import parse_duration

    options = RunOptions(
        workload_file=workload_file, workload_name=workload, db=db, trials=trials,
        budget_s=parse_duration(budget, "--budget"), trial_timeout_s=parse_duration(trial_timeout, "--trial-timeout"),
        memory_budget=memory_budget, seed=seed, disabled_plugins=tuple(disable_plugin),
        strict_plugins=strict_plugins, study_name=study,
        measure=MeasureSettings(windows=windows, window_s=window_time, max_warmup_s=max_warmup),
        select=parse_policy(select), check_repeats=check_repeats, min_gain=min_gain,
        numerics_guard=numerics_guard, tolerances=parse_tolerances(tolerance),
        only=tuple(name.strip() for value in only for name in value.split(",") if name.strip()),
    )
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

    render_summary(reporter.console, summarize(Store(db), result.iteration_id), result.stop_reason)
    if fail_on_regression and result.decision is not None and result.decision.regression:
        err_console.print("regression detected and --fail-on-regression given: exit 3")
        raise typer.Exit(3)


DB_OPTION = typer.Option(None, "--db", help="SQLAlchemy URL or SQLite path (default $DSTUNE_DB or ./dstune.db).")


@app.command()
def show(
    workload: str = typer.Argument(..., help="Workload name (as in `dstune history`)."),
    db: Optional[str] = DB_OPTION,
) -> None:
    """The incumbent: its configuration, numbers, since when and why; and the latest Pareto front."""
    from .history_view import render_show

    render_show(Console(), _store(db), workload)


@app.command()
def history(
    workload: str = typer.Argument(..., help="Workload name."),
    db: Optional[str] = DB_OPTION,
) -> None:
    """One row per iteration: environment changes, trials, challenger, decision, speed-up with its 95% CI."""
    from .history_view import render_history

    render_history(Console(), _store(db), workload)


@app.command()
def export(
    workload: str = typer.Argument(..., help="Workload name."),
    format: str = typer.Option("json", "--format", "-f", help="json (for DSTUNE_CONFIG) or env (KEY=VALUE lines)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout."),
    db: Optional[str] = DB_OPTION,
) -> None:
    """Print the applied configuration as JSON or as shell KEY=VALUE lines."""
    from .history_view import export_text

    text = export_text(_store(db), workload, format)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        err_console.print(f"wrote {output}")


@app.command()
def rollback(
    workload: str = typer.Argument(..., help="Workload name."),
    to: int = typer.Option(..., "--to", help="Iteration whose applied configuration to re-apply."),
    db: Optional[str] = DB_OPTION,
) -> None:
    """Re-apply the configuration that was in production after iteration N."""
    from .history_view import rollback_to

    Console().print(rollback_to(_store(db), workload, to), highlight=False)


def _store(db: str | None):  # type: ignore[no-untyped-def]
    from dstune.store import Store

    return Store(db)


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
